"""Compare page: two model versions side by side, by what changed (DASH's Mosaic and Trace views) and by what each attributes (IMACS).

Versions A and B are any two scans of the same images (a model and its
mitigated successor, or two models the user brings). The Mosaic View's cells and
the Trace View's lines select images; the selection filters the trace, the
image list and, on request, the attribution clusters below. The IMACS half
samples a balanced confusion matrix per model for one class, scores 4 × 4 grid
segments by Shapley values, clusters both models' segments together and shows
where the two models' attributions part.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import streamlit as st

from app.board import switch_version
from app.compare import (
    CLUSTER_ORDERS,
    cached_comparison,
    cluster_order,
    concept_cluster_board,
    load_estimate,
    load_mosaic_cells,
    load_outcomes,
    load_pictures,
    outlined_segment,
    run_comparison,
)
from app.compare_figures import (
    cluster_confusion_figure,
    cluster_histogram_figure,
    cluster_plots_figure,
    mosaic_view_figure,
    position_heatmap_figure,
    tile_board_figure,
    trace_figure,
)
from app.ui import (
    dataset_versions,
    load_images,
    load_workspace,
    picked_ids,
    selected_workspace,
    show_error,
    streamlit_progress,
    workspace_summary,
)
from core.compare import (
    BASELINES,
    SEGMENTATIONS,
    STRATEGIES,
    CompareParams,
    EmbeddingParams,
    SegmentParams,
    ShapleyParams,
    VersionOutcomes,
    mosaic_members,
    trace_steps,
)
from core.errors import SliceScopeError
from core.views import plural

SAMPLING_LABELS = {
    "balanced": "Balanced confusion matrix (IMACS: equal TP, FP, TN, FN per model)",
    "disagreement": "Images where A and B disagree, most confident first",
    "false_positives_a": "Model A's false positives",
    "false_positives_b": "Model B's false positives",
}
SEGMENTATION_LABELS = {"grid": "a grid (IMACS)", "slic": "SLIC superpixels"}
BASELINE_LABELS = {"mean_colour": "the dataset's mean colour", "blur": "a blurred copy (IMACS)"}
DETAIL_LIMIT = 48  # images shown in the detail view; the rest are counted and reach the Slices page whole
STATE_DEFAULTS = {"compare_cells": [], "compare_cell_ids": [], "compare_trace_ids": [], "compare_trace_source": "", "compare_tile": None,
                  "compare_request": False, "compare_to_slices": False}


def _name(path: str) -> str:
    return workspace_summary(path)["model_label"]


def _pick_cells(chart_key: str, outcomes: VersionOutcomes, cells) -> None:
    picked = picked_ids(chart_key)
    st.session_state["compare_cells"] = picked
    ids = outcomes.images["image_id"].to_numpy()[mosaic_members(outcomes, cells, picked)]
    st.session_state["compare_cell_ids"] = ids.tolist()
    st.session_state["compare_trace_ids"] = []


def _pick_trace(chart_key: str, outcomes: VersionOutcomes, steps) -> None:
    picked = picked_ids(chart_key)
    chosen = steps.loc[picked]
    images = np.unique(np.concatenate(chosen["images"].tolist())) if len(chosen) else np.array([], dtype=np.int64)
    st.session_state["compare_trace_ids"] = outcomes.images["image_id"].to_numpy()[images].tolist()
    st.session_state["compare_trace_source"] = "; ".join(
        f"{row.source} under {outcomes.names[row.step]} → {row.target} under {outcomes.names[row.step + 1]}" for row in chosen.itertuples())


def _pick_always_wrong(ids: list[str]) -> None:
    st.session_state["compare_trace_ids"] = ids
    st.session_state["compare_trace_source"] = "wrong under every version"


def _clear_selection() -> None:
    for key in ("compare_cells", "compare_cell_ids", "compare_trace_ids"):
        st.session_state[key] = []
    st.session_state["mosaic_generation"] = st.session_state.get("mosaic_generation", 0) + 1


def _send_to_slices(path: str, rows: list[int]) -> None:
    """Make ``path`` the System Menu's version with these images as the Slices page's point selection."""
    switch_version(path)
    state = st.session_state
    state["picked_points"], state["points_for"] = sorted(rows), path
    state["scatter_generation"] = state.get("scatter_generation", 0) + 1
    state["compare_to_slices"] = True


def version_choice(current: str) -> tuple[str, str] | None:
    versions = dataset_versions(current)
    if len(versions) < 2:
        st.info("Comparing needs two scans of the same images by different models: retrain this one on the Mitigate page, or scan the "
                "same images with another model (`python -m core scan … --out OTHER`) and list its folder in SLICESCOPE_WORKSPACES.")
        return None
    left, right = st.columns(2)
    path_a = left.selectbox("Version A", versions, format_func=_name, key="compare_a")
    others = [path for path in versions if path != path_a]
    path_b = right.selectbox("Version B", others, format_func=_name, key="compare_b")
    return path_a, path_b


def changes_view(path_a: str, path_b: str, versions: list[str]) -> VersionOutcomes:
    outcomes = load_outcomes((path_a, path_b))
    accuracy = outcomes.correct.mean(axis=0)
    changed = int((outcomes.correct[:, 0] != outcomes.correct[:, 1]).sum())
    st.caption(f"{plural(len(outcomes.images), 'image')} · accuracy {accuracy[0]:.1%} under A, {accuracy[1]:.1%} under B · "
               f"{plural(changed, 'image')} changed between right and wrong.")
    mosaic, trace = st.columns([3, 2])
    cells = load_mosaic_cells((path_a, path_b))
    mosaic_key = f"compare-mosaic-{st.session_state.get('mosaic_generation', 0)}-{abs(hash((path_a, path_b)))}"
    mosaic.plotly_chart(mosaic_view_figure(cells, st.session_state["compare_cells"], outcomes.names), width="stretch", key=mosaic_key,
                        on_select=partial(_pick_cells, mosaic_key, outcomes, cells), selection_mode=("points", "box"))
    with trace:
        chosen = st.multiselect("Versions in the Trace View, in order", versions, default=[path_a, path_b], format_func=_name, key="compare_trace_versions")
        if len(chosen) < 2:
            st.info("Choose two or more versions for the Trace View.")
            return outcomes
        along = load_outcomes(tuple(chosen))
        cell_ids = st.session_state["compare_cell_ids"]
        images = np.sort(along.positions(cell_ids)) if st.session_state["compare_cells"] else np.arange(len(along.images))
        steps = trace_steps(along, images)
        trace_key = f"compare-trace-{abs(hash((tuple(chosen), tuple(images[:50].tolist()), len(images))))}"
        st.plotly_chart(trace_figure(along, images, steps), width="stretch", key=trace_key, on_select=partial(_pick_trace, trace_key, along, steps),
                        selection_mode=("points",))
        wrong = images[~along.correct[images].any(axis=1)]
        st.button(f"Select the {plural(len(wrong), 'image')} every version gets wrong", on_click=_pick_always_wrong,
                  args=(along.images["image_id"].to_numpy()[wrong].tolist(),), disabled=not len(wrong), key="compare_always_wrong")
    return outcomes


def detail_view(outcomes: VersionOutcomes, path_a: str) -> list[str]:
    """The selected images with both versions' predictions; returns their ids."""
    trace_ids, cell_ids = st.session_state["compare_trace_ids"], st.session_state["compare_cell_ids"]
    ids = trace_ids or cell_ids
    if not ids:
        st.caption("Click mosaic cells (shift-click for several) or a Trace View dot to list their images here.")
        return []
    source = st.session_state["compare_trace_source"] if trace_ids else f"{plural(len(st.session_state['compare_cells']), 'mosaic cell')}"
    heading, clear, send = st.columns([4, 1, 2], vertical_alignment="center")
    heading.markdown(f"**{plural(len(ids), 'image')} selected** · {source}")
    clear.button("Clear selection", on_click=_clear_selection, key="compare_clear", width="stretch")
    indexes = outcomes.positions(ids)
    rows_a = outcomes.rows[indexes, 0]
    send.button("Open on the Slices page", icon=":material/scatter_plot:", on_click=_send_to_slices, args=(path_a, rows_a.tolist()),
                key="compare_send", width="stretch", help="Version A becomes the System Menu's version with these images selected, "
                "so you can see their slices and annotate them.")
    shown = indexes[:DETAIL_LIMIT]
    pictures = load_images(path_a, tuple(int(row) for row in outcomes.rows[shown, 0]), 96, False)
    captions = [f"{outcomes.images.at[i, 'label']} · A: {outcomes.predictions[i, 0]} {'✓' if outcomes.correct[i, 0] else '✗'}"
                f" · B: {outcomes.predictions[i, 1]} {'✓' if outcomes.correct[i, 1] else '✗'}" for i in shown]
    st.image(pictures, caption=captions, width=96)
    if len(indexes) > DETAIL_LIMIT:
        st.caption(f"The first {DETAIL_LIMIT} of {plural(len(indexes), 'image')}; the Slices page receives them all.")
    return list(ids)


