"""Mosaic tiles: a true partition of the 2-D layout, one tile per slice.

AttributionScanner draws each slice over its convex hull, and hulls overlap
wherever clusters interleave in 2-D. We tile instead with the Voronoi diagram of
the slices' medoids clipped to the convex hull of all points: tiles never
overlap, together they cover the data's hull exactly, and each contains its
slice's medoid (a real member, so the tile sits where the slice lives).

scipy's ``Voronoi`` returns unbounded regions and does no clipping (and shapely
is not a dependency), so each tile is computed directly as the hull polygon
clipped by the perpendicular-bisector half-planes towards every other medoid
(Sutherland–Hodgman). With k ≤ a few hundred slices that is k² cheap clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import SliceScopeError

MEDOID_SAMPLE = 2000  # members used to find a medoid; exact below this size


@dataclass(frozen=True)
class Tile:
    slice_id: int
    medoid: np.ndarray  # (2,) the member the tile is built around
    polygon: np.ndarray  # M × 2, counter-clockwise, not closed

    @property
    def area(self) -> float:
        return polygon_area(self.polygon)


def polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def slice_medoids(layout: np.ndarray, slice_ids: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """Per slice, the member whose summed distance to the other members is smallest."""
    rng = np.random.default_rng(seed)
    medoids = {}
    for slice_id in np.unique(slice_ids):
        points = np.asarray(layout[slice_ids == slice_id], dtype=np.float64)
        candidates = points if len(points) <= MEDOID_SAMPLE else points[rng.choice(len(points), MEDOID_SAMPLE, replace=False)]
        distances = np.linalg.norm(candidates[:, None, :] - candidates[None, :, :], axis=2).sum(axis=1)
        medoids[int(slice_id)] = candidates[int(np.argmin(distances))]
    return medoids


def _clip(polygon: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """The part of a convex polygon where ``normal · x <= offset``."""
    if len(polygon) == 0:
        return polygon
    side = polygon @ normal - offset
    kept = []
    for i in range(len(polygon)):
        current, following = polygon[i], polygon[(i + 1) % len(polygon)]
        side_current, side_following = side[i], side[(i + 1) % len(polygon)]
        if side_current <= 0:
            kept.append(current)
        if (side_current < 0 < side_following) or (side_following < 0 < side_current):
            t = side_current / (side_current - side_following)
            kept.append(current + t * (following - current))
    return np.array(kept).reshape(-1, 2)


def mosaic_tiles(layout: np.ndarray, slice_ids: np.ndarray, seed: int = 0) -> list[Tile]:
    """One non-overlapping tile per slice, covering the convex hull of ``layout``."""
    from scipy.spatial import ConvexHull, QhullError

    layout = np.asarray(layout, dtype=np.float64)
    if len(layout) < 3:
        raise SliceScopeError(f"a mosaic needs at least 3 images, the layout has {len(layout)}", "scan more images")
    try:
        hull = ConvexHull(layout)
    except QhullError:
        raise SliceScopeError("the 2-D layout is degenerate (all points on a line)", "recompute the layout with other UMAP settings") from None
    boundary = layout[hull.vertices]  # counter-clockwise
    medoids = slice_medoids(layout, slice_ids, seed)
    ids = sorted(medoids)
    sites = np.array([medoids[i] for i in ids])
    tiles = []
    for index, slice_id in enumerate(ids):
        polygon = boundary
        for other in range(len(ids)):
            if other == index:
                continue
            normal = sites[other] - sites[index]
            if not normal.any():
                # Two slices share a medoid position: split their tile by slice id
                # order so the tiles still do not overlap.
                if other < index:
                    polygon = polygon[:0]
                continue
            polygon = _clip(polygon, normal, float(normal @ (sites[index] + sites[other]) / 2))
        tiles.append(Tile(slice_id, sites[index], polygon))
    return tiles
