"""Mosaic tiles partition the layout: no overlaps, full cover of the hull, medoid inside."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull, Delaunay

from core.errors import SliceScopeError
from core.tiles import mosaic_tiles, polygon_area, slice_medoids


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


def test_tiles_partition_the_hull_and_hold_their_medoids(interleaved):
    layout, slice_ids = interleaved
    tiles = mosaic_tiles(layout, slice_ids)
    assert [t.slice_id for t in tiles] == [0, 1, 2]
    hull_area = ConvexHull(layout).volume
    assert sum(t.area for t in tiles) == pytest.approx(hull_area, rel=1e-9)
    assert all(t.area > 0 for t in tiles)

    samples = np.random.default_rng(1).uniform(layout.min(0), layout.max(0), size=(20000, 2))
    in_hull = Delaunay(layout[ConvexHull(layout).vertices]).find_simplex(samples) >= 0
    membership = np.stack([inside(t.polygon, samples) for t in tiles])
    assert membership.sum(axis=0).max() <= 1  # no point in two tiles
    assert (membership.any(axis=0) <= in_hull).all()  # tiles stay inside the hull
    for tile in tiles:
        assert inside(tile.polygon, tile.medoid[None, :], tolerance=-1e-9).all()  # inside or on the hull's edge


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
