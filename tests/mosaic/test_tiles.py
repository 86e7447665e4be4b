"""Mosaic tiles partition a square: no overlaps, full cover, readable sizes, neighbourhoods kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from core.errors import SliceScopeError
from core.mosaic import mosaic_tiles, polygon_area, power_cells, slice_medoids


def inside(polygon: np.ndarray, points: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """Points inside a convex counter-clockwise polygon (strictly, for a positive tolerance)."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    relative = points[:, None, :] - polygon[None, :, :]
    cross = edges[None, :, 0] * relative[:, :, 1] - edges[None, :, 1] * relative[:, :, 0]
    return (cross > tolerance).all(axis=1)


@pytest.fixture
def interleaved() -> tuple[np.ndarray, np.ndarray]:
    """Three clusters, two of them interleaved so that their convex hulls overlap."""
    rng = np.random.default_rng(0)
    ring = rng.normal(size=(200, 2))
    ring = 4 * ring / np.linalg.norm(ring, axis=1, keepdims=True)
    centre = rng.normal(scale=0.8, size=(150, 2))
    far = rng.normal(loc=(10, 0), size=(100, 2))
    layout = np.vstack([ring, centre, far])
    slice_ids = np.array([0] * 200 + [1] * 150 + [2] * 100)
    return layout, slice_ids


def test_tiles_partition_the_square(interleaved):
    layout, slice_ids = interleaved
    tiles = mosaic_tiles(layout, slice_ids)
    assert [t.slice_id for t in tiles] == [0, 1, 2]
    assert sum(t.area for t in tiles) == pytest.approx(1.0, rel=1e-9)
    assert all(t.area > 0 for t in tiles)

    samples = np.random.default_rng(1).uniform(0, 1, size=(20000, 2))
    membership = np.stack([inside(t.polygon, samples) for t in tiles])
    assert membership.sum(axis=0).max() <= 1  # no point in two tiles
    assert membership.any(axis=0).mean() > 0.999  # and every point in one (up to the edges)


@pytest.fixture
def crowded() -> tuple[np.ndarray, np.ndarray]:
    """Twenty small slices crowded into one corner of the layout and five large ones spread over the rest:
    the demo's UMAP in miniature, where Voronoi cells of the medoids came out as slivers."""
    rng = np.random.default_rng(2)
    corner = [rng.normal(loc=rng.uniform(0, 1, size=2), scale=0.1, size=(30, 2)) for _ in range(20)]
    spread = [rng.normal(loc=centre, scale=1.0, size=(200, 2)) for centre in [(20, 0), (40, 0), (20, 20), (40, 20), (30, 40)]]
    layout = np.vstack(corner + spread)
    slice_ids = np.repeat(np.arange(25), [30] * 20 + [200] * 5)
    return layout, slice_ids


def _shares(tiles, slice_ids) -> np.ndarray:
    sizes = np.bincount(slice_ids)[[t.slice_id for t in tiles]]
    return np.array([t.area for t in tiles]) / (np.sqrt(sizes) / np.sqrt(sizes).sum())


def test_crowded_slices_get_readable_tiles(crowded):
    layout, slice_ids = crowded
    medoids = slice_medoids(layout, slice_ids)
    sites = np.array([medoids[i] for i in range(25)])
    hull = layout[ConvexHull(layout).vertices]
    voronoi = power_cells(hull, sites, np.zeros(25))
    voronoi_shares = np.array([polygon_area(c) for c in voronoi]) / ConvexHull(layout).volume / (np.sqrt(np.bincount(slice_ids)) / np.sqrt(np.bincount(slice_ids)).sum())
    assert (voronoi_shares < 0.3).sum() >= 15  # the problem: medoid Voronoi cells of the crowded corner are slivers

    shares = _shares(mosaic_tiles(layout, slice_ids), slice_ids)
    assert shares.min() > 0.4 and shares.max() < 2.5


def test_tiles_keep_the_layout_neighbourhoods(crowded):
    layout, slice_ids = crowded
    centres = {t.slice_id: t.polygon.mean(axis=0) for t in mosaic_tiles(layout, slice_ids)}
    corner = np.array([centres[i] for i in range(20)])
    # The crowded corner (bottom left in the layout) stays together in the bottom left of the square ...
    assert corner.mean(axis=0)[0] < 0.5 and corner.mean(axis=0)[1] < 0.5
    # ... and the large slices keep their order: left of right, bottom of top.
    assert centres[20][0] < centres[21][0] and centres[22][0] < centres[23][0]
    assert centres[20][1] < centres[22][1] and centres[21][1] < centres[23][1] and centres[22][1] < centres[24][1]


def test_medoid_is_a_member_minimising_distance(interleaved):
    layout, slice_ids = interleaved
    medoids = slice_medoids(layout, slice_ids)
    for slice_id, medoid in medoids.items():
        members = layout[slice_ids == slice_id]
        assert (np.isclose(members, medoid).all(axis=1)).any()
        costs = np.linalg.norm(members[:, None] - members[None], axis=2).sum(axis=1)
        assert np.linalg.norm(members - medoid, axis=1).argmin() == costs.argmin()


def test_polygon_area_of_a_unit_square():
    assert polygon_area(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)) == pytest.approx(1.0)


def test_degenerate_layouts_are_refused_kindly():
    with pytest.raises(SliceScopeError, match="at least 3"):
        mosaic_tiles(np.zeros((2, 2)), np.array([0, 1]))
    with pytest.raises(SliceScopeError, match="on a line"):
        mosaic_tiles(np.column_stack([np.arange(5.0), np.arange(5.0)]), np.arange(5))
