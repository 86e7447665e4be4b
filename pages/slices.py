"""Slices page: Slice Table, 2-D representation space and Slice Detail View, linked.

Picking rows in the table highlights those slices in the scatter and fills the
detail view; box/lasso-selecting points in the scatter filters the table to
their slices and shows those images. The selection survives switching the
representation (the layout) and lives in the URL (``?slices=3,7``).

In the attribution layout the plot can be the Data Slice Mosaic instead
(split by confusion cell in the confusion layout); clicking a tile picks its
slice and shows a panel with the slice's most typical images and a button
that queues it for annotation.
"""

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import streamlit as st

from app.annotations import (
    annotated_table,
    annotation_form,
    load_annotations,
    propagation_settings,
    relabel_controls,
    relabels_of,
    spuriousness_column,
)
from app.figures import (
    TILE_METRICS,
    ScatterData,
    ScatterOptions,
    cell_mosaic_figure,
    mosaic_figure,
    rows_in_box,
    samples_points,
    scatter_figure,
    thumbnail_scatter,
)
from app.influence import opponents_grid
from app.ui import (
    COLOUR_LABELS,
    LAYOUT_LABELS,
    REPRESENTATION_LABELS,
    load_images,
    load_mosaic,
    load_scatter_data,
    load_slices,
    load_thumbnail_uris,
    load_workspace,
    picked_ids,
    representation_phrase,
    selected_workspace,
    show_error,
    table_height,
)
from core.errors import SliceScopeError
from core.evidence import evidence_order
from core.influence import is_computed
from core.views import (
    MEMBER_ORDERS,
    caption,
    confusion_cells,
    export_frame,
    in_cell,
    members,
    order_members,
    plural,
    slices_of,
    typical_members,
)

PAGE_SIZE = 24
THUMBNAIL_SIZE = 128
TYPICAL_COUNT = 6  # images in a picked tile's strip: one row under the mosaic
THUMBNAIL_POINTS_MAX = 3000  # one JPEG per point travels with the chart: a few MB at most
TILE_PANELS_MAX = 3  # picked slices with a panel; a box selection can pick dozens, the detail view lists them all
# The slice the analyst asked to annotate; the annotation form reads it.
ANNOTATE_KEY = "annotate_slice"
# What matters first comes first: in the combined layout the table has half the page, and the rest scrolls.
TABLE_COLUMNS = ["slice", "flagged", "size", "accuracy", "description", "metadata_description", "gap", "interval", "spuriousness", "annotation",
                 "mean_confidence", "errors", "confusion"]
TABLE_COLUMN_CONFIG = {
    "slice": st.column_config.NumberColumn("Slice", width="small"),
    "flagged": st.column_config.CheckboxColumn("Problem", width="small",
                                               help="Large enough and clearly less accurate than the rest: a binomial test against the rest's "
                                                    "error rate, Benjamini–Hochberg over all slices (q ≤ 0.05), at least 20 points below"),
    "size": st.column_config.NumberColumn("Size", width="small"),
    "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent", width="small"),
    "interval": st.column_config.TextColumn("95% interval", width="small", help="Wilson interval of the slice's accuracy"),
    "gap": st.column_config.NumberColumn("Below the rest", format="percent", width="small",
                                         help="How far the slice's accuracy lies below the accuracy of all other images"),
    "mean_confidence": st.column_config.NumberColumn("Confidence", format="percent", width="small"),
    "errors": st.column_config.NumberColumn("Errors", width="small"),
    "annotation": st.column_config.TextColumn("Annotation", width="medium"),
    "description": st.column_config.TextColumn("Mostly", width="medium", help="The slice's most common label → prediction, and how over-represented it is"),
    "metadata_description": st.column_config.TextColumn(
        "Set apart by", width="large",
        help="For problem slices: the dataset's own columns (from the manifest) that best tell the slice's images from the others, "
             "found by a shallow decision tree, with how many of the slice and of the other images match"),
    "confusion": st.column_config.TextColumn("label → prediction counts", width="large"),
}


