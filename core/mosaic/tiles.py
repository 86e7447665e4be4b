"""Mosaic tiles: a true partition of a square, one readable tile per slice.

AttributionScanner draws each slice over its convex hull, and hulls overlap
wherever clusters interleave in 2-D. A Voronoi diagram of the slices' medoids
partitions the layout instead, but its cell sizes follow where medoids fall:
on the demo's UMAP 24 of 50 tiles were slivers under 0.3 of their share, packed
where many small slices crowd one island.

So tiles are laid out in two steps (:func:`mosaic_tiles`):

1. *Spread*: a sample of each slice's points (∝ √size) is moved onto a uniform
   grid over the unit square by an optimal assignment (scipy's
   ``linear_sum_assignment`` on squared distances). An optimal transport map is
   cyclically monotone, so neighbouring points stay neighbours while crowded
   regions open up; each slice's site is the centroid of its moved points.
2. *Size*: a power diagram of those sites, its weights raised or lowered a few
   times until each cell's area approaches the slice's √size share of the
   square (the power-diagram update of Aurenhammer et al.'s capacity-constrained
   diagrams, started from a layout that is already nearly balanced, so sites do
   not have to travel and tiles stay where their slice lives).

scipy's ``Voronoi`` has no weights and does no clipping (and shapely is not a
dependency), so each cell is computed directly as the square clipped by the
power bisector half-planes towards every other site (Sutherland–Hodgman). With
k ≤ a few hundred slices that is k² cheap clips per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import SliceScopeError

MEDOID_SAMPLE = 2000  # members used to find a medoid; exact below this size
# Points moved onto the grid: the assignment is cubic in this, about 0.3 s at 1,000 on one core.
SPREAD_BUDGET = 1000
SPREAD_MIN_POINTS = 4  # per slice, so a small slice's centroid is not one stray point
# Power-weight updates: 10 bring the demo's 50 tiles within 0.6–1.6 of their share; more
# balance areas further but pull cells away from their sites.
SIZE_ITERATIONS = 10
SIZE_STEP = 0.5
UNIT_SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # counter-clockwise


@dataclass(frozen=True)
class Tile:
    slice_id: int
    site: np.ndarray  # (2,) the point the tile was grown around, in the square
    polygon: np.ndarray  # M × 2 in the unit square, counter-clockwise, not closed

    @property
    def area(self) -> float:
        return polygon_area(self.polygon)


def polygon_area(polygon: np.ndarray) -> float:
    if len(polygon) < 3:
        return 0.0
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


def power_cells(boundary: np.ndarray, sites: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """The power diagram of weighted ``sites`` clipped to the convex ``boundary``: one polygon per site.

    Cell i is where ``|x − sᵢ|² − wᵢ`` is smallest; with equal weights, the Voronoi diagram.
    """
    squared = (sites**2).sum(axis=1)
    cells = []
    for index in range(len(sites)):
        polygon = boundary
        for other in range(len(sites)):
            if other == index:
                continue
            normal = sites[other] - sites[index]
            if not normal.any():
                # Two slices share a site: split their cell by slice id order so the tiles still do not overlap.
                if other < index:
                    polygon = polygon[:0]
                continue
            offset = (squared[other] - squared[index] + weights[index] - weights[other]) / 2
            polygon = _clip(polygon, normal, float(offset))
        cells.append(polygon)
    return cells


def _spread_sites(layout: np.ndarray, slice_ids: np.ndarray, ids: np.ndarray, sizes: np.ndarray, seed: int) -> np.ndarray:
    """Per slice, the centroid of its sampled points after their optimal assignment onto a uniform grid of the unit square."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(seed)
    quota = np.round(np.sqrt(sizes) / np.sqrt(sizes).sum() * SPREAD_BUDGET).astype(int)
    quota = np.minimum(np.maximum(quota, SPREAD_MIN_POINTS), sizes)
    rows = [rng.choice(np.flatnonzero(slice_ids == slice_id), count, replace=False) for slice_id, count in zip(ids, quota)]
    points = layout[np.concatenate(rows)]
    low, high = points.min(axis=0), points.max(axis=0)
    points = (points - low) / np.where(high > low, high - low, 1.0)
    side = int(np.ceil(np.sqrt(len(points))))
    grid = (np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2) + 0.5) / side
    _, cells = linear_sum_assignment(((points[:, None, :] - grid[None, :, :]) ** 2).sum(axis=2))
    moved = grid[cells]
    ends = np.cumsum(quota)[:-1]
    return np.array([part.mean(axis=0) for part in np.split(moved, ends)])


def mosaic_tiles(layout: np.ndarray, slice_ids: np.ndarray, seed: int = 0) -> list[Tile]:
    """One non-overlapping tile per slice, together covering the unit square, each near its slice's place in ``layout``
    and of an area close to the slice's √size share (see the module docstring)."""
    from scipy.spatial import ConvexHull, QhullError

    layout = np.asarray(layout, dtype=np.float64)
    slice_ids = np.asarray(slice_ids)
    if len(layout) < 3:
        raise SliceScopeError(f"a mosaic needs at least 3 images, the layout has {len(layout)}", "scan more images")
    try:
        ConvexHull(layout)
    except QhullError:
        raise SliceScopeError("the 2-D layout is degenerate (all points on a line)", "recompute the layout with other UMAP settings") from None
    ids, sizes = np.unique(slice_ids, return_counts=True)
    sites = _spread_sites(layout, slice_ids, ids, sizes, seed)
    targets = np.sqrt(sizes) / np.sqrt(sizes).sum()
    # Weights move in units of each site's squared distance to its nearest neighbour: the scale on which its cell changes.
    distances = ((sites[:, None, :] - sites[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    scale = np.where(np.isfinite(distances.min(axis=1)), distances.min(axis=1), 1.0)
    weights = np.zeros(len(ids))
    for _ in range(SIZE_ITERATIONS):
        areas = np.array([polygon_area(cell) for cell in power_cells(UNIT_SQUARE, sites, weights)])
        weights += SIZE_STEP * np.clip((targets - areas) / targets, -1.0, 1.0) * scale
    cells = power_cells(UNIT_SQUARE, sites, weights)
    if any(polygon_area(cell) <= 0 for cell in cells):
        cells = power_cells(UNIT_SQUARE, sites, np.zeros(len(ids)))  # Voronoi: every distinct site keeps a cell
    return [Tile(int(slice_id), site, cell) for slice_id, site, cell in zip(ids, sites, cells)]