def comparison_form(path_a: str, path_b: str) -> tuple[str, CompareParams] | None:
    classes = load_workspace(path_a).classes
    columns = st.columns([1, 2, 1, 1, 1, 1])
    class_name = columns[0].selectbox("Class", classes, key="compare_class")
    sampling = columns[1].selectbox("Sample", STRATEGIES, format_func=SAMPLING_LABELS.get, key="compare_sampling")
    per_model = columns[2].number_input("Images per model", min_value=8, max_value=1000, value=100, step=20, key="compare_per_model",
                                        help="The paper's default: 100 per model (25 per confusion cell).")
    k = columns[3].number_input("Clusters (K)", min_value=2, max_value=40, value=8, key="compare_k")
    with columns[4]:
        method = st.selectbox("Segments", SEGMENTATIONS, format_func=SEGMENTATION_LABELS.get, key="compare_segments",
                              help="Grid cells (IMACS's default 4 × 4) isolate small fixed-place details such as a corner watermark; "
                                   "SLIC superpixels follow object and background edges.")
        if method == "grid":
            segments = SegmentParams(grid=int(st.number_input("Cells per side", min_value=2, max_value=8, value=4, key="compare_grid")))
        else:
            segments = SegmentParams(method="slic", n_segments=int(st.number_input("Superpixels per image", min_value=4, max_value=64, value=16,
                                                                                  key="compare_n_segments")))
    baseline = columns[5].selectbox("Left-out segments show", BASELINES, format_func=BASELINE_LABELS.get, key="compare_baseline",
                                    help="A segment outside a coalition shows the dataset's mean colour (the default: a blurred copy keeps a "
                                         "background's colour, and with it a colour shortcut), or a Gaussian-blurred copy of itself (IMACS).")
    with st.expander("More settings: segment pre-selection, the embedding model"):
        top_n = st.number_input("Score only each image's top N segments by GradCAM mass (0: all)", min_value=0, max_value=64, value=0,
                                key="compare_top_n", help="IMACS pre-selects 5 segments per image by a region attribution; the others keep their pixels.")
        arch = st.text_input("Embedding model: torchvision architecture (empty: a small CNN trained on version A's training data)",
                             key="compare_embedder_arch", placeholder="e.g. resnet18").strip()
        checkpoint = st.text_input("Its state_dict file (loaded with weights_only; nothing is downloaded)", key="compare_embedder_checkpoint").strip()
    try:
        embedding = EmbeddingParams(arch=arch or None, checkpoint=Path(checkpoint).expanduser() if checkpoint else None)
        return class_name, CompareParams(per_model=int(per_model), sampling=sampling, k=int(k), segments=segments,
                                         shapley=ShapleyParams(baseline=baseline, top_n=int(top_n) or None), embedding=embedding)
    except SliceScopeError as error:
        show_error(error)
        return None


