"""Image segments for IMACS: the regions whose Shapley values are computed, embedded and clustered.

IMACS (§4) cuts every image into a 4 × 4 grid and names regions of similar
pixels (SLIC) as future work. The grid is the segmentation supported here: SLIC
would need scikit-image, which SliceScope does not depend on, and a grid keeps
every segment the same size, so attributions of different segments compare.

A segmentation is an integer feature mask per image (H × W, segment ids
0..n−1, row by row), the form captum's ``feature_mask`` takes; boxes are
``(x0, y0, x1, y1)`` in pixels of the image it was made for, the ends exclusive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import SliceScopeError

SEGMENTATIONS = ("grid",)


@dataclass(frozen=True)
class SegmentParams:
    """How images are cut: ``grid`` × ``grid`` equal cells (IMACS: 4)."""

    method: str = "grid"
    grid: int = 4

    def __post_init__(self) -> None:
        if self.method not in SEGMENTATIONS:
            raise SliceScopeError(f"unknown segmentation '{self.method}'", f"use one of: {', '.join(SEGMENTATIONS)}")
        if not isinstance(self.grid, int) or not 1 <= self.grid <= 16:
            raise SliceScopeError(f"`grid` = {self.grid} is not a number of cells per side from 1 to 16", "set `grid` to e.g. 4 (the paper's 4 × 4)")

    @property
    def n_segments(self) -> int:
        return self.grid * self.grid

    def record(self) -> dict:
        return asdict(self)


def grid_segments(image_size: int, grid: int = 4) -> np.ndarray:
    """One S × S mask of segment ids, ``grid`` × ``grid`` cells numbered row by row.

    Cell edges are rounded, so a side the grid does not divide gives cells
    differing by one pixel rather than a thin leftover strip.
    """
    if image_size < grid:
        raise SliceScopeError(f"a {image_size}-px image cannot be cut into {grid} × {grid} cells", "lower `grid`")
    cell = np.floor(np.arange(image_size) * grid / image_size).astype(np.int64)
    return cell[:, None] * grid + cell[None, :]


def segment_images(n_images: int, image_size: int, params: SegmentParams | None = None) -> np.ndarray:
    """The feature mask of each of ``n_images`` images (N × S × S, int64)."""
    mask = grid_segments(image_size, (params or SegmentParams()).grid)
    return np.broadcast_to(mask, (n_images, image_size, image_size)).copy()


def segment_boxes(mask: np.ndarray, n_segments: int) -> np.ndarray:
    """The bounding box of each segment id of one mask (n × 4: x0, y0, x1, y1, ends exclusive); −1 for an absent id."""
    boxes = np.full((n_segments, 4), -1, dtype=np.int64)
    for segment in range(n_segments):
        ys, xs = np.nonzero(mask == segment)
        if len(ys):
            boxes[segment] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes
