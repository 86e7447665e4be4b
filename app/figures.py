"""Plotly figures for the analyst pages (no Streamlit here: figures are plain data).

The scatter draws one WebGL trace per confusion-matrix cell (label, prediction).
That one choice gives everything the views need: DASH's encoding (true class as
fill, predicted class as border) becomes a per-trace constant, correct and
misclassified images get different markers, the legend toggles cells by name,
and the confusion-matrix layout is the same traces placed in a grid of subplots.
Per-point values travel as numeric arrays (Plotly encodes them as compact typed
arrays), so 100,000 points stay a few megabytes.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO

import altair as alt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import get_colorscale, sample_colorscale
from plotly.subplots import make_subplots

from core.mosaic import CellMosaic, Mosaic
from core.views import MATRIX_MAX_CLASSES, cell_title, confusion_cells, plural, slice_hulls, split_view_cells

SLICE_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#637939", "#3182bd", "#fd8d3c", "#74c476", "#9e9ac8",
]
CLASS_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#eeca3b"]
CORRECT_COLOURS = ["#e45756", "#4c78a8"]  # index 0: misclassified, 1: correct
CONTINUOUS_SCALES = {
    "accuracy": ("RdYlGn", "slice accuracy"),
    "confidence": ("Viridis", "confidence"),
    "spuriousness": ("RdYlGn_r", "slice spuriousness"),  # red: likely spurious
}
# What a tile's border can show: the colour choice → its Slice Table column.
TILE_METRICS = {"accuracy": "accuracy", "confidence": "mean_confidence", "spuriousness": "spuriousness"}
UNKNOWN_COLOUR = "#9e9e9e"
DIMMED_OPACITY = 0.12


@dataclass(frozen=True)
class ScatterData:
    """What a scatter shows, precomputed once per (workspace, slicing, layout).

    What no click changes (the confusion cells and their rows, where slice numbers go, the density of all points) is
    worked out on first use and kept with the data: a page that keeps one ``ScatterData`` between reruns redraws a
    click without regrouping 100,000 rows (about a third of a click's time at that size).
    """

    layout: np.ndarray  # N × 2
    images: pd.DataFrame
    slice_ids: np.ndarray
    slice_accuracy: np.ndarray  # per image: its slice's accuracy
    classes: list[str]
    slice_spuriousness: np.ndarray | None = None  # per image: its slice's spuriousness, when annotations give one

    @cached_property
    def cells(self) -> pd.DataFrame:
        """:func:`core.views.confusion_cells` of all images."""
        return confusion_cells(self.images)

    @cached_property
    def cell_rows(self) -> dict[tuple[str, str], np.ndarray]:
        """Row positions per (label, prediction) cell, in the order of :attr:`cells`."""
        groups = self.images.groupby(["label", "prediction"]).indices
        return {(label, prediction): np.asarray(groups[(label, prediction)], dtype=np.int64)
                for label, prediction in zip(self.cells["label"], self.cells["prediction"])}

    @cached_property
    def slice_label_positions(self) -> pd.DataFrame:
        return readable_slice_labels(self.layout, self.slice_ids)

    @cached_property
    def density(self) -> dict:
        """The binned density of every point, under a sample of them."""
        return _binned_density(self.layout, _DENSITY_BINS)


# Above this many points the scatter draws a sample over a binned density of all (a browser's WebGL scatter, the
# JSON and Plotly's copying all grow with the points). $SLICESCOPE_SCATTER_MAX_POINTS changes it; 0 never samples.
def scatter_max_points() -> int:
    return int(os.environ.get("SLICESCOPE_SCATTER_MAX_POINTS", "30000"))


_SAMPLE_PER_CELL_MIN = 200
_DENSITY_BINS = 200
_CELL_DENSITY_BINS = 60


@dataclass(frozen=True)
class ScatterOptions:
    colour: str = "slice"
    highlighted: np.ndarray | None = None  # row positions to emphasise; None: none
    hull_slices: tuple[int, ...] = ()
    slice_labels: bool = True
    density: bool = False
    confusion: bool = False
    max_points: int = field(default_factory=scatter_max_points)
    # (x0, x1, y0, y1) of the combined layout to zoom to: its points are drawn (sampled only above max_points).
    view: tuple[float, float, float, float] | None = None


def _discrete_scale(palette: list[str]) -> list[list]:
    """A colorscale that maps the integers 0..len-1 exactly onto the palette."""
    last = len(palette) - 1
    return [[i / last, colour] for i, colour in enumerate(palette)]


def _marker(data: ScatterData, rows: np.ndarray, options: ScatterOptions, highlighted: np.ndarray | None, label: str, prediction: str) -> dict:
    correct = label == prediction
    marker: dict = {"size": 7 if correct else 9, "symbol": "circle" if correct else "diamond"}
    if options.colour == "classes":
        marker["color"] = CLASS_PALETTE[data.classes.index(label) % len(CLASS_PALETTE)]
        marker["line"] = {"color": CLASS_PALETTE[data.classes.index(prediction) % len(CLASS_PALETTE)], "width": 2}
    elif options.colour == "slice":
        marker.update(color=_typed(data.slice_ids[rows] % len(SLICE_PALETTE)), coloraxis="coloraxis")
    elif options.colour == "correct":
        marker["color"] = CORRECT_COLOURS[int(correct)]
    else:
        values = {
            "accuracy": lambda: data.slice_accuracy[rows],
            "confidence": lambda: data.images["confidence"].to_numpy()[rows],
            "spuriousness": lambda: data.slice_spuriousness[rows],
        }[options.colour]()
        marker.update(color=_typed(values), coloraxis="coloraxis")
    marker["opacity"] = 0.8 if highlighted is None else _typed(np.where(highlighted[rows], 1.0, DIMMED_OPACITY).astype(np.float32))
    return marker


def _typed(values: np.ndarray) -> dict | list:
    """A numeric array as plotly.js's typed-array spec, the form Plotly's ``to_dict`` would give it.

    Written out here because Plotly checks each array on the way (narwhals, a read-only copy: about 0.1 ms each), and a
    scatter of 10 classes has 500 of them: 50 ms of a click at 100,000 images. plotly.js has no 64-bit integers.
    """
    array = np.ascontiguousarray(values)
    if array.size == 0:
        return []
    if array.dtype.kind in "iub":
        array = array.astype(np.int32 if array.dtype.kind != "b" else np.uint8, copy=False)
    spec = {"dtype": array.dtype.str[1:], "bdata": base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False)).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(map(str, array.shape))
    return spec


def _cell_trace(data: ScatterData, rows: np.ndarray, options: ScatterOptions, highlighted: np.ndarray | None,
                label: str, prediction: str, count: int, show_legend: bool) -> dict:
    """One confusion cell's points as a plain trace dict (``count``: the cell's size, of which ``rows`` may be a sample;
    ``highlighted``: a mask over all images, or None)."""
    confidence = data.images["confidence"].to_numpy()[rows]
    return {
        "type": "scattergl", "x": _typed(data.layout[rows, 0]), "y": _typed(data.layout[rows, 1]), "mode": "markers",
        "name": f"{label} → {prediction} ({count:,})", "legendgroup": f"{label}|{prediction}", "showlegend": show_legend,
        "customdata": _typed(np.column_stack([rows, data.slice_ids[rows], confidence])),
        "hovertemplate": f"<b>{cell_title(label, prediction)}</b><br>confidence %{{customdata[2]:.0%}}<br>slice %{{customdata[1]}}<extra></extra>",
        "marker": _marker(data, rows, options, highlighted, label, prediction),
    }


def samples_points(n_points: int, options: ScatterOptions) -> bool:
    return bool(options.max_points) and n_points > options.max_points


def rows_in_box(layout: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Rows whose 2-D position lies in ``box`` = (x0, x1, y0, y1), edges included, either order."""
    (x0, x1), (y0, y1) = sorted(box[:2]), sorted(box[2:])
    return np.flatnonzero((layout[:, 0] >= x0) & (layout[:, 0] <= x1) & (layout[:, 1] >= y0) & (layout[:, 1] <= y1))


