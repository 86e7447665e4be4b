"""The data behind the analyst views: cells in words, selections, ordering, hulls, export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import Delaunay

from core.views import (
    EXPORT_COLUMNS,
    GRID_MAX_CELLS,
    MATRIX_MAX_CLASSES,
    cell_title,
    confusion_cells,
    export_frame,
    in_cell,
    members,
    order_members,
    slice_hulls,
    slices_of,
    split_view_cells,
    typical_members,
    version_label,
)


@pytest.fixture
def images() -> pd.DataFrame:
    labels = ["cat", "cat", "dog", "dog", "dog", "bird"]
    predictions = ["cat", "dog", "dog", "cat", "cat", "bird"]
    return pd.DataFrame({
        "image_id": [f"id{i}" for i in range(6)],
        "path": [f"img/{i}.png" for i in range(6)],
        "label": labels,
        "prediction": predictions,
        "confidence": [0.9, 0.6, 0.8, 0.7, 0.95, 0.5],
        "loss": [0.1, 1.2, 0.2, 1.5, 3.0, 0.7],
        "correct": [label == prediction for label, prediction in zip(labels, predictions)],
    })


def test_cells_are_named_in_words_correct_cells_first(images):
    cells = confusion_cells(images)
    assert cell_title("dog", "cat") == "label: dog · prediction: cat"
    assert list(cells["correct"]) == [True, True, True, False, False]
    errors = cells[~cells["correct"]]
    assert list(errors["title"]) == ["label: dog · prediction: cat", "label: cat · prediction: dog"]
    assert list(errors["count"]) == [2, 1]
    assert cells["count"].sum() == len(images)


def test_cells_among_chosen_rows_only(images):
    cells = confusion_cells(images, rows=[3, 4, 5])
    assert dict(zip(cells["title"], cells["count"])) == {"label: bird · prediction: bird": 1, "label: dog · prediction: cat": 2}


def test_split_views_show_a_full_matrix_for_few_classes_else_the_first_cells():
    classes = [f"c{i}" for i in range(MATRIX_MAX_CLASSES + 1)]
    labels = [a for a in classes for b in classes]
    many = pd.DataFrame({"label": labels, "prediction": [b for a in classes for b in classes]})
    cells = confusion_cells(many)
    assert len(split_view_cells(cells, MATRIX_MAX_CLASSES)) == len(cells)
    shown = split_view_cells(cells, len(classes))
    assert len(shown) == GRID_MAX_CELLS
    assert shown.equals(cells.head(GRID_MAX_CELLS))  # correct cells first, then errors by size


def test_typical_members_are_the_slice_members_nearest_its_centroid():
    # Slice 1: a tight group around (10, 0) and one outlier; slice 0 sits nearer that centroid but is not a member.
    features = np.array([[9.9, 0.0], [10.0, 0.1], [10.1, 0.0], [20.0, 0.0], [12.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    slice_ids = np.array([1, 1, 1, 1, 0, 0])
    centroid = features[:4].mean(axis=0)
    typical = typical_members(features, slice_ids, 1, 3)
    assert set(typical) == {0, 1, 2}
    distances = np.linalg.norm(features[typical] - centroid, axis=1)
    assert list(distances) == sorted(distances)  # closest first
    assert list(typical_members(features, slice_ids, 1, 10)) == [*typical, 3]  # n beyond the slice: all members


def test_members_and_their_slices_round_trip():
    slice_ids = np.array([2, 0, 2, 1, 0, 2])
    assert list(members(slice_ids, [2])) == [0, 2, 5]
    assert list(members(slice_ids, [0, 1])) == [1, 3, 4]
    assert slices_of(slice_ids, [5, 3]) == [1, 2]
    assert slices_of(slice_ids, []) == []


def test_order_members(images):
    rows = [0, 1, 3, 4]
    assert list(order_members(images, rows, "confidence_desc")) == [4, 0, 3, 1]
    assert list(order_members(images, rows, "confidence_asc")) == [1, 3, 0, 4]
    assert list(order_members(images, rows, "loss_desc")) == [4, 3, 1, 0]
    with pytest.raises(ValueError, match="unknown order"):
        order_members(images, rows, "random")


def test_in_cell_keeps_only_that_label_and_prediction(images):
    assert list(in_cell(images, range(6), "dog", "cat")) == [3, 4]
    assert list(in_cell(images, [0, 1, 2], "dog", "cat")) == []


def test_hulls_enclose_their_slice_and_skip_degenerate_ones():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(40, 2))
    line = np.column_stack([np.arange(5.0), np.arange(5.0)])  # collinear: no area
    pair = np.array([[9.0, 9.0], [9.5, 9.0]])
    layout = np.vstack([cloud, line, pair])
    slice_ids = np.array([0] * 40 + [1] * 5 + [2] * 2)
    hulls = slice_hulls(layout, slice_ids, [0, 1, 2])
    assert set(hulls) == {0} and len(hulls[0]) == 1
    outline = hulls[0][0]
    assert np.array_equal(outline[0], outline[-1])  # closed
    inside = Delaunay(outline[:-1]).find_simplex(cloud) >= 0
    assert inside.all()


def test_a_slice_on_two_islands_gets_an_outline_around_each_not_across_the_gap():
    rng = np.random.default_rng(1)
    left, right = rng.normal(size=(50, 2)) * 0.3, rng.normal(size=(30, 2)) * 0.3 + [10.0, 0.0]
    between = rng.normal(size=(20, 2)) * 0.3 + [5.0, 0.0]  # another slice, in the gap
    layout = np.vstack([left, right, between])
    slice_ids = np.array([0] * 80 + [1] * 20)
    outlines = slice_hulls(layout, slice_ids, [0])[0]
    assert len(outlines) == 2
    for island in (left, right):
        assert sum((Delaunay(outline[:-1]).find_simplex(island) >= 0).all() for outline in outlines) == 1
    assert not any((Delaunay(outline[:-1]).find_simplex(between) >= 0).any() for outline in outlines)


def test_export_has_the_promised_columns(images):
    slice_ids = np.array([4, 4, 1, 3, 3, 1])
    exported = export_frame(images, [3, 4], slice_ids)
    assert list(exported.columns) == EXPORT_COLUMNS
    assert list(exported["image_id"]) == ["id3", "id4"]
    assert list(exported["slice"]) == [3, 3]
    assert list(exported["prediction"]) == ["cat", "cat"]


@pytest.mark.parametrize("value, text", [(294818.1905, "295,000"), (-3012.4, "−3,010"), (0.012345, "0.0123"), (7.0, "7.00"), (0.0, "0")])
def test_numbers_are_written_for_people(value, text):
    from core.views import readable_number

    assert readable_number(value) == text


@pytest.mark.parametrize("count, text", [(1, "1 image"), (2, "2 images"), (0, "0 images"), (12345, "12,345 images")])
def test_counts_agree_with_their_noun(count, text):
    from core.views import plural

    assert plural(count, "image") == text
    assert plural(1, "box", "boxes") == "1 box" and plural(3, "box", "boxes") == "3 boxes"


@pytest.mark.parametrize(("version", "name", "label"), [
    (1, "demo · biased model", "v1 · demo · biased model"),
    (2, "demo · biased model · v2", "v2 · demo · biased model"),  # a mitigated version's name already says v2
    (12, "demo · v1", "v12 · demo · v1"),
])
def test_a_version_is_named_once(version, name, label):
    assert version_label(version, name) == label