def _parse_slices(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip().isdigit()})


def sync_selection(selection, valid_slices: set[int]) -> None:
    """Start from the URL on first load; forget slice ids when the slicing they came from changes."""
    state = st.session_state
    state.setdefault("scatter_generation", 0)
    if state.get("picked_for") != selection.slicing_key:
        first_load = "picked_for" not in state
        from_url = _parse_slices(st.query_params.get("slices", "")) if first_load else []
        state["picked_slices"] = [s for s in from_url if s in valid_slices]
        state["picked_for"] = selection.slicing_key
    if state.get("points_for") != str(selection.workspace):
        state["picked_points"] = []
        state["points_for"] = str(selection.workspace)
        state["scatter_generation"] += 1
    # A zoom's box is in one layout's coordinates: another layout starts on its whole map.
    if state.get("view_for") != (str(selection.workspace), selection.representation):
        state["scatter_view"] = state["scatter_box"] = None
        state["view_for"] = (str(selection.workspace), selection.representation)


def _pick_rows(table_key: str, shown_slices: np.ndarray) -> None:
    """Table callback: the clicked rows become the selected slices (and replace a point selection)."""
    rows = st.session_state[table_key].selection.rows
    st.session_state["picked_slices"] = sorted(int(shown_slices[row]) for row in rows)
    if st.session_state["picked_points"]:
        _clear_points()


def _pick_points(scatter_key: str, layout: np.ndarray | None = None) -> None:
    """Scatter callback: the box/lasso/clicked points become the point selection.

    ``layout`` is given when the scatter draws a sample of the points: a box on the combined layout (axes ``x``/``y``)
    then takes every image inside it, not only the sampled ones the browser reports.
    """
    picked = set(picked_ids(scatter_key))
    st.session_state["scatter_box"] = None
    if layout is not None:
        for box in st.session_state[scatter_key].selection.get("box", []):
            if box.get("xref", "x") == "x" and box.get("yref", "y") == "y" and len(box.get("x", ())) == 2 and len(box.get("y", ())) == 2:
                corners = (*box["x"], *box["y"])
                picked |= set(rows_in_box(layout, corners).tolist())
                st.session_state["scatter_box"] = corners  # the last box: what "Zoom to the box" zooms to
    st.session_state["picked_points"] = sorted(picked)


def _pick_tiles(mosaic_key: str) -> None:
    """Mosaic callback: the clicked or boxed tiles become the selected slices."""
    st.session_state["picked_slices"] = sorted(set(picked_ids(mosaic_key)))
    if st.session_state["picked_points"]:
        _clear_points()


def _pick_thumbnail_points(chart_key: str, layout: np.ndarray, rows: np.ndarray) -> None:
    """Thumbnail-chart callback: clicked points, or the points inside the dragged box, become the point selection."""
    selection = st.session_state[chart_key].selection
    clicked = {int(point["row"]) for point in selection.get("picked", []) if "row" in point}
    box = selection.get("brush") or {}
    if "x" in box and "y" in box:
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        inside = (layout[rows, 0] >= x0) & (layout[rows, 0] <= x1) & (layout[rows, 1] >= y0) & (layout[rows, 1] <= y1)
        clicked |= {int(row) for row in rows[inside]}
    st.session_state["picked_points"] = sorted(clicked)


def _clear_points() -> None:
    st.session_state["picked_points"] = []
    st.session_state["scatter_box"] = None
    st.session_state["scatter_generation"] += 1


def _zoom(view: tuple[float, float, float, float] | None) -> None:
    """Zoom the sampled scatter to a box (its points drawn), or back to the whole map (None)."""
    st.session_state["scatter_view"] = view
    st.session_state["scatter_generation"] += 1


