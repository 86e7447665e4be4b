"""Influence page (InfEmbed): slices of images the training data pull on alike, and the training images behind them.

Influence embeddings need the data the model was trained on, and minutes of computation once; this page attaches
the one and runs the other with progress. Then it slices (InfEmbed's K-Means, or InfEmbed-Rule's recursive splits
with its tree), shows each slice's most typical images beside its opponents (the training images whose influence on
the slice's loss is most negative), and compares the three representations' slicings on one footing.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.influence import comparison, infembed_table, opponents_grid, rule_table, side_by_side, tree_figure, typical_rows
from app.ui import REPRESENTATION_LABELS, load_images, load_workspace, selected_workspace, show_error, streamlit_progress, table_height
from core.errors import SliceScopeError
from core.evidence import evidence_order
from core.influence import RuleParams, estimate_seconds, influence_embeddings, is_computed
from core.progress import duration_text
from core.slicing import default_k
from core.training import attach_command, attach_training_data, training_data
from core.views import caption
from core.workspace import Workspace

METHODS = {"infembed": "InfEmbed: K-Means with K slices", "rule": "InfEmbed-Rule: the largest slices with accuracy ≤ A and ≥ S images"}
TABLE_COLUMNS = {
    "slice": st.column_config.NumberColumn("Slice", width="small"),
    "path": st.column_config.TextColumn("Path in the split tree", help="The child taken at each split, from the root"),
    "rule_holds": st.column_config.CheckboxColumn("Rule holds", help="InfEmbed-Rule's own test: accuracy ≤ A on at least S images"),
    "flagged": st.column_config.CheckboxColumn("Problem", help="As on the Slices page: large enough and clearly less accurate than the rest "
                                                              "(binomial test, Benjamini–Hochberg q ≤ 0.05, at least 20 points below)"),
    "gap": st.column_config.NumberColumn("Below the rest", format="percent"),
    "description": st.column_config.TextColumn("Mostly", width="large"),
    "size": st.column_config.NumberColumn("Size"),
    "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
    "errors": st.column_config.NumberColumn("Errors"),
    "mean_coherence": st.column_config.NumberColumn("Coherence", format="%.3g",
                                                    help="Mean squared distance to the slice's mean influence embedding (lower: more coherent)"),
    "confusion": st.column_config.TextColumn("Label → prediction", width="large"),
}
HIDDEN = ("mean_confidence", "dominant_label_share", "dominant_prediction_share", "dominant_label", "dominant_prediction",
          "rest_accuracy", "accuracy_low", "accuracy_high", "p_value", "q_value")
OPPONENTS = 10


def attach_form(workspace: Workspace) -> None:
    st.info("Influence embeddings need the images the model was trained on. Give their ImageFolder or CSV manifest (and its split), "
            f"or run: `{attach_command(workspace)}`", icon=":material/dataset:")
    with st.form("attach_training"):
        data = st.text_input("Training data (folder or CSV manifest)")
        split = st.text_input("Split (CSV manifests with a split column)", help="e.g. train")
        if st.form_submit_button("Attach", type="primary") and data.strip():
            attach_training_data(workspace, data.strip(), split.strip() or None)
            load_workspace.clear()  # the cached workspace still holds the manifest read before the attachment
            st.rerun()


def compute_step(workspace: Workspace) -> None:
    training = training_data(workspace)
    seconds = estimate_seconds(workspace)
    st.info(f"The embeddings of {len(workspace.images):,} images and {training.num_images:,} training images are not computed yet: "
            f"about {duration_text(seconds)} on this machine, once (then cached in the workspace).", icon=":material/timer:")
    if st.button("Compute influence embeddings", type="primary"):
        influence_embeddings(workspace, progress=streamlit_progress(st.container()))
        st.rerun()


def slicing_choice(workspace: Workspace) -> tuple[np.ndarray, object, RuleParams | None]:
    method = st.radio("Slices", list(METHODS), format_func=METHODS.get, horizontal=True, key="influence_method")
    if method == "infembed":
        k = st.number_input("K", 2, max(2, min(200, len(workspace.images))), default_k(len(workspace.images)), key="influence_k")
        slice_ids, table = infembed_table(str(workspace.path), int(k))
        return slice_ids, table, None
    left, middle, right = st.columns(3)
    defaults = RuleParams()
    params = RuleParams(
        max_accuracy=left.slider("A: accuracy threshold", 0.0, 1.0, defaults.max_accuracy, 0.05, key="rule_accuracy"),
        min_size=int(middle.number_input("S: minimum size", 1, len(workspace.images), min(defaults.min_size, len(workspace.images)), key="rule_size")),
        branching=int(right.number_input("B: branching factor", 2, 10, defaults.branching, key="rule_branching")),
    )
    slice_ids, table, tree = rule_table(str(workspace.path), params.max_accuracy, params.min_size, params.branching)
    st.plotly_chart(tree_figure(tree, params.max_accuracy), key="rule_tree")
    return slice_ids, table, params


def slice_view(workspace: Workspace, slice_ids: np.ndarray, slice_id: int) -> None:
    path = str(workspace.path)
    members = typical_rows(path, slice_ids, slice_id, OPPONENTS)
    images = workspace.images.iloc[members]
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Slice {slice_id}: its most typical images** (nearest its mean influence embedding)")
        st.image(load_images(path, tuple(int(row) for row in members), 96, False), width=96,
                 caption=[caption(row.label, row.prediction, row.confidence) for row in images.itertuples()])
    with right:
        st.markdown("**Its opponents**: training images whose influence on the slice's loss is most negative")
        opponents_grid(path, slice_ids, slice_id, OPPONENTS)


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    st.title(f"Influence · {workspace.name}")
    if training_data(workspace) is None:
        attach_form(workspace)
        return
    if not is_computed(workspace):
        compute_step(workspace)
        return
    slice_ids, table, rule = slicing_choice(workspace)
    # K-Means slices come strongest evidence first, as on the Slices page, while the rule's keep their order in the
    # split tree; the long label → prediction text goes last so the numbers stay in view.
    shown = table if rule else evidence_order(table).reset_index(drop=True)
    shown = shown.drop(columns=[column for column in HIDDEN if column in shown.columns])
    shown = shown[[column for column in shown.columns if column != "confusion"] + ["confusion"]]
    picked = st.dataframe(shown, hide_index=True, column_config=TABLE_COLUMNS, on_select="rerun", selection_mode="single-row",
                          key=f"influence_table_{'rule' if rule else 'k'}", height=table_height(len(shown), 460))
    rows = picked.selection.rows
    if rows:
        slice_view(workspace, slice_ids, int(shown.iloc[rows[0]]["slice"]))
    else:
        st.info("Pick a slice in the table to see its typical images and its opponents.")
    with st.expander("Compare representations: attribution (F_W), features (F) and influence embeddings", icon=":material/compare:"):
        k = int(st.number_input("K for all three", 2, max(2, min(200, len(workspace.images))), default_k(len(workspace.images)), key="compare_k"))
        st.caption("Each slicing judged on one footing: its coherence on the influence embeddings (share of the total spread: "
                   "1 is no better than one slice), its worst slice, how many slices fall below the overall accuracy and "
                   "what share of the errors they hold, and how pure its slices are in label → prediction.")
        if st.toggle("Show the three layouts side by side", key="compare_layouts",
                     help="UMAP of each representation, coloured by the accuracy of each image's slice in that representation "
                          "(the influence layout is computed the first time, in about a minute)"):
            with st.spinner("Laying out the three representations…"):
                st.plotly_chart(side_by_side(str(workspace.path), k), key="side_by_side")
        compared = comparison(str(workspace.path), k).drop(columns=["coherence"])  # the raw sum of squares means nothing to a reader
        compared["representation"] = compared["representation"].map(REPRESENTATION_LABELS).fillna(compared["representation"])
        st.dataframe(compared, hide_index=True, column_config={
            "representation": st.column_config.TextColumn("Representation"),
            "k": st.column_config.NumberColumn("K", width="small"),
            "low_slices": st.column_config.NumberColumn("Slices below the overall accuracy"),
            "coherence_share": st.column_config.NumberColumn("Coherence share", format="%.2f"),
            "worst_accuracy": st.column_config.ProgressColumn("Worst slice accuracy", min_value=0.0, max_value=1.0, format="percent"),
            "errors_in_low_slices": st.column_config.NumberColumn("Errors in low slices", format="percent"),
            "label_homogeneity": st.column_config.NumberColumn("Label homogeneity", format="percent"),
        })


try:
    main()
except SliceScopeError as error:
    show_error(error)
