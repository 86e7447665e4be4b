"""The scatter's legend and slice numbers (issue 16, item 4): entries that mean what their title says, numbers that never overlap."""

import base64

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app.figures import LABEL_MIN_GAP, ScatterData, ScatterOptions, cell_mosaic_figure, readable_slice_labels, rows_in_box, scatter_figure
from core.mosaic import CellMosaic, Mosaic


def scatter_data(seed: int = 0) -> ScatterData:
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.choice(["circle", "star"], n)
    predictions = np.where(rng.random(n) < 0.8, labels, np.where(labels == "circle", "star", "circle"))
    slice_ids = rng.integers(0, 12, n)
    return ScatterData(
        layout=rng.normal(size=(n, 2)) + slice_ids[:, None] * 0.5,
        images=pd.DataFrame({"label": labels, "prediction": predictions, "confidence": rng.random(n)}),
        slice_ids=slice_ids, slice_accuracy=rng.random(n), classes=["circle", "star"],
    )


def values(array) -> np.ndarray:
    """A trace's numbers, from a plain array or from the typed-array spec (dtype, base64 bytes, shape) the scatter hands Plotly."""
    if not isinstance(array, dict):
        return np.asarray(array)
    flat = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]).newbyteorder("<"))
    return flat.reshape([int(n) for n in array["shape"].split(",")]) if "shape" in array else flat


def legend_entries(figure):
    return [trace for trace in figure.data if trace.showlegend is not False and trace.name]


def test_slice_colours_stay_out_of_the_label_prediction_legend():
    figure = scatter_figure(scatter_data(), ScatterOptions(colour="slice"))
    entries = legend_entries(figure)
    assert {entry.name.split(" (")[0] for entry in entries} == {"circle → circle", "circle → star", "star → circle", "star → star"}
    assert {entry.marker.color for entry in entries} == {"#9aa0a6"}  # neutral: a slice colour would mean nothing here
    assert {entry.marker.symbol for entry in entries if "circle → star" in entry.name} == {"diamond"}
    # Each proxy shares its cell's legend group, so clicking the entry still hides the cell's points.
    groups = {trace.legendgroup for trace in figure.data if trace.legendgroup}
    assert {entry.legendgroup for entry in entries} == groups


def test_class_colours_are_their_own_legend():
    figure = scatter_figure(scatter_data(), ScatterOptions(colour="classes"))
    entries = legend_entries(figure)
    assert len(entries) == 4 and all(entry.x is not None and len(entry.x) for entry in entries)


def test_slice_numbers_never_overlap_and_the_largest_slice_keeps_its_number():
    layout = np.array([[0.0, 0.0]] * 30 + [[0.01, 0.0]] * 10 + [[10.0, 10.0]] * 5)
    slice_ids = np.array([0] * 30 + [1] * 10 + [2] * 5)
    placed = readable_slice_labels(layout, slice_ids)
    assert list(placed.index) == [0, 2]  # slice 1 sits on slice 0: only the larger is numbered
    data = scatter_data()
    points = readable_slice_labels(data.layout, data.slice_ids).to_numpy()
    gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    extent = max(np.ptp(data.layout, axis=0))
    assert (gaps[np.triu_indices(len(points), 1)] >= LABEL_MIN_GAP * extent).all()


def test_slice_numbers_are_annotations_drawn_above_the_webgl_points():
    """plotly.js draws WebGL traces above every SVG trace: numbers in a text trace sat hidden under the points."""
    data = scatter_data()
    figure = scatter_figure(data, ScatterOptions(colour="slice"))
    placed = readable_slice_labels(data.layout, data.slice_ids)
    numbers = {int(a.text): (a.x, a.y) for a in figure.layout.annotations}
    assert numbers == {int(s): (pytest.approx(x), pytest.approx(y)) for s, x, y in zip(placed.index, placed["x"], placed["y"])}
    assert all(trace.mode != "text" for trace in figure.data if trace.type == "scatter")
    assert not scatter_figure(data, ScatterOptions(colour="slice", slice_labels=False)).layout.annotations


