"""The Data Slice Mosaic as a cached job: tiles + one feature inversion per tile.

Each slice owns a tile of a square laid out from the attribution space
(``core.mosaic.tiles``: near where the slice lives, sized by it); the tile's
picture is the feature inversion of the slice's mean F_W (``core.mosaic.inversion``),
optimised inside the tile's bounding rectangle with pixels outside the tile
zeroed. All tiles are inverted in one batch, once per (workspace, slicing,
layout, inversion settings), and stored in the workspace's derived results.

The confusion-matrix form (paper Fig. 1 E) is one such mosaic per cell: the
cell's own points tiled by slice, each tile inverting the mean F_W of that
slice's members in that cell, so a slice that is right in one cell and wrong in
another shows what the model attends to in each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from core.errors import SliceScopeError
from core.extract import load_workspace_model
from core.mosaic.inversion import InversionParams, invert_features
from core.mosaic.tiles import Tile, mosaic_tiles
from core.progress import ProgressFn
from core.slicing import ProjectionParams, SliceParams, find_slices, project
from core.views import GRID_MAX_CELLS, MATRIX_MAX_CLASSES, confusion_cells, split_view_cells
from core.workspace import Workspace

# A slice with one or two images in a cell has no shared pattern to summarise
# there: its mean F_W would be a single image's, and its tile would carve the
# cell around a stray point. Three is also the fewest points that span an area.
CELL_MIN_MEMBERS = 3
# Only a cell's largest slices get a tile, so one batch holds at most
# CELL_MAX_TILES × the cells shown (25 for a 5-class matrix, else 12): ≤ 150
# inversions, about three times the paper's 50-tile mosaic.
CELL_MAX_TILES = 6


@dataclass(frozen=True)
class Mosaic:
    slice_ids: list[int]
    polygons: list[np.ndarray]  # per tile, M × 2 in the unit square (core.mosaic.tiles)
    boxes: np.ndarray  # T × 4: x_min, y_min, x_max, y_max of each tile
    images: np.ndarray  # T × S × S × 4 uint8 RGBA, transparent outside the tile


@dataclass(frozen=True)
class CellMosaic:
    """The mosaic of one confusion-matrix cell, tiling only that cell's images."""

    label: str
    prediction: str
    mosaic: Mosaic
    counts: np.ndarray  # per tile: how many of the slice's members fall in this cell


@dataclass(frozen=True)
class _CellTiles:
    label: str
    prediction: str
    tiles: list[Tile]
    members: list[np.ndarray]  # per tile: rows of the slice's members in this cell