def slice_table_view(table, slice_ids: np.ndarray, spuriousness_config) -> None:
    points = st.session_state["picked_points"]
    # Strongest evidence first: a 2-image slice at 0% is not a finding, a large slice far below the rest is.
    with_interval = table.assign(interval=[f"{low:.0%}–{high:.0%}" for low, high in zip(table["accuracy_low"], table["accuracy_high"])])
    shown = evidence_order(with_interval)[TABLE_COLUMNS].reset_index(drop=True)
    if not shown["metadata_description"].astype(bool).any():
        shown = shown.drop(columns="metadata_description")  # a dataset without metadata columns: nothing to name slices by
    if points:
        shown = shown[shown["slice"].isin(slices_of(slice_ids, points))].reset_index(drop=True)
        note, clear = st.columns([4, 1], vertical_alignment="center")
        note.caption(f"Filtered to the {plural(len(shown), 'slice')} of the {plural(len(points), 'point')} selected in the scatter.")
        clear.button("Show all", on_click=_clear_points, key="clear_points", width="stretch")
    else:
        st.caption("Click rows to select slices · click a header to sort.")
    shown_slices = shown["slice"].to_numpy()
    # The key names the rows shown, so a filtered table is a new widget whose
    # highlighted rows start from the current selection.
    table_key = f"slice_table-{abs(hash(tuple(shown_slices.tolist())))}"
    picked = set(st.session_state["picked_slices"])
    st.dataframe(
        shown,
        hide_index=True,
        height=table_height(len(shown)),
        on_select=partial(_pick_rows, table_key, shown_slices),
        selection_mode="multi-row",
        selection_default={"selection": {"rows": [i for i, s in enumerate(shown_slices) if s in picked]}},
        key=table_key,
        column_config=TABLE_COLUMN_CONFIG | {"spuriousness": spuriousness_config},
    )


def mosaic_view(selection, table, slice_ids: np.ndarray, metric: str) -> None:
    if selection.slice_on != "attribution":
        st.info("The Data Slice Mosaic summarises slices of the attribution space: set *Slice on* to F_W in Slicing settings.")
        return
    path, picked = str(selection.workspace), st.session_state["picked_slices"]
    try:
        if selection.layout == "confusion":
            figure = cell_mosaic_figure(load_mosaic(path, selection.slice_params, "confusion"), table, picked, load_workspace(path).classes, metric)
        else:
            figure = mosaic_figure(load_mosaic(path, selection.slice_params, "combined"), table, picked, metric)
    except SliceScopeError as error:
        show_error(error)
        return
    # The layout is in the key: the combined and per-cell mosaics are different charts whose selections must not carry over.
    mosaic_key = f"mosaic-{selection.layout}-{st.session_state['scatter_generation']}"
    st.plotly_chart(figure, width="stretch", key=mosaic_key, on_select=partial(_pick_tiles, mosaic_key), selection_mode=("points", "box"))
    tile_panels(path, table, slice_ids)


def _queue_annotation(slice_id: int) -> None:
    st.session_state[ANNOTATE_KEY] = slice_id
    st.toast(f"Annotating slice {slice_id}: the form is under the Slice Table.", icon=":material/edit_note:")


def annotation_targets() -> list[int]:
    """The slices the annotation form acts on: the one a tile's Annotate button named, else every picked slice."""
    picked = st.session_state["picked_slices"]
    queued = st.session_state.get(ANNOTATE_KEY)
    return [queued] if queued in picked else picked


