"""The scatter's legend and slice numbers (issue 16, item 4): entries that mean what their title says, numbers that never overlap."""

import numpy as np
import pandas as pd

from app.figures import ScatterData, ScatterOptions, readable_slice_labels, scatter_figure


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
    assert (gaps[np.triu_indices(len(points), 1)] >= 0.035 * extent).all()
