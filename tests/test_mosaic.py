"""The mosaic job: one inverted picture per slice tile, computed once and stored in the workspace."""

from __future__ import annotations

import numpy as np

from core.demo import workspace_dir
from core.inversion import InversionParams
from core.mosaic import build_mosaic, tile_mask
from core.slicing import SliceParams
from core.workspace import Workspace


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