def tile_panels(workspace_path: str, table, slice_ids: np.ndarray) -> None:
    """Per picked slice: its name and metrics, its most typical images, and the annotate button."""
    picked = st.session_state["picked_slices"]
    if not picked:
        st.caption("Click a tile's number to see its slice's most typical images here.")
        return
    workspace = load_workspace(workspace_path)
    features = workspace.array("attribution_features")
    metrics = table.set_index("slice")
    for slice_id in picked[:TILE_PANELS_MAX]:
        row = metrics.loc[slice_id]
        with st.container(border=True, key=f"tile-panel-{slice_id}"):
            heading, action = st.columns([3, 1], vertical_alignment="center")
            heading.markdown(f"#### Slice {slice_id}")
            action.button(f"Annotate slice {slice_id}", key=f"annotate-{slice_id}", icon=":material/edit_note:",
                          on_click=_queue_annotation, args=(slice_id,), width="stretch")
            queued = " · in the annotation form" if st.session_state.get(ANNOTATE_KEY) == slice_id else ""
            st.caption(
                f"{plural(row['size'], 'image')} · accuracy {row['accuracy']:.0%} · mostly {row['dominant_label']} → {row['dominant_prediction']}{queued}  \n"
                "Most typical images: the members closest to the slice's mean attribution-weighted features (F_W)."
            )
            typical = typical_members(features, slice_ids, slice_id, TYPICAL_COUNT)
            pictures = load_images(workspace_path, tuple(int(r) for r in typical), THUMBNAIL_SIZE, False)
            st.image(pictures, caption=_captions(workspace.images, typical), width=100)
    if len(picked) > TILE_PANELS_MAX:
        st.caption(f"{len(picked) - TILE_PANELS_MAX} more picked slices: the Slice Detail View below shows all their images.")


def _captions(images, rows: np.ndarray) -> list[str]:
    chosen = images.iloc[rows]
    return [
        ("✓ " if ok else "✗ ") + caption(label, prediction, confidence)
        for ok, label, prediction, confidence in zip(chosen["correct"], chosen["label"], chosen["prediction"], chosen["confidence"])
    ]


def thumbnail_view(path: str, data: ScatterData, options: ScatterOptions) -> None:
    """The scatter with an image on hover; all points of a small workspace, else the picked or highlighted ones."""
    rows = np.arange(len(data.images))
    if len(rows) > THUMBNAIL_POINTS_MAX:
        focus = options.highlighted if options.highlighted is not None else rows
        rows = np.sort(np.random.default_rng(0).permutation(np.asarray(focus))[:THUMBNAIL_POINTS_MAX])
        st.caption(f"Thumbnails for {len(rows):,} of {len(data.images):,} points ({'of the selection' if options.highlighted is not None else 'a fixed sample'}); "
                   "the Scatter view shows them all.")
    if options.confusion:
        st.caption("Thumbnails are drawn in the combined layout; the Scatter view splits by confusion-matrix cell.")
    chart_key = f"thumbnails-{st.session_state['scatter_generation']}"
    st.altair_chart(
        thumbnail_scatter(data, options, rows, load_thumbnail_uris(path, tuple(int(r) for r in rows))),
        width="stretch", key=chart_key, on_select=partial(_pick_thumbnail_points, chart_key, data.layout, rows),
    )


def scatter_view(selection, data: ScatterData, colour: str, thumbnails: bool) -> None:
    picked_slices = st.session_state["picked_slices"]
    points = st.session_state["picked_points"]
    highlighted = np.asarray(points) if points else (members(data.slice_ids, picked_slices) if picked_slices else None)
    with st.popover("Plot options", icon=":material/tune:"):
        density = st.toggle("Density contours", key="plot_density")
        hulls = st.toggle("Outline selected slices", value=True, key="plot_hulls")
        labels = st.toggle("Slice numbers", value=True, key="plot_labels")
    options = ScatterOptions(
        colour=colour,
        highlighted=highlighted,
        hull_slices=tuple(picked_slices) if hulls else (),
        slice_labels=labels,
        density=density,
        confusion=selection.layout == "confusion",
    )
    if thumbnails:
        thumbnail_view(str(selection.workspace), data, options)
        return
    scatter_key = f"scatter-{st.session_state['scatter_generation']}"
    sampled = samples_points(len(data.images), options) and not options.confusion
    if sampled:
        options = replace(options, view=st.session_state["scatter_view"])
    st.plotly_chart(
        scatter_figure(data, options), width="stretch", key=scatter_key,
        on_select=partial(_pick_points, scatter_key, data.layout if sampled else None),
        selection_mode=("points", "box", "lasso"),
    )
    if sampled:
        zoom_controls(data.layout, options.max_points)