def cell(label: str, prediction: str, offset: float, scale: float) -> CellMosaic:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) * scale + offset
    halves = [square[[0, 1, 2]], square[[0, 2, 3]]]
    boxes = np.array([[*polygon.min(axis=0), *polygon.max(axis=0)] for polygon in halves])
    mosaic = Mosaic(slice_ids=[0, 1], polygons=halves, boxes=boxes, images=np.zeros((2, 8, 8, 4), np.uint8))
    return CellMosaic(label, prediction, mosaic, np.array([3, 4]))


def test_each_confusion_cell_mosaic_is_drawn_on_axes_fitted_to_its_own_tiles():
    table = pd.DataFrame({"slice": [0, 1], "size": [3, 4], "accuracy": [0.5, 1.0], "mean_confidence": [0.7, 0.9],
                          "dominant_label": ["circle", "star"], "dominant_prediction": ["circle", "star"]})
    # One cell's tiles span 10 units, the other's 0.1 in a corner of the layout: each fills its own subplot.
    figure = cell_mosaic_figure([cell("circle", "circle", 0.0, 10.0), cell("star", "star", 9.0, 0.1)], table, [], ["circle", "star"])
    ranges = [(tuple(figure.layout[name].range), figure.layout[name].matches)
              for name in figure.layout if name.startswith("xaxis") and figure.layout[name].range is not None]
    widths = sorted(high - low for (low, high), _ in ranges)
    assert len(widths) == 2 and widths[0] < 0.2 and widths[1] > 9.0 and all(matches is None for _, matches in ranges)


def test_many_points_are_sampled_per_cell_over_a_density_of_all_and_keep_the_highlighted():
    data = scatter_data()
    highlighted = np.array([3, 5, 250])
    figure = scatter_figure(data, ScatterOptions(colour="slice", max_points=60, highlighted=highlighted))
    assert figure.data[0].type == "heatmap"  # the density of every point lies under the sample
    assert np.nansum(np.expm1(np.asarray(figure.data[0].z, dtype=float))) == len(data.images)
    points = [trace for trace in figure.data if trace.type == "scattergl" and trace.customdata is not None]
    drawn = np.concatenate([values(trace.customdata)[:, 0] for trace in points]).astype(int)
    assert len(drawn) < len(data.images) and set(highlighted) <= set(drawn)
    cells = data.images.groupby(["label", "prediction"]).size()
    assert len(points) == len(cells)  # every cell keeps points, however rare
    # Legend counts are the cells' sizes, not the sample's.
    assert {trace.name for trace in legend_entries(figure)} == {f"{a} → {b} ({n:,})" for (a, b), n in cells.items()}
    assert f"of {len(data.images):,} points drawn" in figure.layout.title.text
    everything = scatter_figure(data, ScatterOptions(colour="slice", max_points=0))
    assert all(trace.type != "heatmap" for trace in everything.data)


def drawn_points(figure) -> np.ndarray:
    points = [trace for trace in figure.data if trace.type == "scattergl" and trace.customdata is not None]
    return np.concatenate([values(trace.customdata)[:, 0] for trace in points]).astype(int)


def test_zooming_to_a_box_draws_every_point_in_it_on_its_axes():
    data = scatter_data()
    box = (float(np.quantile(data.layout[:, 0], 0.6)), float(data.layout[:, 0].max()), float(data.layout[:, 1].min()), float(data.layout[:, 1].max()))
    inside = rows_in_box(data.layout, box)
    assert 60 < len(inside) < len(data.images)  # more than the whole map's sample may draw, fewer than all
    whole = scatter_figure(data, ScatterOptions(colour="slice", max_points=60))
    assert len(set(drawn_points(whole)) & set(inside)) < len(inside)
    zoomed = scatter_figure(data, ScatterOptions(colour="slice", max_points=len(inside), view=box))
    assert sorted(drawn_points(zoomed)) == sorted(inside)
    assert all(trace.type != "heatmap" for trace in zoomed.data)  # nothing left out, nothing to shade
    assert tuple(zoomed.layout.xaxis.range) == (box[0], box[1]) and tuple(zoomed.layout.yaxis.range) == (box[2], box[3])
    assert f"all {len(inside):,} points in view" in zoomed.layout.title.text


