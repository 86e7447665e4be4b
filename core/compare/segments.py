"""Image segments for IMACS: the regions whose Shapley values are computed, embedded and clustered.

IMACS (§4) cuts every image into a 4 × 4 grid and names regions of similar
pixels, SLIC superpixels (Achanta et al., 2010), as future work. Both are
offered: the grid (the default) keeps every segment the same size, so
attributions of different segments compare; SLIC (scikit-image) follows
colour edges, so a segment tends to be one thing (the object, the water, the
stamp) rather than a cell cutting across them. SLIC runs on each image as the
model sees it (resized to its input size), so segments differ per image and
their number varies around ``n_segments``.

A segmentation is an integer feature mask per image (H × W, segment ids
0..k−1; a grid's numbered row by row), the form captum's ``feature_mask``
takes; boxes are ``(x0, y0, x1, y1)`` in pixels of the image it was made for,
the ends exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch

from core.errors import SliceScopeError

SEGMENTATIONS = ("grid", "slic")
_MAX_SEGMENTS = 256  # the grid's 16 × 16, for both methods: more segments leave each Shapley value too little to tell apart


@dataclass(frozen=True)
class SegmentParams:
    """How images are cut: ``method`` ``grid``, ``grid`` × ``grid`` equal cells (IMACS: 4), or ``slic``, about ``n_segments``
    superpixels per image, ``compactness`` trading colour similarity (lower) for square, grid-like regions (higher;
    scikit-image's default 10 suits colours in CIELAB, which SLIC converts RGB to)."""

    method: str = "grid"
    grid: int = 4
    n_segments: int = 16
    compactness: float = 10.0

    def __post_init__(self) -> None:
        if self.method not in SEGMENTATIONS:
            raise SliceScopeError(f"unknown segmentation '{self.method}'", f"set `method` to one of: {', '.join(SEGMENTATIONS)}")
        if not isinstance(self.grid, int) or not 1 <= self.grid <= 16:
            raise SliceScopeError(f"`grid` = {self.grid} is not a number of cells per side from 1 to 16", "set `grid` to e.g. 4 (the paper's 4 × 4)")
        if not isinstance(self.n_segments, int) or not 1 <= self.n_segments <= _MAX_SEGMENTS:
            raise SliceScopeError(f"`n_segments` = {self.n_segments} is not a number of superpixels from 1 to {_MAX_SEGMENTS}",
                                  "set `n_segments` to e.g. 16 (as many as a 4 × 4 grid)")
        if not isinstance(self.compactness, int | float) or not 0 < self.compactness < math.inf:  # NaN fails the comparison too
            raise SliceScopeError(f"`compactness` = {self.compactness} is not a positive number", "set `compactness` to e.g. 10 (scikit-image's default)")

    def record(self) -> dict:
        """What the segments depend on, for cache keys: the method and its own parameters (a grid's, as it always was)."""
        if self.method == "grid":
            return {"method": "grid", "grid": self.grid}
        # Another scikit-image may place superpixels differently, and cached values are per superpixel.
        return {"method": "slic", "n_segments": self.n_segments, "compactness": float(self.compactness), "scikit_image": version("scikit-image")}


def grid_segments(image_size: int, grid: int = 4) -> np.ndarray:
    """One S × S mask of segment ids, ``grid`` × ``grid`` cells numbered row by row.

    Cell edges are rounded, so a side the grid does not divide gives cells
    differing by one pixel rather than a thin leftover strip.
    """
    if image_size < grid:
        raise SliceScopeError(f"a {image_size}-px image cannot be cut into {grid} × {grid} cells", "lower `grid`")
    cell = np.floor(np.arange(image_size) * grid / image_size).astype(np.int64)
    return cell[:, None] * grid + cell[None, :]


def slic_segments(image: np.ndarray, n_segments: int = 16, compactness: float = 10.0) -> np.ndarray:
    """One image's SLIC superpixels (``image``: S × S × 3 in [0, 1]) as an S × S mask of ids 0..k−1, each a connected region.

    scikit-image numbers from ``start_label`` but may skip a label whose
    cluster connectivity enforcement dissolved, so ids are renumbered to
    leave no gap: a player id then always has pixels up to the image's count.
    """
    from skimage.segmentation import slic

    labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0, enforce_connectivity=True, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def segment_images(n_images: int, image_size: int, params: SegmentParams | None = None, pixels: torch.Tensor | None = None) -> np.ndarray:
    """The feature mask of each of ``n_images`` images (N × S × S, int64): the same grid in every image, or each image's SLIC
    superpixels, found in ``pixels`` (N × 3 × S × S in [0, 1], as the model sees them; only SLIC reads them)."""
    params = params or SegmentParams()
    if params.method == "grid":
        return np.broadcast_to(grid_segments(image_size, params.grid), (n_images, image_size, image_size)).copy()
    if pixels is None:
        raise ValueError("SLIC segments are found in the images: pass their pixels")
    masks = np.empty((n_images, image_size, image_size), dtype=np.int64)
    for position, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        masks[position] = slic_segments(image, params.n_segments, params.compactness)
    return masks


def segment_id_count(masks: np.ndarray, params: SegmentParams) -> int:
    """How many segment ids the players are drawn from: a grid's cells, or the most superpixels any of ``masks`` has.

    An image with fewer superpixels lacks the highest ids; as players they
    cover no pixels, so their Shapley value is exactly 0 (padding).
    """
    return params.grid * params.grid if params.method == "grid" else int(masks.max(initial=-1)) + 1


def segment_boxes(mask: np.ndarray, n_segments: int) -> np.ndarray:
    """The bounding box of each segment id of one mask (n × 4: x0, y0, x1, y1, ends exclusive); −1 for an absent id."""
    from scipy import ndimage

    boxes = np.full((n_segments, 4), -1, dtype=np.int64)
    # find_objects ignores label 0, hence the ids shifted by one; None stands for an id the mask lacks.
    for segment, found in enumerate(ndimage.find_objects(mask + 1, max_label=n_segments)):
        if found is not None:
            rows, columns = found
            boxes[segment] = (columns.start, rows.start, columns.stop, rows.stop)
    return boxes


def player_boxes(masks: np.ndarray, players: np.ndarray) -> np.ndarray:
    """The box of each image's players (N × n × 4 from N masks and N × n segment ids); −1 for a player its image lacks."""
    boxes = np.full((*players.shape, 4), -1, dtype=np.int64)
    n_ids = int(players.max(initial=-1)) + 1
    for position, (mask, ids) in enumerate(zip(masks, players)):
        boxes[position] = segment_boxes(mask, n_ids)[ids]
    return boxes