def zoom_controls(layout: np.ndarray, max_points: int) -> None:
    """The browser's own zoom enlarges the drawn sample; these redraw a box with every point in it."""
    box, view = st.session_state["scatter_box"], st.session_state["scatter_view"]
    in_box = 0 if box is None or box == view else len(rows_in_box(layout, box))
    left, right = st.columns(2)
    if in_box:
        left.button(f"Zoom to the box ({in_box:,} points)", icon=":material/zoom_in:", on_click=_zoom, args=(box,),
                    help="Redraw the scatter on the boxed area with every point in it (a sample of them above "
                         f"{max_points:,}), instead of the whole map's sample.")
    elif view is None:
        left.caption("Box-select an area to zoom in and see every point in it.")
    if view is not None:
        right.button("Whole map", icon=":material/zoom_out:", on_click=_zoom, args=(None,))


def _selection_csv(images, rows: np.ndarray, slice_ids: np.ndarray) -> str:
    return export_frame(images, rows, slice_ids).to_csv(index=False)


def detail_view(workspace_path: str, images, slice_ids: np.ndarray, confusion: bool) -> None:
    picked_slices = st.session_state["picked_slices"]
    points = st.session_state["picked_points"]
    if points:
        rows, what = np.asarray(points), f"{plural(len(points), 'point')} selected in the scatter"
    elif picked_slices:
        rows = members(slice_ids, picked_slices)
        what = f"slice{'s' if len(picked_slices) > 1 else ''} {', '.join(map(str, picked_slices))} · {plural(len(rows), 'image')}"
    else:
        st.info("Pick a slice in the Slice Table, or box/lasso-select points in the scatter, to see its images here.", icon=":material/touch_app:")
        return
    st.subheader("Slice Detail View")
    if confusion:
        cells = confusion_cells(images, rows)
        cell = st.pills(
            "Confusion-matrix cell", range(len(cells)), default=0, key="detail_cell",
            format_func=lambda i: f"{cells['title'].iat[i]} ({cells['count'].iat[i]})",
        )
        if cell is not None:
            rows = in_cell(images, rows, cells["label"].iat[cell], cells["prediction"].iat[cell])
            what += f" · {cells['title'].iat[cell]}: {len(rows):,}"
    controls = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
    controls[0].caption(what)
    if picked_slices and not points and controls[0].button("Augment these slices", key="augment_picked", icon=":material/auto_awesome:",
                                                           help="Make counterfactuals of their training images on the Augment page"):
        st.session_state.update(augment_sources_kind="slice", augment_sources_slices=list(picked_slices))
        st.switch_page(Path(__file__).with_name("augment.py"))
    heatmaps = controls[1].segmented_control("Show", ["Images", "GradCAM heatmaps"], default="Images", key="detail_mode") == "GradCAM heatmaps"
    # A new order shows other images on every page: start again from the first.
    order = controls[2].selectbox("Sort", list(MEMBER_ORDERS), format_func=MEMBER_ORDERS.get, key="detail_order",
                                  on_change=st.session_state.update, kwargs={"detail_page": 1})
    # Written when clicked, not on every rerun: a selection of 20,000 images is a few MB of CSV.
    controls[3].download_button(
        "Export CSV", partial(_selection_csv, images, rows, slice_ids), file_name="slicescope-selection.csv",
        mime="text/csv", icon=":material/download:", width="stretch", key="export_selection",
    )
    ordered = order_members(images, rows, order)
    n_pages = max(1, -(-len(ordered) // PAGE_SIZE))
    page = st.pagination(n_pages, key="detail_page") if n_pages > 1 else 1
    shown = ordered[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    pictures = load_images(workspace_path, tuple(int(r) for r in shown), THUMBNAIL_SIZE, heatmaps)
    relabels = relabels_of(workspace_path)
    captions = [
        text + (f" · ⚑ should be {relabels[image]}" if image in relabels else "")
        for text, image in zip(_captions(images, shown), images["image_id"].to_numpy()[shown])
    ]
    st.image(pictures, caption=captions, width=THUMBNAIL_SIZE + 22)
    relabel_controls(workspace_path, shown, captions)
    if len(picked_slices) == 1 and not points and is_computed(load_workspace(workspace_path)):
        with st.expander(f"Opponents of slice {picked_slices[0]} in the training data (influence embeddings)", icon=":material/swords:"):
            opponents_grid(workspace_path, slice_ids, picked_slices[0])


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    selection = st.session_state["selection"]
    path = str(selection.workspace)
    images = workspace.images
    st.title(f"Slices · {workspace.name}")
    try:
        slice_ids, table = load_slices(path, selection.slice_on, selection.k, selection.method)
        data = load_scatter_data(path, selection.representation, selection.slice_on, selection.k, selection.method)
    except SliceScopeError as error:
        show_error(error)
        return
    sync_selection(selection, set(table["slice"].tolist()))
    with st.sidebar:
        propagation = propagation_settings()
    annotations = load_annotations(selection, propagation)
    table = annotated_table(table, annotations)
    colour = selection.colour
    if colour == "spuriousness" and (annotations is None or not annotations.has_spuriousness):
        st.info("Spuriousness colours appear once a slice is annotated core or spurious (the form under the Slice Table); coloured by slice meanwhile.",
                icon=":material/info:")
        colour = "slice"

    overview = st.columns(4)
    overview[0].metric("Images", f"{len(images):,}")
    overview[1].metric("Accuracy", f"{images['correct'].mean():.1%}")
    overview[2].metric("Slices", len(table))
    overview[3].metric("Problem slices", int(table["flagged"].sum()),
                       help="Slices large enough and clearly less accurate than the rest (the Slice Table's Problem column)")

    confusion = selection.layout == "confusion"
    # A grid of confusion cells needs the full width; the combined scatter sits beside the table.
    table_column, plot_column = (st.container(), st.container()) if confusion else st.columns([5, 6])
    with table_column:
        st.subheader("Slice Table")
        slice_table_view(table, slice_ids, spuriousness_column(annotations))
        if annotations is not None:
            annotation_form(path, annotations, annotation_targets())
    with plot_column:
        st.subheader(REPRESENTATION_LABELS[selection.representation])
        sliced_on = "" if selection.slice_on == selection.representation else f" Slices from the {representation_phrase(selection.slice_on)}."
        sampled = (" A sample of the points is drawn over the density of all of them; a box selection takes every point inside it."
                   if samples_points(len(images), ScatterOptions()) else "")
        st.caption(f"UMAP layout · {LAYOUT_LABELS[selection.layout].lower()} · coloured by {COLOUR_LABELS[selection.colour].lower()}.{sliced_on}{sampled}")
        if colour == "spuriousness":
            spuriousness = tuple(zip(table["slice"].tolist(), table["spuriousness"].astype(float).tolist()))
            data = load_scatter_data(path, selection.representation, selection.slice_on, selection.k, selection.method, spuriousness)
        views = ["Scatter", "Thumbnails on hover"] + (["Data Slice Mosaic"] if selection.representation == "attribution" else [])
        if st.session_state.get("plot_view") not in views:
            st.session_state["plot_view"] = "Scatter"  # the mosaic exists only for the attribution space
        view = st.segmented_control("View", views, key="plot_view", label_visibility="collapsed") or "Scatter"
        if view == "Data Slice Mosaic":
            mosaic_view(selection, table, slice_ids, colour if colour in TILE_METRICS else "accuracy")
        else:
            scatter_view(selection, data, colour, thumbnails=view == "Thumbnails on hover")
    if st.session_state["picked_slices"]:
        st.query_params["slices"] = ",".join(map(str, st.session_state["picked_slices"]))
    else:
        st.query_params.pop("slices", None)
    detail_view(path, images, slice_ids, confusion)


main()
