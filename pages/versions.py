"""Versions page: every model version of a line with its robustness metrics, and what changed from one to the next.

A line is the original model and the versions retrained from it (beside it on
disk). Every version is evaluated the same way, against the first version's
slices and regions, so the numbers compare; the page says which regions were
used. DASH's users wanted a history of what they tried: this is it, with a
switch to go back to any version.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app.board import (
    METRIC_COLUMNS,
    history_figure,
    model_downloads,
    show_metric_changes,
    slice_change_figure,
    switch_version,
    versions_figure,
)
from app.store import store_for
from app.ui import selected_workspace, show_error, streamlit_progress
from core.errors import SliceScopeError
from core.mitigation import (
    REGION_SOURCES,
    Slicing,
    evaluate_version,
    read_metrics,
    relabelled_count,
    slice_changes,
    training_recipe,
    version_board,
)
from core.versions import read_version
from core.views import plural, version_label
from core.workspace import Workspace, is_workspace

REGION_LABELS = {
    "auto": "Automatic: ground-truth object masks when the dataset has them, else attribution masks",
    "ground_truth": "Ground-truth object masks (the dataset's mask_path column)",
    "attribution": "Attribution masks of the slices annotated core and spurious",
}
BOARD_COLUMNS = {
    "current": st.column_config.TextColumn("", width="small", help="The version the app shows"),
    "version": st.column_config.NumberColumn("Version", format="v%d", width="small"),
    "name": "Name",
    "mitigation": "Mitigation",
    "treated_slices": st.column_config.NumberColumn("Treated slices", width="small"),
    "batches": st.column_config.TextColumn("Augmentation batches", help="Accepted batches of the Augment page this version was trained with"),
    **METRIC_COLUMNS,
    "worst_group": "Worst group",
    "relabelled": st.column_config.NumberColumn("Relabelled", width="small", format="%d",
                                                help="Images marked mislabelled when the version was evaluated: clean accuracy counts them with their new label"),
    "regions": st.column_config.TextColumn("Regions", width="medium"),
    "created": "Created",
}
CHANGE_THRESHOLD = 0.05  # a slice's accuracy must move by 5 points to count as improved or regressed


def evaluate_form(board: pd.DataFrame, slicing: Slicing, store_path: str) -> None:
    missing = board[board["clean_acc"].isna() | board["out_of_date"]]
    with st.expander("Evaluate", expanded=not missing.empty, icon=":material/speed:"):
        st.caption("Clean accuracy, core accuracy (noise on the spurious regions), spurious accuracy (noise on the core regions), "
                   "RCS, worst-group and per-slice accuracy. Compare versions evaluated with the same regions.")
        regions = st.selectbox("Core and spurious regions", REGION_SOURCES, format_func=REGION_LABELS.get, key="evaluate_regions")
        everything = st.toggle("Re-evaluate versions that have metrics too", value=missing.empty, key="evaluate_all")
        chosen = board if everything else missing
        if not st.button(f"Evaluate {len(chosen)} version{'s' if len(chosen) != 1 else ''}", key="evaluate", type="primary",
                         icon=":material/play_arrow:", disabled=chosen.empty):
            return
        with st.status("Evaluating…", expanded=True) as box:
            try:
                for row in chosen.itertuples():
                    evaluated = evaluate_version(Workspace(row.path), store_for(store_path), slicing, regions, progress=streamlit_progress(st))
                    st.write(f"v{row.version}: regions from {evaluated.regions}")
            except SliceScopeError as error:
                box.update(label="The evaluation stopped", state="error")
                show_error(error)
                return
            box.update(label="Evaluated", state="complete", expanded=False)
        st.rerun()


def version_details(row: pd.Series, chosen: str, current: str) -> None:
    """The chosen version: a switch to it, how it was made, what changed since its parent, its training history and model files."""
    path = Path(chosen)
    info = read_version(Workspace(path))
    heading, action = st.columns([3, 1], vertical_alignment="center")
    heading.subheader(version_label(row["version"], row["name"]))
    action.button("Switch the app to this version", key="switch_version", on_click=switch_version, args=(str(path),),
                  icon=":material/swap_horiz:", disabled=str(path) == current, width="stretch")
    if info is None:
        st.caption("The original model: nothing to compare it with.")
        return
    job, parent = info["job"], Path(info["parent"])
    params = job["params"]
    before = read_metrics(Workspace(parent)) if is_workspace(parent) else None
    methods = job.get("methods", ["corm"])
    what = [f"trained with {training_recipe(job)}"]
    if "corm" in methods:
        what.append(f"CoRM on slices {', '.join(map(str, job['treated_slices']))} ({job['slicing']}), {info['treated_images']:,} training images noised (σ = {params['sigma']:g})")
    if job.get("batches"):
        what.append(f"{info.get('augmented_images', 0):,} counterfactuals from {', '.join(job['batches'])}")
    if "reweight" in methods:
        what.append(f"sampling balanced over (label, {job.get('group_column') or 'slice'})")
    st.caption(
        f"Retrained from {Workspace(parent).name if is_workspace(parent) else f'{parent} (no longer there)'} at {info['created']} · " + " · ".join(what)
        + f" · {len(job['relabels']):,} relabelled · {params['epochs']} epoch{'s' if params['epochs'] != 1 else ''}, learning rate {params['learning_rate']:g}, "
        f"batch {params['batch_size']}"
    )
    after = read_metrics(Workspace(path))
    if before is None or after is None:
        st.info("Evaluate this version and the one it was retrained from to see what changed.", icon=":material/info:")
    else:
        st.markdown(f"**What changed since {Workspace(parent).name}**")
        show_metric_changes(before, after, "before", "after")
        changes = slice_changes(Workspace(parent), Workspace(path), CHANGE_THRESHOLD)
        counts = changes["verdict"].value_counts()
        columns = st.columns(3)
        for column, verdict in zip(columns, ("improved", "regressed", "unchanged")):
            column.metric(f"Slices {verdict}", int(counts.get(verdict, 0)))
        st.caption(f"Per slice of the first version: accuracy after minus before; a change of {CHANGE_THRESHOLD:.0%} or more counts.")
        st.plotly_chart(slice_change_figure(changes), width="stretch", key="slice_changes")
    if info.get("history"):
        st.markdown("**Training history**")
        st.plotly_chart(history_figure(info["history"]), width="stretch", key="version_history")
    model_downloads(path, key="version-model")


def _out_of_date(workspace: Workspace, board: pd.DataFrame, path: str) -> pd.Series:
    """Per version, whether it was evaluated before the latest images were marked mislabelled (said on the page).

    Clean accuracy counts those images with their new label, so it differs from the Slices page's accuracy.
    """
    relabels = {image: relabel.label for image, relabel in store_for(path).relabels(workspace.dataset_fingerprint).items()}
    current = relabelled_count(workspace.images, workspace.classes, relabels)
    if current:
        st.caption(f"Clean accuracy counts the {plural(current, 'image')} marked mislabelled with their corrected label "
                   "(the Slices page shows the accuracy against the dataset's labels).")
    stale = board["clean_acc"].notna() & (board["relabelled"].fillna(0).astype(int) != current)
    if stale.any():
        versions = ", ".join(f"v{version}" for version in board.loc[stale, "version"])
        st.warning(f"{versions} {'was' if stale.sum() == 1 else 'were'} evaluated before the latest images were marked mislabelled: "
                   "evaluate again so the numbers use the corrected labels.",
                   icon=":material/update:")
    return stale


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    selection = st.session_state["selection"]
    path = str(selection.workspace)
    board = version_board(workspace)
    st.title(f"Versions · {board['name'].iat[0]}")
    st.caption("The original model and every version retrained from it on the Mitigate page, with their robustness metrics.")
    board["current"] = ["▶" if member == path else "" for member in board["path"]]
    group_columns = {name: st.column_config.ProgressColumn(name.removeprefix("group: "), min_value=0.0, max_value=1.0, format="percent")
                     for name in board.columns if name.startswith("group: ")}
    st.dataframe(board[list(BOARD_COLUMNS) + list(group_columns)], hide_index=True, column_config={**BOARD_COLUMNS, **group_columns})
    evaluated = board.dropna(subset=["clean_acc"])
    if evaluated["regions"].nunique() > 1:
        st.warning("The versions were evaluated with different regions, so their numbers do not compare: re-evaluate them all with the same regions.",
                   icon=":material/warning:")
    board["out_of_date"] = _out_of_date(workspace, board, path)
    evaluate_form(board, Slicing(selection.slice_on, selection.slice_params), path)
    if not evaluated.empty:
        st.plotly_chart(versions_figure(board), width="stretch", key="versions_chart")

    rows = board.set_index("path")
    paths = rows.index.tolist()
    chosen = st.selectbox(
        "Version", paths, index=paths.index(path) if path in paths else 0,
        format_func=lambda member: version_label(rows.at[member, "version"], rows.at[member, "name"]),
        key=f"version_pick-{paths[0]}",  # one per line: another line's versions are other options
    )
    try:
        version_details(rows.loc[chosen], chosen, path)
    except SliceScopeError as error:
        show_error(error)


main()
