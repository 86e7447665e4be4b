"""The Data Slice Mosaic as a cached job: tiles + one feature inversion per tile.

Each slice owns a tile of the attribution space (``core.tiles``); the tile's
picture is the feature inversion of the slice's mean F_W (``core.inversion``),
optimised inside the tile's bounding rectangle with pixels outside the tile
zeroed. All tiles are inverted in one batch, once per (workspace, slicing,
layout, inversion settings), and stored in the workspace's derived results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from core.errors import SliceScopeError
from core.extract import ScanConfig
from core.inversion import InversionParams, invert_features
from core.models import AttributionModel, load_module
from core.progress import ProgressFn
from core.slicing import ProjectionParams, SliceParams, find_slices, project
from core.tiles import mosaic_tiles
from core.workspace import Workspace, recorded_scan_inputs


@dataclass(frozen=True)
class Mosaic:
    slice_ids: list[int]
    polygons: list[np.ndarray]  # per tile, M × 2 in layout coordinates
    boxes: np.ndarray  # T × 4: x_min, y_min, x_max, y_max of each tile
    images: np.ndarray  # T × S × S × 4 uint8 RGBA, transparent outside the tile


def tile_mask(polygon: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The polygon rasterised into its bounding box at ``size`` × ``size`` (1 inside, 0 outside)."""
    x_min, y_min, x_max, y_max = box
    width, height = max(x_max - x_min, 1e-9), max(y_max - y_min, 1e-9)
    # Image rows grow downwards while layout y grows upwards.
    pixels = [((x - x_min) / width * size, (y_max - y) / height * size) for x, y in polygon]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(pixels, fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _load_model(workspace: Workspace) -> AttributionModel:
    inputs = recorded_scan_inputs(workspace.path)
    if inputs is None:
        raise SliceScopeError(f"workspace {workspace.name} does not record which model built it", "rebuild it with this version of SliceScope to get a mosaic")
    config = ScanConfig.from_dict(inputs, workspace.path)
    if config.model.checkpoint is not None and not config.model.checkpoint.exists():
        raise SliceScopeError(f"the model checkpoint {config.model.checkpoint} no longer exists", "restore it to draw the mosaic")
    module = load_module(config.model)
    return AttributionModel(module, config.image_size, workspace.manifest["model"]["target_layer"], config.device)


def _mosaic_key(slice_params: SliceParams, projection_params: ProjectionParams, inversion_params: InversionParams) -> dict:
    return {"slices": asdict(slice_params), "layout": asdict(projection_params), "inversion": asdict(inversion_params)}


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
    polygons = [tile.polygon for tile in tiles]
    boxes = np.array([[*p.min(axis=0), *p.max(axis=0)] if len(p) else [0.0] * 4 for p in polygons])
    key = _mosaic_key(slice_params, projection_params, inversion_params)

    def compute() -> np.ndarray:
        model = _load_model(workspace)
        features = np.asarray(workspace.array("attribution_features"), dtype=np.float32)
        targets = np.stack([features[slice_ids == tile.slice_id].mean(axis=0) for tile in tiles])
        masks = np.stack([tile_mask(p, b, model.image_size) for p, b in zip(polygons, boxes)])
        rgb = invert_features(model, targets, masks, workspace.manifest["transforms"]["normalize"], inversion_params, progress)
        alpha = (masks * 255).astype(np.uint8)[..., None]
        return np.concatenate([rgb, alpha], axis=3)

    images = workspace.cached_array("mosaic", key, compute)
    return Mosaic([tile.slice_id for tile in tiles], polygons, boxes, images)
