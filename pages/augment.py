"""Augment page (DASH): Cluster View → pick a style → pick sources (or bring them from the Slices page) → preview a batch →
accept or discard; the history of batches.

Counterfactuals keep each source image's object (its class evidence) and take
the context and colour of a training image of another class from the style:
circles onto land, squares onto water. Accepted batches are then used by a
retraining on the Mitigate page (method "augment"), and the history says which
versions were trained with which batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app.annotations import current_propagation, load_annotations
from app.augment import clusters, training_view
from app.concepts import campaign_store
from app.ui import load_slices, selected_workspace, show_error, streamlit_progress, table_height
from core.crowd import latest_campaign
from core.errors import SliceScopeError
from core.mitigation import (
    CLUSTER_RANGE,
    AugmentParams,
    BatchRecord,
    ImageGroup,
    TrainingView,
    accept_batch,
    batch_history,
    batch_images,
    cluster_columns,
    discard_batch,
    interrupted_batches,
    list_batches,
    make_batch,
    object_boxes,
)
from core.training import default_training_data
from core.versions import version_root
from core.workspace import Workspace

COLUMN_WIDTH = 72
PREVIEW_PAIRS = 12
STYLE_KEY, PREVIEW_KEY = "augment_style", "augment_preview"
FOREGROUND_LABELS = {
    "segmentation": "Segmentation (GrabCut; the frame is background)",
    "attribution": "Attribution maps of slices annotated core",
    "crowd": "Boxes drawn by crowd workers (latest campaign)",
}


def cluster_view(view, labels: np.ndarray, distances: np.ndarray, per_column: int) -> None:
    """Each cluster as a column of its images nearest the centroid, with its classes and a button to take it as the style."""
    columns = cluster_columns(labels, distances, per_column)
    for start in range(0, len(columns), 10):
        shown = list(columns.items())[start:start + 10]
        for column, (cluster, rows) in zip(st.columns(10), shown):
            members = labels == cluster
            column.markdown(f"**{cluster}** · {int(members.sum()):,}")
            column.image([view.pixels[r] for r in rows], width=COLUMN_WIDTH)
            counts = pd.Series(view.labels[members]).map(dict(enumerate(view.classes))).value_counts()
            column.caption(" · ".join(f"{name} {count / members.sum():.0%}" for name, count in counts.head(3).items()))
            chosen = st.session_state.get(STYLE_KEY) == f"cluster:{cluster}"
            column.button("Style ✓" if chosen else "Pick", key=f"style-{cluster}", type="primary" if chosen else "secondary",
                          help=f"Use cluster {cluster} as the style", on_click=st.session_state.__setitem__,
                          args=(STYLE_KEY, f"cluster:{cluster}"), width="stretch")


def choose_group(title: str, key: str, annotated: list[int], n_slices: int, n_clusters: int, default_kind: str) -> ImageGroup | None:
    kind = st.radio(title, ["slice", "cluster", "rest"], index=["slice", "cluster", "rest"].index(default_kind), horizontal=True, key=f"{key}_kind",
                    format_func={"slice": "Slices", "cluster": "A style cluster", "rest": "The rest of the training set"}.get)
    if kind == "rest":
        return ImageGroup("rest")
    if kind == "cluster":
        return ImageGroup("cluster", (int(st.selectbox("Cluster", range(n_clusters), key=f"{key}_cluster")),))
    # The Slices page may have named them already ("Augment these slices"); a default would then clash with that value.
    default = None if f"{key}_slices" in st.session_state else [s for s in annotated if s < n_slices]
    chosen = st.multiselect("Slices (their nearest training images)", range(n_slices), default=default, key=f"{key}_slices")
    return ImageGroup("slice", tuple(chosen)) if chosen else None


def preview(root: Workspace, record: BatchRecord, view: TrainingView) -> None:
    """DASH's Augmented Image View: sources beside results, then Accept or Discard."""
    batch_id = record.batch_id
    try:
        arrays = batch_images(root, batch_id)
    except SliceScopeError as error:
        show_error(error)
        return
    st.subheader(f"Preview · {batch_id}")
    st.caption(f"{record.images:,} counterfactuals of {ImageGroup.parse(record.sources).describe()} in the style of "
               f"{ImageGroup.parse(record.style).describe()} · " + ", ".join(f"{k} {v:,}" for k, v in record.per_class.items())
               + (f" · {record.left_out:,} images without a usable object left out" if record.left_out else ""))
    shown = np.linspace(0, len(arrays["pixels"]) - 1, min(PREVIEW_PAIRS, len(arrays["pixels"]))).astype(int)
    position = {image_id: row for row, image_id in enumerate(view.image_ids)}
    for row_start in range(0, len(shown), 6):
        for column, index in zip(st.columns(6), shown[row_start:row_start + 6]):
            source = view.pixels[position[str(arrays["source_ids"][index])]] if str(arrays["source_ids"][index]) in position else None
            if source is not None:
                column.image(source, caption="source", width=COLUMN_WIDTH)
            column.image(arrays["pixels"][index], caption=str(arrays["labels"][index]), width=COLUMN_WIDTH)
    if record.state == "preview":
        accept, discard, _ = st.columns([1, 1, 4])
        if accept.button("Accept", key="augment_accept", type="primary", icon=":material/check:"):
            accept_batch(root, batch_id)
            st.toast(f"{batch_id} accepted: use it on the Mitigate page (method augment).", icon=":material/check:")
            st.rerun()
        if discard.button("Discard", key="augment_discard", icon=":material/delete:"):
            discard_batch(root, batch_id)
            st.session_state.pop(PREVIEW_KEY, None)
            st.rerun()
    else:
        st.caption(f"This batch is {record.state}.")