def _request() -> None:
    st.session_state["compare_request"] = True


def _cancel() -> None:
    st.session_state["compare_request"] = False


def attribution_comparison(path_a: str, path_b: str, class_name: str, params: CompareParams):
    """The comparison when cached or asked for; otherwise the time estimate and the button that starts it."""
    key = (path_a, path_b, class_name, params)
    comparison = cached_comparison(*key)
    if comparison is not None:
        return comparison
    estimate = load_estimate(*key)
    if isinstance(estimate, SliceScopeError):
        raise estimate
    # The request is "compare what the form says", not these parameters: a click that lands while a changed
    # setting is still rerunning the page then compares the new settings rather than being lost.
    if not st.session_state["compare_request"] and estimate > 0:
        start, note = st.columns([1, 3], vertical_alignment="center")
        start.button("Compare", type="primary", icon=":material/compare:", on_click=_request, key="compare_start", width="stretch")
        note.caption(f"About {estimate:,.0f} s on this machine (measured on a few images); the results are kept, so later visits are instant.")
        return None
    with st.status(f"Comparing {_name(path_a)} with {_name(path_b)} on {class_name} (about {estimate:,.0f} s)…", expanded=True) as box:
        st.button("Cancel", on_click=_cancel, key="compare_cancel", icon=":material/cancel:")
        comparison = run_comparison(path_a, path_b, class_name, params, streamlit_progress(st))
        box.update(label="Comparison ready", state="complete", expanded=False)
    st.session_state["compare_request"] = False
    return comparison