def tile_mask(polygon: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The polygon rasterised into its bounding box at ``size`` × ``size`` (1 inside, 0 outside)."""
    x_min, y_min, x_max, y_max = box
    width, height = max(x_max - x_min, 1e-9), max(y_max - y_min, 1e-9)
    # Image rows grow downwards while layout y grows upwards.
    pixels = [((x - x_min) / width * size, (y_max - y) / height * size) for x, y in polygon]
    canvas = Image.new("L", (size, size), 0)
    if len(pixels) >= 2:  # a tile lost to a coincident site (core.mosaic.tiles) is empty: nothing to draw
        ImageDraw.Draw(canvas).polygon(pixels, fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


# Part of the cache key: pictures are inverted inside their tiles, so tiles laid out another way need new pictures.
TILING = "spread-power-diagram"


def _mosaic_key(slice_params: SliceParams, projection_params: ProjectionParams, inversion_params: InversionParams) -> dict:
    return {"slices": slice_params.key(), "layout": asdict(projection_params), "tiling": TILING, "inversion": asdict(inversion_params)}


def _cell_mosaic_key(slice_params: SliceParams, projection_params: ProjectionParams, inversion_params: InversionParams) -> dict:
    # The cached pictures are split into cells by tile counts, so everything
    # that decides which cells and tiles exist is part of the key.
    cells = {"min_members": CELL_MIN_MEMBERS, "max_tiles": CELL_MAX_TILES, "matrix_max_classes": MATRIX_MAX_CLASSES, "grid_max_cells": GRID_MAX_CELLS}
    return {**_mosaic_key(slice_params, projection_params, inversion_params), "cells": cells}


def _boxes(polygons: list[np.ndarray]) -> np.ndarray:
    """x_min, y_min, x_max, y_max of each polygon (zeros for an empty one)."""
    return np.array([[*p.min(axis=0), *p.max(axis=0)] if len(p) else [0.0] * 4 for p in polygons]).reshape(-1, 4)


def _tile_pictures(
    workspace: Workspace,
    kind: str,
    key: dict,
    tiles: list[Tile],
    members: list[np.ndarray],
    inversion_params: InversionParams,
    progress: ProgressFn | None,
) -> np.ndarray:
    """RGBA pictures of ``tiles``, all inverted in one batch on first use, then read from the workspace.

    Tile i's target is the mean F_W of the image rows ``members[i]``.
    """
    def compute() -> np.ndarray:
        model = load_workspace_model(workspace)
        # Index the memory-mapped array by members only, so the full F_W never sits in memory.
        features = workspace.array("attribution_features")
        targets = np.stack([np.asarray(features[rows], dtype=np.float32).mean(axis=0) for rows in members])
        polygons = [tile.polygon for tile in tiles]
        masks = np.stack([tile_mask(polygon, box, model.image_size) for polygon, box in zip(polygons, _boxes(polygons))])
        rgb = invert_features(model, targets, masks, workspace.manifest["transforms"]["normalize"], inversion_params, progress)
        alpha = (masks * 255).astype(np.uint8)[..., None]
        return np.concatenate([rgb, alpha], axis=3)

    return workspace.cached_array(kind, key, compute)


def _mosaic(tiles: list[Tile], images: np.ndarray) -> Mosaic:
    polygons = [tile.polygon for tile in tiles]
    return Mosaic([tile.slice_id for tile in tiles], polygons, _boxes(polygons), images)


def is_mosaic_built(
    workspace: Workspace,
    slice_params: SliceParams = SliceParams(),
    projection_params: ProjectionParams = ProjectionParams(),
    inversion_params: InversionParams = InversionParams(),
) -> bool:
    """Whether :func:`build_mosaic` would read its pictures from disk rather than optimise them."""
    return workspace.has_cached("mosaic", _mosaic_key(slice_params, projection_params, inversion_params))


def build_mosaic(
    workspace: Workspace,
    slice_params: SliceParams = SliceParams(),
    projection_params: ProjectionParams = ProjectionParams(),
    inversion_params: InversionParams = InversionParams(),
    progress: ProgressFn | None = None,
) -> Mosaic:
    """The attribution-space mosaic of ``workspace``, computed once and then read from disk."""
    slice_ids = find_slices(workspace, "attribution", slice_params, progress)
    layout = project(workspace, "attribution", projection_params, progress)
    tiles = mosaic_tiles(layout, slice_ids)
    members = [np.flatnonzero(slice_ids == tile.slice_id) for tile in tiles]
    key = _mosaic_key(slice_params, projection_params, inversion_params)
    return _mosaic(tiles, _tile_pictures(workspace, "mosaic", key, tiles, members, inversion_params, progress))


def _cell_tiles(workspace: Workspace, slice_ids: np.ndarray, layout: np.ndarray) -> list[_CellTiles]:
    """The tiles of every confusion cell shown that keeps at least one slice."""
    images = workspace.images
    cells = split_view_cells(confusion_cells(images), len(workspace.classes))
    rows_of = images.groupby(["label", "prediction"]).indices
    result = []
    for label, prediction in zip(cells["label"], cells["prediction"]):
        rows = rows_of[(label, prediction)]
        ids, counts = np.unique(slice_ids[rows], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        kept = ids[order][counts[order] >= CELL_MIN_MEMBERS][:CELL_MAX_TILES]
        rows = rows[np.isin(slice_ids[rows], kept)]
        if len(rows) == 0:
            continue
        try:
            tiles = mosaic_tiles(layout[rows], slice_ids[rows])
        except SliceScopeError:
            continue  # the cell's points lie on a line: there is no area to tile
        result.append(_CellTiles(label, prediction, tiles, [rows[slice_ids[rows] == tile.slice_id] for tile in tiles]))
    return result


def is_cell_mosaics_built(
    workspace: Workspace,
    slice_params: SliceParams = SliceParams(),
    projection_params: ProjectionParams = ProjectionParams(),
    inversion_params: InversionParams = InversionParams(),
) -> bool:
    """Whether :func:`build_cell_mosaics` would read its pictures from disk rather than optimise them."""
    return workspace.has_cached("cell-mosaic", _cell_mosaic_key(slice_params, projection_params, inversion_params))


def build_cell_mosaics(
    workspace: Workspace,
    slice_params: SliceParams = SliceParams(),
    projection_params: ProjectionParams = ProjectionParams(),
    inversion_params: InversionParams = InversionParams(),
    progress: ProgressFn | None = None,
) -> list[CellMosaic]:
    """One mosaic per confusion cell shown (see ``core.views.split_view_cells``), computed once and then read from disk.

    Within a cell the tiles partition a square among the cell's slices; slices with
    fewer than ``CELL_MIN_MEMBERS`` images there are left out, and at most the
    ``CELL_MAX_TILES`` largest are kept. Cells left with no tile are omitted.
    """
    slice_ids = find_slices(workspace, "attribution", slice_params, progress)
    layout = project(workspace, "attribution", projection_params, progress)
    cells = _cell_tiles(workspace, slice_ids, layout)
    if not cells:
        raise SliceScopeError(
            f"no confusion-matrix cell holds {CELL_MIN_MEMBERS} images of one slice", "choose fewer slices (a smaller k) to get a mosaic per cell"
        )
    key = _cell_mosaic_key(slice_params, projection_params, inversion_params)
    tiles = [tile for cell in cells for tile in cell.tiles]
    members = [rows for cell in cells for rows in cell.members]
    pictures = _tile_pictures(workspace, "cell-mosaic", key, tiles, members, inversion_params, progress)
    ends = np.cumsum([len(cell.tiles) for cell in cells])
    return [
        CellMosaic(cell.label, cell.prediction, _mosaic(cell.tiles, images), np.array([len(rows) for rows in cell.members]))
        for cell, images in zip(cells, np.split(pictures, ends[:-1]))
    ]