def zoomed_rows(data: ScatterData, options: ScatterOptions) -> np.ndarray | None:
    """The rows inside ``options.view`` (None when the whole combined layout is shown)."""
    return None if options.view is None or options.confusion else rows_in_box(data.layout, options.view)


def drawn_rows(data: ScatterData, options: ScatterOptions) -> np.ndarray | None:
    """The rows the scatter draws as points; None when every point is drawn.

    Every row in the zoomed view, if any, up to ``options.max_points``. Above it, a fixed sample of each confusion
    cell (of the view's rows) in proportion to its size (at least a few, so a rare cell stays visible) plus every
    highlighted row."""
    in_view = zoomed_rows(data, options)
    candidates = len(data.images) if in_view is None else len(in_view)
    if not samples_points(candidates, options):
        return in_view
    groups = data.cell_rows if in_view is None else data.images.iloc[in_view].groupby(["label", "prediction"]).indices
    rng = np.random.default_rng(0)  # fixed: the same points on every click, so nothing jumps
    share = options.max_points / candidates
    # The floor for rare cells takes at most a quarter of the budget in all.
    floor = max(1, min(_SAMPLE_PER_CELL_MIN, options.max_points // (4 * len(groups))))
    sample = [rng.permutation(np.asarray(rows))[:max(floor, round(share * len(rows)))] for rows in groups.values()]
    chosen = np.concatenate(sample) if in_view is None else in_view[np.concatenate(sample)]
    if options.highlighted is not None:
        chosen = np.concatenate([chosen, np.asarray(options.highlighted, dtype=np.int64)])
    return np.unique(chosen)


def _binned_density(points: np.ndarray, bins: int) -> dict:
    """Every point counted in a ``bins`` × ``bins`` grid, drawn as a heat map under the sampled points (log counts; empty bins clear)."""
    # Equal-width bins by arithmetic and one bincount: np.histogram2d searches the edges (117 ms at 200,000 points, ~5 here).
    low, high = points.min(axis=0).astype(np.float64), points.max(axis=0).astype(np.float64)
    width = np.maximum(high - low, 1e-12) / bins
    cells = np.minimum(((points - low) / width).astype(np.int64), bins - 1)
    counts = np.bincount(cells[:, 1] * bins + cells[:, 0], minlength=bins * bins).reshape(bins, bins)
    shade = np.where(counts > 0, np.log1p(counts), np.nan)
    centres_x, centres_y = low[0] + width[0] * (np.arange(bins) + 0.5), low[1] + width[1] * (np.arange(bins) + 0.5)
    return {"type": "heatmap", "x": centres_x, "y": centres_y, "z": shade,
            "colorscale": [[0, "#eef0f3"], [1, "#59606b"]], "showscale": False, "hoverinfo": "skip", "zsmooth": False, "showlegend": False}


def _cell_positions(cells: pd.DataFrame, classes: list[str]) -> tuple[dict[tuple[str, str], tuple[int, int]], int, int, list[str]]:
    """Subplot (row, col) per cell: a label × prediction matrix for few classes, else a grid of the largest cells."""
    if len(classes) <= MATRIX_MAX_CLASSES:
        positions = {(label, prediction): (i + 1, j + 1) for i, label in enumerate(classes) for j, prediction in enumerate(classes)}
        titles = [cell_title(label, prediction) for label in classes for prediction in classes]
        return positions, len(classes), len(classes), titles
    shown = split_view_cells(cells, len(classes))
    columns = 3
    rows = -(-len(shown) // columns)
    positions = {(label, prediction): (i // columns + 1, i % columns + 1) for i, (label, prediction) in enumerate(zip(shown["label"], shown["prediction"]))}
    return positions, rows, columns, list(shown["title"])


def _cell_grid(cells: pd.DataFrame, classes: list[str]) -> tuple[dict[tuple[str, str], tuple[int, int]], go.Figure, int, int]:
    """Subplots titled in words, one per confusion cell shown, on shared axes so positions compare across cells;
    with the figure's height and number of columns."""
    positions, n_rows, n_cols, titles = _cell_positions(cells, classes)
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, shared_xaxes="all", shared_yaxes="all",
                           horizontal_spacing=0.02, vertical_spacing=0.06)
    return positions, figure, 260 * n_rows + 60, n_cols


def _axis_names(place: dict, n_cols: int) -> dict:
    """The axes of subplot (row, col) as make_subplots names them (x, x2, x3, … row by row), for a trace built as a dict."""
    if not place:
        return {}
    index = (place["row"] - 1) * n_cols + place["col"]
    suffix = "" if index == 1 else str(index)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def scatter_figure(data: ScatterData, options: ScatterOptions) -> go.Figure:
    """The 2-D representation space, combined or split by confusion-matrix cell.

    The per-cell traces are plain dicts handed to one unvalidated ``go.Figure``: building ~100 ``go.Scattergl``
    objects (a 10-class model) and adding them cost ~175 ms of Plotly validation per click at 100,000 images
    (docs/BENCHMARKS.md). Above ``options.max_points`` the points are a sample (:func:`drawn_rows`) drawn over a
    binned density of all of them, and the title says so.
    """
    cells = data.cells
    in_view = zoomed_rows(data, options)
    sampled = drawn_rows(data, options)
    drawn = np.ones(len(data.images), dtype=bool) if sampled is None else _mask(len(data.images), sampled)
    highlighted = None if options.highlighted is None else _mask(len(data.images), options.highlighted)
    # A binned density underlies the points wherever some are left out: the whole layout's, or the zoomed view's.
    thinned = sampled is not None and len(sampled) < (len(data.images) if in_view is None else len(in_view))

    if options.confusion:
        positions, grid, height, n_cols = _cell_grid(cells, data.classes)
    else:
        positions, grid, height, n_cols = {}, None, 620, 1

    traces, extras = [], []
    for label, prediction in zip(cells["label"], cells["prediction"]):
        rows = data.cell_rows[(label, prediction)]
        if options.confusion and (label, prediction) not in positions:
            continue
        place = dict(zip(("row", "col"), positions[(label, prediction)])) if options.confusion else {}
        axes = _axis_names(place, n_cols)
        # A cell's points take their slice's (or a value's) colour, so its legend entry is a neutral proxy in the same
        # legend group (a click still toggles the cell); only the class colours mean something in the legend itself.
        own_legend = not options.confusion and options.colour == "classes"
        if thinned and options.confusion:
            traces.append(_binned_density(data.layout[rows], _CELL_DENSITY_BINS) | axes)
        traces.append(_cell_trace(data, rows[drawn[rows]], options, highlighted, label, prediction, len(rows), show_legend=own_legend) | axes)
        if not options.confusion and not own_legend:
            traces.append(_legend_proxy(label, prediction, len(rows)))
        # Drawn onto the cell's subplot by its axis names: the unvalidated figure below keeps no subplot grid for row/col.
        if options.density and options.confusion:
            extras.append(_density(data.layout[rows[drawn[rows]]]).to_plotly_json() | axes)
        if options.hull_slices and options.confusion:
            extras += [hull.to_plotly_json() | axes for hull in slice_hull_traces(data.layout[rows], data.slice_ids[rows], options.hull_slices)]
    if not options.confusion:
        if thinned:
            traces.insert(0, dict(data.density) if in_view is None else _binned_density(data.layout[in_view], _DENSITY_BINS))
        if options.density:
            extras.append(_density(data.layout[drawn]).to_plotly_json())
        if options.hull_slices:
            extras += [hull.to_plotly_json() for hull in slice_hull_traces(data.layout, data.slice_ids, options.hull_slices)]
    return go.Figure(data=traces + extras, layout=_scatter_layout(data, options, grid, height, in_view, sampled, thinned), _validate=False)


def _scatter_layout(data: ScatterData, options: ScatterOptions, grid: go.Figure | None, height: int, in_view: np.ndarray | None,
                    sampled: np.ndarray | None, thinned: bool) -> dict:
    """The scatter's layout as one dict (Plotly's ``update_*`` calls cost ~15 ms a click at 100,000 images)."""
    layout = grid.layout.to_plotly_json() if grid is not None else {"xaxis": {}, "yaxis": {"scaleanchor": "x"}}
    for name, axis in layout.items():
        if name.startswith(("xaxis", "yaxis")):
            axis["visible"] = False
    for subplot_title in layout.get("annotations", ()):
        subplot_title["font"] = {"size": 12}
    if in_view is not None:
        (x0, x1), (y0, y1) = sorted(options.view[:2]), sorted(options.view[2:])
        layout["xaxis"]["range"], layout["yaxis"]["range"] = [x0, x1], [y0, y1]
    if options.slice_labels and not options.confusion:
        # Annotations, not a text trace: plotly.js draws WebGL points above every SVG trace, which hid the numbers.
        layout["annotations"] = [
            {"x": float(x), "y": float(y), "xref": "x", "yref": "y", "text": str(slice_id), "showarrow": False, "font": {"size": 11, "color": "#222"},
             "bgcolor": "rgba(255,255,255,0.7)", "borderpad": 1}
            for slice_id, x, y in zip(data.slice_label_positions.index, data.slice_label_positions["x"], data.slice_label_positions["y"])
        ]
    if options.colour in CONTINUOUS_SCALES:
        scale, title = CONTINUOUS_SCALES[options.colour]
        # As colours, not a name: plotly.js knows only its own scale names, and this layout skips Plotly's validation, which translates them.
        layout["coloraxis"] = {"colorscale": get_colorscale(scale), "cmin": 0, "cmax": 1, "colorbar": {"title": {"text": title}, "tickformat": ".0%", "len": 0.6}}
    elif options.colour == "slice":  # one shared scale, not a copy in each of ~100 traces
        layout["coloraxis"] = {"colorscale": _discrete_scale(SLICE_PALETTE), "cmin": 0, "cmax": len(SLICE_PALETTE) - 1, "showscale": False}
    return layout | {
        # No lasso drag mode: Streamlit turns click-to-select off while one is set; lasso and box stay in the mode bar.
        "height": height, "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "plot_bgcolor": "white",
        "legend": {"title": {"text": "label → prediction"}, "itemsizing": "constant", "orientation": "h", "y": -0.02, "yanchor": "top", "font": {"size": 11}},
        "title": {"text": "● correct   ◆ misclassified" + _drawn_note(len(data.images), in_view, sampled, thinned), "font": {"size": 12}, "x": 0.01},
    }


def _mask(size: int, rows: np.ndarray) -> np.ndarray:
    """A boolean mask of ``rows`` among ``size``: one lookup per cell afterwards, not a search."""
    mask = np.zeros(size, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


def _drawn_note(n_points: int, in_view: np.ndarray | None, sampled: np.ndarray | None, thinned: bool) -> str:
    if in_view is not None:
        shown = f"{len(sampled):,} of the {len(in_view):,} points in view drawn" if thinned else f"all {len(in_view):,} points in view"
        return f"   ·   zoomed: {shown} (of {n_points:,})"
    return f"   ·   {len(sampled):,} of {n_points:,} points drawn" if thinned else ""


def _legend_proxy(label: str, prediction: str, count: int) -> dict:
    correct = label == prediction
    return {
        "type": "scattergl", "x": [None], "y": [None], "mode": "markers", "name": f"{label} → {prediction} ({count:,})",
        "legendgroup": f"{label}|{prediction}", "hoverinfo": "skip",
        "marker": {"size": 7 if correct else 9, "symbol": "circle" if correct else "diamond", "color": "#9aa0a6"},
    }


# A slice number is drawn only this far (a share of the layout's larger side) from every number already drawn.
LABEL_MIN_GAP = 0.06


def readable_slice_labels(layout: np.ndarray, slice_ids: np.ndarray, min_gap: float = LABEL_MIN_GAP) -> pd.DataFrame:
    """Where to write slice numbers (x, y indexed by slice id) so that none overlaps another: each slice's median
    point, the largest slices first; a slice whose number would land on one already placed is left unnumbered
    (its hover still names it)."""
    frame = pd.DataFrame({"x": layout[:, 0], "y": layout[:, 1], "slice": slice_ids})
    centres = frame.groupby("slice")[["x", "y"]].median()
    by_size = frame.groupby("slice").size().sort_values(ascending=False, kind="stable").index
    points = centres.loc[by_size].to_numpy()
    gap = min_gap * float(max(np.ptp(layout[:, 0]), np.ptp(layout[:, 1]), 1e-12))
    # Greedy in size order: each number must clear every number already kept (a few hundred slices at most).
    kept = np.zeros(len(points), dtype=bool)
    for index, point in enumerate(points):
        kept[index] = not (np.hypot(*(points[kept] - point).T) < gap).any()
    return centres.loc[sorted(by_size[kept])]


def _density(points: np.ndarray) -> go.Histogram2dContour:
    return go.Histogram2dContour(
        x=points[:, 0], y=points[:, 1], ncontours=8, contours={"coloring": "none"}, line={"color": "rgba(60,60,60,0.45)", "width": 1},
        showscale=False, hoverinfo="skip", showlegend=False,
    )


def slice_hull_traces(layout: np.ndarray, slice_ids: np.ndarray, slices: tuple[int, ...]) -> list[go.Scattergl]:
    """The picked slices' outlines, WebGL like the points and after them: plotly.js draws every SVG trace under the
    WebGL ones, where an outline was lost among dense points."""
    return [go.Scattergl(
        x=outline[:, 0], y=outline[:, 1], mode="lines", line={"color": "#222", "width": 1.5, "dash": "dot"},
        fill="toself", fillcolor="rgba(0,0,0,0.04)", hoverinfo="skip", showlegend=False, name=f"slice {slice_id}",
    ) for slice_id, islands in slice_hulls(layout, slice_ids, slices).items() for outline in islands]


def png_data_uri(rgba: np.ndarray) -> str:
    buffer = BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _tile_hover(slice_id: int, metrics: pd.Series, in_cell: int | None = None) -> str:
    """A tile's hover text: the slice, its size and accuracy, and its dominant label → prediction."""
    here = "" if in_cell is None else f" ({in_cell} in this cell)"
    spurious = f" · spuriousness {metrics['spuriousness']:.0%}" if pd.notna(metrics.get("spuriousness", np.nan)) else ""
    return (f"<b>Slice {slice_id}</b> · {plural(metrics['size'], 'image')}{here}<br>accuracy {metrics['accuracy']:.0%}{spurious}"
            f"<br>mostly {metrics['dominant_label']} → {metrics['dominant_prediction']}")


def _tile_colour(value: float, metric: str) -> str:
    return UNKNOWN_COLOUR if np.isnan(value) else sample_colorscale(CONTINUOUS_SCALES[metric][0], float(value))[0]


def _add_tiles(figure: go.Figure, mosaic: Mosaic, metrics: pd.DataFrame, picked: list[int], hover: list[str], place: dict, metric: str) -> None:
    """Each tile's inversion as a layout image, its outline coloured by ``metric``, and a numbered marker.

    The marker at the tile's centre carries the hover text and the slice id
    (``customdata``) that a click or box selection picks.
    """
    for slice_id, polygon, box, image in zip(mosaic.slice_ids, mosaic.polygons, mosaic.boxes, mosaic.images):
        if len(polygon) < 3:
            continue
        x_min, y_min, x_max, y_max = box
        figure.add_layout_image(
            source=png_data_uri(image), xref="x", yref="y", x=x_min, y=y_max, sizex=x_max - x_min, sizey=y_max - y_min,
            xanchor="left", yanchor="top", sizing="stretch", layer="below", **place,
        )
        outline = np.vstack([polygon, polygon[:1]])
        figure.add_trace(go.Scatter(
            x=outline[:, 0], y=outline[:, 1], mode="lines", hoverinfo="skip", showlegend=False,
            line={"color": _tile_colour(metrics.at[slice_id, TILE_METRICS[metric]], metric), "width": 5 if slice_id in picked else 2.5},
        ), **place)
    # Polygon vertex means: tiles are convex, so the mean lies inside.
    centres = np.array([p.mean(axis=0) if len(p) else (np.nan, np.nan) for p in mosaic.polygons])
    figure.add_trace(go.Scatter(
        x=centres[:, 0], y=centres[:, 1], mode="markers+text", text=[str(s) for s in mosaic.slice_ids], textfont={"color": "white", "size": 10},
        customdata=np.array(mosaic.slice_ids)[:, None], hovertext=hover, hoverinfo="text", showlegend=False,
        marker={"size": 16, "color": metrics.loc[mosaic.slice_ids, TILE_METRICS[metric]].to_numpy(), "coloraxis": "coloraxis", "opacity": 0.85},
    ), **place)


def _mosaic_layout(figure: go.Figure, title: str, height: int, metric: str) -> None:
    """Axes, colour bar and title shared by both mosaics.

    No ``dragmode``: Streamlit turns click-to-select off while the drag mode is
    box or lasso, and a click on a tile's number is how a tile is picked. Box
    selection stays one click away in the mode bar.
    """
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_annotations(font_size=12)
    figure.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="white",
        coloraxis={"colorscale": CONTINUOUS_SCALES[metric][0], "cmin": 0, "cmax": 1, "colorbar": {"title": CONTINUOUS_SCALES[metric][1], "tickformat": ".0%", "len": 0.6}},
        title={"text": title, "font": {"size": 12}, "x": 0.01},
    )


def mosaic_figure(mosaic: Mosaic, table: pd.DataFrame, picked: list[int], metric: str = "accuracy") -> go.Figure:
    """The Data Slice Mosaic: each slice's tile filled with its feature inversion, borders coloured by ``metric``."""
    metrics = table.set_index("slice")
    figure = go.Figure()
    _add_tiles(figure, mosaic, metrics, picked, [_tile_hover(s, metrics.loc[s]) for s in mosaic.slice_ids], {}, metric)
    _mosaic_layout(figure, f"Data Slice Mosaic · border: {CONTINUOUS_SCALES[metric][1]} · click a tile's number to select it", 620, metric)
    figure.update_yaxes(scaleanchor="x")
    return figure


def cell_mosaic_figure(cells: list[CellMosaic], table: pd.DataFrame, picked: list[int], classes: list[str], metric: str = "accuracy") -> go.Figure:
    """The Data Slice Mosaic split by confusion cell (paper Fig. 1 E), in the scatter's grid of cells titled in words.

    Each cell is drawn on axes of its own, fitted to its tiles: a cell's images
    often fill a small corner of the whole layout, and on shared axes its tiles
    would be a blob too small to read.
    """
    metrics = table.set_index("slice")
    shown = pd.DataFrame({"label": [c.label for c in cells], "prediction": [c.prediction for c in cells]})
    shown["title"] = [cell_title(c.label, c.prediction) for c in cells]
    positions, figure, height, _ = _cell_grid(shown, classes)
    for cell in cells:
        row, col = positions[(cell.label, cell.prediction)]
        hover = [_tile_hover(s, metrics.loc[s], int(n)) for s, n in zip(cell.mosaic.slice_ids, cell.counts)]
        _add_tiles(figure, cell.mosaic, metrics, picked, hover, {"row": row, "col": col}, metric)
        boxes = cell.mosaic.boxes
        low, high = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
        pad = 0.03 * float(max(high - low))
        figure.update_xaxes(range=[low[0] - pad, high[0] + pad], matches=None, row=row, col=col)
        figure.update_yaxes(range=[low[1] - pad, high[1] + pad], matches=None, row=row, col=col)
    _mosaic_layout(figure, f"Data Slice Mosaic per confusion-matrix cell · border: {CONTINUOUS_SCALES[metric][1]} · click a tile's number to select its slice", height, metric)
    return figure


def thumbnail_scatter(data: ScatterData, options: ScatterOptions, rows: np.ndarray, thumbnails: list[str]) -> alt.Chart:
    """The scatter as a Vega-Lite chart whose hover shows each image's thumbnail.

    Plotly's hover labels cannot hold images (plotly.js#1323); Vega-Lite's
    tooltip draws a field named ``image`` as a picture. It draws SVG, so this
    view is for the few thousand points a thumbnail per point allows; the
    Plotly scatter stays the view for large workspaces.
    """
    images = data.images.iloc[rows]
    frame = pd.DataFrame({
        "row": rows, "x": data.layout[rows, 0], "y": data.layout[rows, 1], "image": thumbnails,
        "what": [cell_title(label, prediction) for label, prediction in zip(images["label"], images["prediction"])],
        "confidence": images["confidence"].to_numpy(), "slice": data.slice_ids[rows],
        "outcome": np.where(images["correct"].to_numpy(), "correct", "misclassified"),
        "label": images["label"].to_numpy(), "prediction": images["prediction"].to_numpy(),
        "highlighted": np.ones(len(rows), bool) if options.highlighted is None else np.isin(rows, options.highlighted),
    })
    if options.colour in ("accuracy", "spuriousness"):
        frame["value"] = (data.slice_accuracy if options.colour == "accuracy" else data.slice_spuriousness)[rows]
    colour = {
        "slice": alt.Color("slice:N", legend=None, scale=alt.Scale(range=SLICE_PALETTE)),
        "classes": alt.Color("label:N", title="label (fill)", scale=alt.Scale(range=CLASS_PALETTE)),
        "correct": alt.Color("outcome:N", title=None, scale=alt.Scale(domain=["misclassified", "correct"], range=CORRECT_COLOURS)),
        "confidence": alt.Color("confidence:Q", title="confidence", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
        "accuracy": alt.Color("value:Q", title="slice accuracy", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1])),
        "spuriousness": alt.Color("value:Q", title="spuriousness", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1], reverse=True)),
    }[options.colour]
    stroke = alt.Stroke("prediction:N", title="prediction (border)", scale=alt.Scale(range=CLASS_PALETTE)) if options.colour == "classes" else alt.value(None)
    picked = alt.selection_point(name="picked", fields=["row"], on="click")
    brush = alt.selection_interval(name="brush")
    return (
        alt.Chart(frame)
        .mark_point(filled=True, size=60, strokeWidth=2)
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False)),
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False)),
            color=colour,
            stroke=stroke,
            shape=alt.Shape("outcome:N", title=None, scale=alt.Scale(domain=["correct", "misclassified"], range=["circle", "diamond"])),
            opacity=alt.condition("datum.highlighted", alt.value(0.9), alt.value(DIMMED_OPACITY)),
            tooltip=[
                alt.Tooltip("image:N"), alt.Tooltip("what:N", title="cell"),
                alt.Tooltip("confidence:Q", format=".0%"), alt.Tooltip("slice:Q"),
            ],
        )
        .add_params(picked, brush)
        .properties(height=560, title="● correct  ◆ misclassified · hover: image · click or drag: select")
    )