def _pick_tile(chart_key: str, comparison_key: tuple) -> None:
    picked = picked_ids(chart_key)
    st.session_state["compare_tile"] = (comparison_key, picked[0]) if picked else None


def cluster_views(comparison, path_a: str, selected_ids: list[str]) -> None:
    embedder = comparison.params.embedding
    st.caption(f"Segment tiles embedded by {embedder.arch} ({embedder.checkpoint})" if embedder.arch else
               f"Segment tiles embedded by a small CNN trained on {comparison.workspace_a}'s training data ({embedder.epochs} epochs, "
               f"{embedder.train_images:,} images at most), since no pretrained weights are downloaded; another model can be set under More settings.")
    if comparison.sample.messages:
        st.info("The sample is smaller than asked:\n" + "\n".join(f"- {message}" for message in comparison.sample.messages), icon=":material/info:")
    segments = comparison.segments
    if selected_ids and st.toggle(f"Only the segments of the {plural(len(selected_ids), 'selected image')}", value=True, key="compare_filter"):
        segments = segments[segments["image_id"].isin(selected_ids)]
        if segments.empty:
            st.info("None of the selected images is in the comparison's sample: clear the selection, or sample where A and B disagree.")
            return
    left, right = st.columns([2, 1])
    order_by = left.radio("Order clusters by", list(CLUSTER_ORDERS), format_func=CLUSTER_ORDERS.get, horizontal=True, key="compare_order")
    per_row = right.slider("Tiles per row", 4, 20, 10, key="compare_tiles")
    order = cluster_order(comparison, order_by)
    comparison_key = (comparison.workspace_a, comparison.workspace_b, comparison.class_name, comparison.params)
    size = int(load_workspace(path_a).manifest["transforms"]["image_size"])
    pictures = load_pictures(path_a, tuple(sorted(set(segments["image_id"]))), size)
    board, columns, labels = concept_cluster_board(comparison, segments, order, per_row, pictures)
    tiles_key = f"compare-tiles-{abs(hash((comparison.class_name, comparison.params, order_by, per_row, len(segments))))}"
    st.plotly_chart(
        tile_board_figure(board, columns, 2 * len(order), labels,
                          "Concept Cluster · click a tile to see it in its image"),
        key=tiles_key, on_select=partial(_pick_tile, tiles_key, comparison_key), selection_mode=("points",), width="content")
    st.caption("Per cluster, A's segments (upper row) and B's (lower row), highest attribution first. Border: the image's cell for the class "
               "(TP green, FP orange, TN blue, FN red); bar: the segment's attribution (grey when negative). The numbers are each model's "
               "attribution per image showing the pattern, and their difference.")
    # A tile is a row of this comparison's segments: one picked in another comparison means nothing here.
    picked_for, tile = st.session_state["compare_tile"] or (None, None)
    if picked_for != comparison_key:
        tile = None
    detail, where = st.columns([1, 1])
    cluster = int(segments.loc[tile, "cluster"]) if tile in segments.index else order[0]
    with detail:
        if tile in comparison.segments.index:
            row = comparison.segments.loc[tile]
            picture = pictures.get(row["image_id"]) if row["image_id"] in pictures else load_pictures(path_a, (row["image_id"],), size)[row["image_id"]]
            st.image(outlined_segment(picture, (row["x0"], row["y0"], row["x1"], row["y1"])), width=256,
                     caption=f"Segment {row['segment']} in its image · model {row['model']}'s sample ({row['cell']}) · "
                             f"attribution {row['attribution']:+.3g} · cluster {row['cluster']}")
        else:
            st.caption("Click a tile to see its segment outlined in its image.")
    cluster = where.selectbox("Cluster in detail", order, index=order.index(cluster), key=f"compare_cluster-{tile}")
    where.plotly_chart(position_heatmap_figure(segments, cluster, size, comparison.params.segments.grid), width="stretch", key="compare_positions")
    confusion, plots = st.columns(2)
    confusion.plotly_chart(cluster_confusion_figure(segments, cluster, comparison.class_name), width="stretch", key="compare_confusion")
    plots.plotly_chart(cluster_plots_figure(segments, cluster, comparison.params.cluster_mean), width="stretch", key="compare_plots")
    st.plotly_chart(cluster_histogram_figure(segments, order), width="stretch", key="compare_histogram")
    summary = comparison.clusters
    downloads = st.columns(2)
    downloads[0].download_button("Clusters (CSV)", summary.to_csv(index=False), file_name=f"clusters-{comparison.class_name}.csv",
                                 mime="text/csv", on_click="ignore", icon=":material/download:", width="stretch")
    downloads[1].download_button("Segments (CSV)", comparison.segments.to_csv(index=False), file_name=f"segments-{comparison.class_name}.csv",
                                 mime="text/csv", on_click="ignore", icon=":material/download:", width="stretch")


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    for key, value in STATE_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    if st.session_state["compare_to_slices"]:
        st.session_state["compare_to_slices"] = False
        st.switch_page(Path(__file__).with_name("slices.py"))
    current = str(st.session_state["selection"].workspace)
    st.title(f"Compare · {workspace.name}")
    st.caption("What changed between two versions of a model (DASH's Mosaic and Trace views), and what each version relies on (IMACS's "
               "attribution clusters). Any two scans of the same images compare.")
    chosen = version_choice(current)
    if chosen is None:
        return
    path_a, path_b = chosen
    if st.session_state.get("compare_pair") != chosen:  # mosaic cells are numbered per pair of versions
        _clear_selection()
        st.session_state["compare_pair"] = chosen
    try:
        st.subheader("What changed")
        outcomes = changes_view(path_a, path_b, dataset_versions(current))
        selected_ids = detail_view(outcomes, path_a)
        st.subheader("What each version relies on")
        st.caption("Per model, a sample of images for one class; each image cut into grid segments scored by Shapley values (what each segment "
                   "adds to the class's logit); both models' segments clustered together by a third model's embedding, so a cluster is one visual "
                   "pattern. A cluster's attribution per model is what the pattern adds per image showing it; clusters where A and B differ most come first.")
        form = comparison_form(path_a, path_b)
        if form is None:
            return
        comparison = attribution_comparison(path_a, path_b, *form)
        if comparison is not None:
            cluster_views(comparison, path_a, selected_ids)
    except SliceScopeError as error:
        st.session_state["compare_request"] = False
        show_error(error)


main()