def test_a_zoomed_box_with_too_many_points_samples_them_over_its_own_density():
    data = scatter_data()
    box = (float(data.layout[:, 0].min()), float(np.median(data.layout[:, 0])), float(data.layout[:, 1].min()), float(data.layout[:, 1].max()))
    inside = rows_in_box(data.layout, box)
    zoomed = scatter_figure(data, ScatterOptions(colour="slice", max_points=40, view=box))
    drawn = drawn_points(zoomed)
    assert set(drawn) <= set(inside) and len(drawn) < len(inside)
    assert zoomed.data[0].type == "heatmap" and np.nansum(np.expm1(np.asarray(zoomed.data[0].z, dtype=float))) == len(inside)
    assert f"of the {len(inside):,} points in view drawn" in zoomed.layout.title.text


def test_confusion_cells_land_on_their_own_subplot_axes():
    data = scatter_data()
    figure = scatter_figure(data, ScatterOptions(colour="correct", confusion=True))
    titles = [annotation.text for annotation in figure.layout.annotations]
    for trace in figure.data:
        if trace.type != "scattergl":
            continue
        rows = values(trace.customdata)[:, 0].astype(int)
        label, prediction = data.images.iloc[rows[0]][["label", "prediction"]]
        index = 1 if trace.xaxis == "x" else int(trace.xaxis[1:])
        assert trace.yaxis == trace.xaxis.replace("x", "y")
        assert titles[index - 1] == f"label: {label} · prediction: {prediction}"


def test_confusion_cells_carry_their_outlines_and_contours_on_their_own_axes():
    data = scatter_data()
    figure = scatter_figure(data, ScatterOptions(colour="slice", confusion=True, density=True, hull_slices=(0, 1, 2)))
    extras = [trace for trace in figure.data if trace.type == "histogram2dcontour" or (trace.name or "").startswith("slice ")]
    assert {trace.type for trace in extras} == {"histogram2dcontour", "scattergl"}
    # The outlines come after every cell's points: WebGL draws them on top.
    points = [index for index, trace in enumerate(figure.data) if trace.type == "scattergl" and trace.customdata is not None]
    assert all(index > max(points) for index, trace in enumerate(figure.data) if (trace.name or "").startswith("slice "))
    cell_axes = {trace.xaxis for trace in figure.data if trace.type == "scattergl" and trace.customdata is not None}
    assert {trace.xaxis for trace in extras} <= cell_axes and len({trace.xaxis for trace in extras}) > 1


@pytest.mark.parametrize("options", [
    ScatterOptions(colour="slice", max_points=60, highlighted=np.array([1, 2, 3]), hull_slices=(0, 1), density=True),
    ScatterOptions(colour="accuracy", view=(-1.0, 2.0, -1.0, 2.0)),
    ScatterOptions(colour="classes", confusion=True, hull_slices=(2,)),
    ScatterOptions(colour="confidence", confusion=True, max_points=40, highlighted=np.array([7])),
])
def test_the_scatter_passes_plotlys_own_validation_and_its_arrays_hold_the_points(options):
    """The figure is built unvalidated for speed: Plotly's validators must still accept every property of it."""
    data = scatter_data()
    figure = scatter_figure(data, options)
    go.Figure(figure.to_plotly_json())  # raises on an unknown property or a malformed typed array
    # Nothing left for validation to translate (a colour scale's name, a title as a string): plotly.js gets what it reads.
    layout = figure.layout.to_plotly_json()
    assert go.Layout(layout).to_plotly_json() == layout
    highlighted = set(options.highlighted.tolist()) if options.highlighted is not None else set()
    point_traces = [trace for trace in figure.data if trace.type == "scattergl" and trace.customdata is not None]
    assert point_traces
    for trace in point_traces:
        rows, slices, confidence = values(trace.customdata).T
        rows = rows.astype(int)
        np.testing.assert_allclose(values(trace.x), data.layout[rows, 0])
        np.testing.assert_allclose(values(trace.y), data.layout[rows, 1])
        np.testing.assert_array_equal(slices, data.slice_ids[rows])
        np.testing.assert_allclose(confidence, data.images["confidence"].to_numpy()[rows])
        if highlighted:
            np.testing.assert_array_equal(values(trace.marker.opacity) == 1.0, np.isin(rows, list(highlighted)))
        if options.colour == "accuracy":
            np.testing.assert_allclose(values(trace.marker.color), data.slice_accuracy[rows])
