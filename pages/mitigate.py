"""Mitigate page: choose the slices to treat, preview CoRM, pick the methods (CoRM, augmentation batches, slice-balanced,
last layer), retrain in the background and watch it live.

The retraining is ``python -m core mitigate`` in a process of its own session,
so the page stays responsive and the job outlives the browser tab and the
server. Its folder (``<out>.training``) holds job.json, status.json (which the
classifier board polls), the last finished epoch and the log. Cancel leaves a
``cancel`` file there; Resume runs the same command again, which continues
from the last finished epoch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.annotations import Annotations, annotated_table, current_propagation, load_annotations, spuriousness_column
from app.board import history_figure, model_downloads, show_metric_changes, switch_version
from app.store import configured_database_url, store_for
from app.ui import load_images, load_slices, load_workspace, selected_workspace, show_error
from core.errors import SliceScopeError
from core.mitigation import (
    CANCELLABLE_PHASES,
    DEFAULT_THRESHOLD,
    LIVE_PHASES,
    SOURCES,
    AnnotationState,
    TrainingParams,
    accepted_batch_ids,
    choose_treated_slices,
    corm_preview,
    job_folder,
    job_phase,
    last_error,
    log_path,
    mitigate_arguments,
    next_version_path,
    plan_mitigation,
    read_job,
    read_metrics,
    read_status,
    request_cancel,
    start_job,
    unfinished_jobs,
)
from core.versions import version_root
from core.views import typical_members
from core.workspace import Workspace, is_workspace

ROOT = Path(__file__).resolve().parent.parent
WATCHED_KEY = "mitigation_jobs"  # per version line (its root's path): the out folder of the job this session watches
POLL_SECONDS = 2
PREVIEW_COUNT, PREVIEW_WIDTH = 6, 110
SOURCE_LABELS = {"annotations": "Slices annotated spurious", "propagation": "Propagated spuriousness ≥ threshold"}
# What the board says in each phase; the live ones are polled.
PHASES = {
    "starting": "starting…",
    "preparing": "preparing the training images…",
    "training": "retraining…",
    "scanning": "scanning the evaluation images with the new model…",
    "evaluating": "evaluating the new version and its parent…",
    "done": "done",
    "cancelled": "cancelled — Resume continues from the last finished epoch",
    "failed": "failed",
    "interrupted": "interrupted — its process stopped; Resume continues from the last finished epoch",
}


# ---------------------------------------------------------------------------- background jobs


@st.cache_resource(show_spinner=False)
def _children() -> dict[str, subprocess.Popen]:
    """The retraining processes this server started, by out folder; polling them reaps them when they end."""
    return {}


def phase_of(out: Path, status: dict | None) -> str:
    """Where the job at ``out`` stands, asked of the process this server started for it when there is one."""
    return job_phase(status, _children().get(str(out)))


def _watch(line: Workspace, out: Path) -> None:
    st.session_state.setdefault(WATCHED_KEY, {})[str(line.path)] = str(out)


def _watched(line: Workspace) -> Path | None:
    out = st.session_state.get(WATCHED_KEY, {}).get(str(line.path))
    return None if out is None else Path(out)


def launch(arguments: list[str], out: Path, line: Workspace) -> None:
    """Run ``python -m core ARGUMENTS`` in the background, on the database this app uses, and watch it."""
    _children()[str(out)] = start_job(arguments, out, configured_database_url())
    _watch(line, out)


def resume_or_explain(out: Path) -> None:
    """Resume the job at ``out`` and redraw, or say in one line why it cannot be resumed."""
    try:
        resume(out)
    except SliceScopeError as error:
        show_error(error)
    else:
        st.rerun()


def resume(out: Path) -> None:
    """Run the job at ``out`` again with the settings it recorded; it continues from its last finished epoch."""
    job = read_job(out)
    if job is None:
        raise SliceScopeError(f"{job_folder(out)} does not record the job's settings", "start a new retraining instead")
    launch(mitigate_arguments(job), out, version_root(Workspace(job.parent)))


# ---------------------------------------------------------------------------- classifier board


def _board(out: Path, polled: bool) -> None:
    status = read_status(out)
    phase = phase_of(out, status)
    if polled and phase not in LIVE_PHASES:
        st.rerun()  # the job ended: redraw the whole page, outside the polled fragment (results, start form)
    job = read_job(out)
    history = status["history"] if status else []
    epochs = status["epochs"] if status else (job.params.epochs if job else 0)
    with st.container(border=True):
        st.markdown(f"**{out.name}** · {PHASES[phase]}")
        if phase in LIVE_PHASES:
            done = f"epoch {len(history)} of {epochs} done"
            message = status["message"] if status else ""
            st.progress(min(1.0, len(history) / epochs) if epochs else 0.0, text=done if message in ("", done) else f"{done} · {message}")
        elif phase in ("failed", "cancelled", "interrupted"):
            reason = last_error(out) or (status["message"] if status else None)
            if reason and phase == "failed":
                st.error(reason, icon=":material/error:")
            elif reason:
                st.caption(reason)
            st.caption(f"Log: {log_path(out)}")
        if status and phase in LIVE_PHASES and status.get("message") and not history:
            st.caption(status["message"])
        if history:
            st.plotly_chart(history_figure(history, epochs), width="stretch", key=f"history-{out.name}")
        if phase in CANCELLABLE_PHASES:
            if st.button("Cancel", key=f"cancel-{out.name}", icon=":material/stop_circle:"):
                request_cancel(out)
                st.toast("The retraining stops at the next batch; Resume continues from the last finished epoch.", icon=":material/stop_circle:")
        elif phase in ("failed", "cancelled", "interrupted"):
            if st.button("Resume", key=f"resume-{out.name}", icon=":material/play_arrow:", type="primary"):
                resume_or_explain(out)
        elif phase == "done":
            results(out, job.parent if job else None)


def results(out: Path, parent: Path | None) -> None:
    """The new version's metrics against its parent's, a switch to it and its model files."""
    new = read_metrics(Workspace(out)) if is_workspace(out) else None
    old = read_metrics(Workspace(parent)) if parent is not None and is_workspace(parent) else None
    if new is not None and old is not None:
        show_metric_changes(old, new, f"before: {Workspace(parent).name}", f"after: {Workspace(out).name}")
        st.caption(f"Regions: {new['regions']} · noise σ = {new['sigma']}")
    else:
        st.info("The new version is not evaluated yet: evaluate it on the Versions page.", icon=":material/info:")
    switch, downloads = st.columns([1, 2])
    switch.button("Switch the app to this version", key=f"switch-{out.name}", on_click=switch_version, args=(str(out),),
                  icon=":material/swap_horiz:", type="primary")
    with downloads:
        model_downloads(out, key=f"model-{out.name}")


def board(out: Path) -> None:
    """The classifier board of one job, polled every few seconds while it runs."""
    if phase_of(out, read_status(out)) in LIVE_PHASES:
        st.fragment(_board, run_every=POLL_SECONDS)(out, True)
    else:
        # Drawn with the page, so that its buttons (Resume, switch version) rerun the whole app.
        _board(out, False)


# ---------------------------------------------------------------------------- page sections


SLICE_COLUMNS = {
    "slice": st.column_config.NumberColumn("Slice", width="small"),
    "annotation": st.column_config.TextColumn("Annotation", width="large"),
    "size": st.column_config.NumberColumn("Size", width="small"),
    "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
    "dominant_label": "Label",
    "dominant_prediction": "Prediction",
}


def annotations_view(state: AnnotationState, slicing_label: str, table: pd.DataFrame, columns: dict) -> None:
    st.subheader("Annotations")
    annotated = table[table["slice"].isin(state.kinds)]
    st.dataframe(annotated[["slice", "annotation", "size", "accuracy", "spuriousness"]], hide_index=True, column_config=columns)
    relabelled = len(state.relabels)
    st.caption(f"{len(annotated)} annotated slice{'s' if len(annotated) != 1 else ''} among {slicing_label} · {relabelled:,} image{'s' if relabelled != 1 else ''} marked mislabelled"
               + (" get their corrected label when retraining." if relabelled else "."))
    with st.expander("Spuriousness of every slice"):
        st.caption("Spread from the core and spurious annotations with the propagation settings of the Slices page; "
                   "the retraining treats exactly the slices listed below.")
        shown = table.sort_values("spuriousness", ascending=False)
        st.dataframe(shown[["slice", "annotation", "size", "accuracy", "spuriousness", "dominant_label", "dominant_prediction"]],
                     hide_index=True, column_config=columns)


def choose_slices(annotations: Annotations, table: pd.DataFrame, columns: dict) -> tuple[str, float, list[int]]:
    """The source radio and threshold, and the slices they treat (empty when none qualifies, with the reason shown)."""
    st.subheader("Slices to treat")
    source = st.radio("Treat", SOURCES, format_func=SOURCE_LABELS.get, horizontal=True, key="mitigate_source")
    threshold = DEFAULT_THRESHOLD
    if source == "propagation":
        threshold = st.slider("Spuriousness threshold", 0.0, 1.0, DEFAULT_THRESHOLD, 0.05, key="mitigate_threshold",
                              help="Every slice whose propagated spuriousness reaches this is treated, except slices annotated core.")
    scores = annotations.spuriousness if source == "propagation" else None
    try:
        treated = choose_treated_slices(annotations.state.kinds, scores, source, threshold)
    except SliceScopeError as error:
        show_error(error)
        return source, threshold, []
    chosen = table[table["slice"].isin(treated)]
    st.dataframe(chosen[["slice", "annotation", "size", "accuracy", "spuriousness", "dominant_label", "dominant_prediction"]], hide_index=True,
                 column_config=columns)
    st.caption(f"{len(treated)} slice{'s' if len(treated) != 1 else ''} with {int(chosen['size'].sum()):,} evaluation images. Their nearest training images "
               "(by attribution-weighted features) get CoRM noise, where the preview below shows.")
    return source, threshold, treated


NOISE_REGION_LABELS = {
    "attribution": "the attribution mask m (GradCAM): where the model looks, as in the paper",
    "object_masks": "everything outside the dataset's object masks (its mask_path column)",
}


def preview(workspace_path: str, state: AnnotationState, treated: list[int]) -> tuple[float, str]:
    """x' = x + m ⊙ z on a few images of the treated slices; returns the chosen σ and noise region."""
    st.subheader("CoRM preview")
    workspace = load_workspace(workspace_path)
    sigma = st.slider("Noise σ (pixel values are in [0, 1])", 0.0, 2.0, TrainingParams().sigma, 0.1, key="mitigate_sigma",
                      help="The Gaussian noise z added on the region m of each treated training image; the same σ is used to retrain.")
    noise_region = "attribution"
    if "mask_path" in workspace.images.columns:
        noise_region = st.radio("Where the noise goes", list(NOISE_REGION_LABELS), format_func=NOISE_REGION_LABELS.get, key="mitigate_noise_region",
                                help="This dataset has object masks. Noise outside them tells how much better CoRM could do with perfect masks.")
    features = workspace.array("attribution_features")
    # The most typical images of the first treated slices, as many from each as fill one row.
    shown = treated[:PREVIEW_COUNT]
    per_slice = -(-PREVIEW_COUNT // len(shown))
    rows = [int(row) for slice_id in shown for row in typical_members(features, state.slice_ids, slice_id, per_slice)][:PREVIEW_COUNT]
    labels = workspace.images["label"].to_numpy()
    captions = [f"slice {state.slice_ids[row]} · {labels[row]}" for row in rows]
    size = int(workspace.manifest["transforms"]["image_size"])
    try:
        noisy = corm_preview(workspace, rows, sigma, noise_region)
    except SliceScopeError as error:
        show_error(error)
        return sigma, noise_region
    pictures = [("Original x", load_images(workspace_path, tuple(rows), size, False))]
    if noise_region == "attribution":
        pictures.append(("Attribution mask m (GradCAM): where the noise goes", load_images(workspace_path, tuple(rows), size, True)))
    pictures.append((f"x + m ⊙ z, σ = {sigma:.1f}", noisy))
    for title, images in pictures:
        st.caption(title)
        st.image(images, caption=captions, width=PREVIEW_WIDTH)
    return sigma, noise_region


METHOD_LABELS = {
    "corm": "CoRM: noise on the treated slices' attribution regions",
    "augment": "Augmentation: accepted counterfactual batches (Augment page)",
    "reweight": "Slice-balanced: sample every (label, slice) group equally often",
    "last_layer": "Last layer only: refit on frozen features (seconds)",
}


def start_form(
    workspace: Workspace, state: AnnotationState, source: str, threshold: float, treated: list[int], sigma: float, noise_region: str, busy: bool,
) -> None:
    st.subheader("Retrain")
    defaults = TrainingParams()
    accepted = accepted_batch_ids(version_root(workspace))
    with st.form("mitigate_training"):
        default_methods = ["corm"] if treated else ["augment", "reweight"] if accepted else ["reweight"]
        methods = st.multiselect("Methods (combine them freely; CoRM needs the whole network)", list(METHOD_LABELS), default=default_methods,
                                 format_func=METHOD_LABELS.get, key="mitigate_methods")
        chosen_batches = st.multiselect("Augmentation batches", accepted, default=accepted, key="mitigate_batches",
                                        help="Accepted batches of this model line; make and accept them on the Augment page.")
        from_scratch = st.checkbox("Train from scratch (fresh weights) instead of fine-tuning", False, key="mitigate_from_scratch",
                                   help="Shortcuts the current weights already encode can survive fine-tuning; counterfactuals work best from scratch.")
        columns = st.columns(3)
        epochs = columns[0].number_input("Epochs", 1, 200, defaults.epochs, key="mitigate_epochs")
        learning_rate = columns[1].number_input("Learning rate", 1e-5, 0.5, defaults.learning_rate, format="%.4f", step=1e-4, key="mitigate_lr",
                                                help="Peak of the one-cycle schedule.")
        batch_size = columns[2].number_input("Batch size", 1, 4096, defaults.batch_size, key="mitigate_batch_size")
        where = "the attribution masks" if noise_region == "attribution" else "everything outside the object masks"
        corm = f" CoRM adds noise σ = {sigma:.1f} on {where} (set above)." if treated else ""
        st.caption(f"Retrains {workspace.name} with the chosen methods and the relabels, then scans the evaluation images into a new version "
                   f"and evaluates it.{corm} It runs in the background: you can leave this page.")
        started = st.form_submit_button("Start retraining", type="primary", icon=":material/model_training:", disabled=busy)
    if busy:
        st.caption("A retraining is running: wait for it, or cancel it, to start another.")
    if not started:
        return
    try:
        params = TrainingParams(epochs=int(epochs), learning_rate=float(learning_rate), batch_size=int(batch_size), sigma=float(sigma),
                                noise_region=noise_region, from_scratch=from_scratch)
        job = plan_mitigation(workspace, state, source, next_version_path(workspace), threshold, params, treated=treated,
                              methods=methods, batches=chosen_batches if "augment" in methods else ())
    except SliceScopeError as error:
        show_error(error)
        return
    launch(mitigate_arguments(job), job.out, version_root(workspace))
    st.rerun()


def other_jobs(workspace: Workspace, watched: Path | None) -> None:
    """Retrainings of this line that this session does not watch: interrupted ones (after a restart) or running elsewhere."""
    jobs = [out for out in unfinished_jobs(workspace) if out != watched]
    if not jobs:
        return
    st.subheader("Unfinished retrainings")
    for out in jobs:
        status = read_status(out)
        phase = phase_of(out, status)
        row = st.columns([4, 1], vertical_alignment="center")
        row[0].markdown(f"**{out.name}** · {PHASES[phase]} · {len(status['history'])} of {status['epochs']} epochs done")
        if phase in LIVE_PHASES:
            row[1].button("Watch", key=f"watch-{out.name}", on_click=_watch, args=(version_root(workspace), out), icon=":material/visibility:")
        elif row[1].button("Resume", key=f"resume-{out.name}", icon=":material/play_arrow:"):
            resume_or_explain(out)


def exports(workspace: Workspace, state: AnnotationState, table: pd.DataFrame, source: str, threshold: float, treated: list[int]) -> None:
    st.subheader("Export")
    exported = store_for(str(workspace.path)).export(workspace.fingerprint, state.slicing, workspace.dataset_fingerprint)
    exported.update(
        workspace=str(workspace.path), source=source, threshold=threshold if source == "propagation" else None, treated_slices=treated,
        spuriousness={str(s): (None if np.isnan(v) else float(v)) for s, v in zip(table["slice"], table["spuriousness"])},
    )
    frame = table[["slice", "size", "accuracy", "spuriousness"]].assign(
        annotation=table["slice"].map(state.kinds).fillna(""), note=table["slice"].map(state.notes).fillna(""),
        treated=table["slice"].isin(treated),
    )
    columns = st.columns(2)
    columns[0].download_button("Annotations and treated slices (JSON)", json.dumps(exported, indent=2), file_name=f"{workspace.path.name}-annotations.json",
                               mime="application/json", on_click="ignore", icon=":material/download:", key="export_json", width="stretch")
    columns[1].download_button("Slices with annotations, spuriousness, treated (CSV)", frame.to_csv(index=False), file_name=f"{workspace.path.name}-slices.csv",
                               mime="text/csv", on_click="ignore", icon=":material/download:", key="export_csv", width="stretch")


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    selection = st.session_state["selection"]
    path = str(selection.workspace)
    st.title(f"Mitigate · {workspace.name}")
    annotations = load_annotations(selection, current_propagation())
    if annotations is None:
        return
    state = annotations.state
    try:
        _, table = load_slices(path, selection.slice_on, selection.k, selection.method)
    except SliceScopeError as error:
        show_error(error)
        return
    table = annotated_table(table, annotations)
    columns = {**SLICE_COLUMNS, "spuriousness": spuriousness_column(annotations)}

    watched = _watched(version_root(workspace))
    other_jobs(workspace, watched)
    if watched is not None:
        st.subheader("Classifier board")
        board(watched)

    busy = watched is not None and phase_of(watched, read_status(watched)) in LIVE_PHASES
    if not state.kinds:
        st.info(
            f"None of {selection.slicing_label} is annotated yet. On the Slices page, pick slices whose images show a shortcut "
            "(a background, a colour, a watermark) and annotate them **spurious**, and a few that show the object itself **core**; "
            "then come back here to retrain the model without those shortcuts (CoRM, or counterfactuals from the Augment page). "
            f"From a terminal: `python -m core annotate {workspace.path} --slice N --kind spurious`. "
            "Slice-balanced and last-layer retraining need no annotation.",
            icon=":material/edit_note:",
        )
        start_form(workspace, state, "annotations", DEFAULT_THRESHOLD, [], TrainingParams().sigma, "attribution", busy)
        return
    annotations_view(state, selection.slicing_label, table, columns)
    source, threshold, treated = choose_slices(annotations, table, columns)
    sigma, noise_region = preview(path, state, treated) if treated else (TrainingParams().sigma, "attribution")
    start_form(workspace, state, source, threshold, treated, sigma, noise_region, busy)
    try:
        exports(workspace, state, table, source, threshold, treated)
    except SliceScopeError as error:
        show_error(error)


main()
