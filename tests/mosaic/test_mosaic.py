"""The mosaic jobs: one inverted picture per slice tile (per confusion cell too), computed once and stored in the workspace."""

from __future__ import annotations

import numpy as np
import pytest

import core.mosaic.build
from core.demo import workspace_dir
from core.mosaic import (
    CELL_MAX_TILES,
    CELL_MIN_MEMBERS,
    InversionParams,
    build_cell_mosaics,
    build_mosaic,
    invert_features,
    is_cell_mosaics_built,
    mosaic_tiles,
    polygon_area,
    tile_mask,
)
from core.slicing import SliceParams, find_slices, project
from core.views import confusion_cells, split_view_cells
from core.workspace import Workspace
from tests.mosaic.test_tiles import inside


def test_mosaic_is_built_once_and_transparent_outside_its_tiles(tiny_demo):
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    params = InversionParams(steps=8)
    mosaic = build_mosaic(workspace, SliceParams(k=4), inversion_params=params)
    assert sorted(mosaic.slice_ids) == [0, 1, 2, 3]
    assert mosaic.images.shape == (4, 64, 64, 4)
    for polygon, box, image in zip(mosaic.polygons, mosaic.boxes, mosaic.images):
        mask = tile_mask(polygon, box, 64)
        assert np.array_equal(image[..., 3] > 0, mask > 0)
        assert image[..., :3][mask == 0].max() == 0
    stored = sorted((workspace.path / "derived").glob("mosaic-*.npy"))
    assert stored
    stamp = stored[-1].stat().st_mtime_ns
    again = build_mosaic(workspace, SliceParams(k=4), inversion_params=params)
    assert np.array_equal(again.images, mosaic.images)
    assert stored[-1].stat().st_mtime_ns == stamp  # read back, not recomputed


def test_tile_mask_fills_a_triangle_by_half():
    triangle = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mask = tile_mask(triangle, np.array([0.0, 0.0, 1.0, 1.0]), 64)
    assert abs(mask.mean() - 0.5) < 0.05
    assert mask[-1, 0] == 1.0 and mask[0, -1] == 0.0  # (0, 0) is the bottom-left pixel


@pytest.fixture
def inversions(monkeypatch) -> list[np.ndarray]:
    """The targets of every feature inversion the mosaic jobs run (they still run)."""
    calls = []

    def recording(model, targets, *args, **kwargs):
        calls.append(np.asarray(targets))
        return invert_features(model, targets, *args, **kwargs)

    monkeypatch.setattr(core.mosaic.build, "invert_features", recording)
    return calls


def test_cell_mosaics_tile_each_cell_by_slice_with_one_batched_inversion(tiny_demo, inversions):
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    slicing, params = SliceParams(k=4), InversionParams(steps=4)
    assert not is_cell_mosaics_built(workspace, slicing, inversion_params=params)
    cells = build_cell_mosaics(workspace, slicing, inversion_params=params)
    assert cells and is_cell_mosaics_built(workspace, slicing, inversion_params=params)

    slice_ids = find_slices(workspace, "attribution", slicing)
    layout = project(workspace, "attribution")
    images = workspace.images
    features = np.asarray(workspace.array("attribution_features"), dtype=np.float32)
    shown = split_view_cells(confusion_cells(images), len(workspace.classes))
    assert {(c.label, c.prediction) for c in cells} <= set(zip(shown["label"], shown["prediction"]))

    assert len(inversions) == 1  # every tile of every cell in one batch
    targets = iter(inversions[0])
    samples = np.random.default_rng(0).uniform(0, 1, size=(20000, 2))
    for cell in cells:
        mosaic = cell.mosaic
        in_cell = np.flatnonzero((images["label"] == cell.label).to_numpy() & (images["prediction"] == cell.prediction).to_numpy())
        assert 0 < len(mosaic.slice_ids) <= CELL_MAX_TILES
        tiled = in_cell[np.isin(slice_ids[in_cell], mosaic.slice_ids)]
        for slice_id, count in zip(mosaic.slice_ids, cell.counts):
            members = in_cell[slice_ids[in_cell] == slice_id]
            assert count == len(members) >= CELL_MIN_MEMBERS
            assert np.allclose(next(targets), features[members].mean(axis=0), atol=1e-5)  # the slice's mean F_W in this cell
        # Each cell's tiles partition a square of their own: they are laid out from the cell's points alone.
        assert sum(polygon_area(p) for p in mosaic.polygons) == pytest.approx(1.0, rel=1e-6)
        membership = np.stack([inside(p, samples) for p in mosaic.polygons])
        assert membership.sum(axis=0).max() <= 1  # no overlap
        expected = [tile.polygon for tile in mosaic_tiles(layout[tiled], slice_ids[tiled])]
        assert all(np.allclose(a, b) for a, b in zip(mosaic.polygons, expected))
        assert mosaic.images.shape == (len(mosaic.slice_ids), 64, 64, 4)
        for polygon, box, picture in zip(mosaic.polygons, mosaic.boxes, mosaic.images):
            assert np.array_equal(picture[..., 3] > 0, tile_mask(polygon, box, 64) > 0)
    assert next(targets, None) is None

    again = build_cell_mosaics(workspace, slicing, inversion_params=params)
    assert len(inversions) == 1  # read back from the workspace, not optimised again
    assert all(np.array_equal(a.mosaic.images, b.mosaic.images) for a, b in zip(again, cells))
    assert list((workspace.path / "derived").glob("cell-mosaic-*.npy"))


def test_cell_mosaics_keep_only_the_largest_slices_of_a_cell(tiny_demo, inversions, monkeypatch):
    monkeypatch.setattr(core.mosaic.build, "CELL_MAX_TILES", 1)
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    slice_ids = find_slices(workspace, "attribution", SliceParams(k=4))
    images = workspace.images
    for cell in build_cell_mosaics(workspace, SliceParams(k=4), inversion_params=InversionParams(steps=2)):
        in_cell = slice_ids[(images["label"] == cell.label).to_numpy() & (images["prediction"] == cell.prediction).to_numpy()]
        assert cell.mosaic.slice_ids == [int(np.bincount(in_cell).argmax())]
        assert list(cell.counts) == [np.bincount(in_cell).max()]