def accepted_summary(records: list[BatchRecord]) -> None:
    accepted = [r for r in records if r.state == "accepted"]
    if not accepted:
        st.caption("No accepted batch yet.")
        return
    def total(field: str) -> pd.Series:
        return pd.concat([pd.Series(getattr(r, field), dtype=int) for r in accepted]).groupby(level=0).sum()
    st.markdown(f"**Accepted:** {sum(r.images for r in accepted):,} images in {len(accepted)} batch{'es' if len(accepted) > 1 else ''}")
    per = st.columns(3)
    for column, (field, title) in zip(per, (("per_class", "class"), ("per_style_cluster", "style cluster"), ("per_source_slice", "source slice"))):
        counts = total(field)
        column.dataframe(pd.DataFrame({title: counts.index, "images": counts.to_numpy()}), hide_index=True, height=table_height(min(len(counts), 8)))


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    selection = st.session_state["selection"]
    path = str(selection.workspace)
    root = version_root(workspace)
    st.title(f"Augment · {workspace.name}")
    st.caption("Counterfactual training images: each source image's object, cut out, in the context and colour of a training image "
               "of another class from the style you pick. Accepted batches retrain the model on the Mitigate page.")
    for name in interrupted_batches(root):
        st.warning(f"{name} was interrupted while being made and does not count: make it again.", icon=":material/warning:")
    annotations = load_annotations(selection, current_propagation())
    if annotations is None:
        return
    state = annotations.state
    try:
        slice_ids, _ = load_slices(path, selection.slice_on, selection.k, selection.method)
        training = default_training_data(workspace)
        view = training_view(path, selection.slicing_key, slice_ids, tuple(sorted(state.relabels.items())), training)
    except SliceScopeError as error:
        show_error(error)
        return

    st.subheader("Cluster View")
    settings = st.columns([2, 2, 4])
    k = settings[0].slider("Clusters (K)", *CLUSTER_RANGE, 8, key="augment_k", help="K-Means of the training images' features (F), as in DASH.")
    per_column = settings[1].slider("Images per column", 3, 12, 6, key="augment_per_column")
    labels, distances = clusters(path, selection.slicing_key, training.fingerprint or str(training.data), int(k), view.features)
    cluster_view(view, labels, distances, int(per_column))

    st.subheader("Make a batch")
    annotated = sorted(s for s, kind in state.kinds.items() if kind == "spurious")
    n_slices = int(slice_ids.max()) + 1
    left, right = st.columns(2)
    with left:
        sources = choose_group("Sources", "augment_sources", annotated, n_slices, int(k), "slice")
    with right:
        style_text = st.session_state.get(STYLE_KEY)
        if style_text and style_text.startswith("cluster:") and int(style_text.split(":")[1]) >= int(k):
            style_text = None  # a cluster of an earlier K
        st.markdown("**Style**: " + (ImageGroup.parse(style_text).describe() if style_text else "pick a column above, or:"))
        if not style_text:
            style = choose_group("Style", "augment_style_group", [], n_slices, int(k), "rest")
        else:
            style = ImageGroup.parse(style_text)
            st.button("Choose another style", key="augment_clear_style", on_click=st.session_state.pop, args=(STYLE_KEY, None))
    options = st.columns(4)
    foreground = options[0].selectbox("Objects cut out by", list(FOREGROUND_LABELS), format_func=FOREGROUND_LABELS.get, key="augment_foreground")
    change_background = options[1].checkbox("Change the background", True, key="augment_background")
    change_colour = options[2].checkbox("Change the object's colour", True, key="augment_colour")
    max_images = options[3].number_input("At most images", 10, 20000, 1000, step=100, key="augment_max_images")
    if st.button("Make batch and preview", key="augment_make", type="primary", icon=":material/auto_awesome:", disabled=sources is None or style is None):
        try:
            params = AugmentParams(background=change_background, colour=change_colour)
            boxes = crowd_boxes(path, workspace) if foreground == "crowd" else None
            with st.status("Making counterfactuals…", expanded=True) as box:
                record = make_batch(root, view, sources, style, params, foreground, labels, [s for s, kind in state.kinds.items() if kind == "core"],
                                    boxes, int(max_images), streamlit_progress(st))
                box.update(label=f"{record.batch_id}: {record.images:,} counterfactuals", state="complete", expanded=False)
            st.session_state[PREVIEW_KEY] = record.batch_id
        except SliceScopeError as error:
            show_error(error)
    records = {record.batch_id: record for record in list_batches(root)}
    if st.session_state.get(PREVIEW_KEY) in records:
        preview(root, records[st.session_state[PREVIEW_KEY]], view)

    st.subheader("Accepted images")
    accepted_summary(list(records.values()))
    st.subheader("Augmentation history")
    history = batch_history(root)
    if history.empty:
        st.caption("No batch yet.")
    else:
        st.dataframe(history, hide_index=True, height=table_height(len(history)), key="augment_history")
        reopen = st.selectbox("Open a batch", history["batch"], index=None, key="augment_reopen", placeholder="a batch of the history")
        if reopen and reopen != st.session_state.get(PREVIEW_KEY):
            st.session_state[PREVIEW_KEY] = reopen
            st.rerun()


def crowd_boxes(path: str, workspace: Workspace) -> dict:
    store = campaign_store(path)
    campaign = latest_campaign(workspace, store)
    if campaign is None:
        raise SliceScopeError("this workspace has no crowd campaign to take boxes from", "run one on the Concepts page, or cut objects out by segmentation")
    return object_boxes(store.boxes_frame(campaign.id), workspace.classes)


main()
