"""The Data Slice Mosaic (AttributionScanner §3.5): one tile per slice, filled with the feature inversion of the slice's mean F_W.

* :mod:`core.mosaic.tiles`: tile geometry: a square partitioned among the slices, placed by the 2-D layout, sized by slice size.
* :mod:`core.mosaic.inversion`: feature inversion, batched, inside each tile's mask.
* :mod:`core.mosaic.build`: the mosaic as a cached job, combined or per confusion-matrix cell.
* :mod:`core.mosaic.check`: does a tile mean something? its inversion against the slice's objects and backgrounds.

Every public name of those modules is re-exported here, so ``from core.mosaic import …`` is enough;
they are imported on first use (:mod:`core.lazy`).

>>> from core.mosaic import build_mosaic  # doctest: +SKIP
>>> mosaic = build_mosaic(workspace)  # doctest: +SKIP
"""

from core.lazy import lazy_getattr

_EXPORTS = {
    "attention_on_objects": "core.mosaic.check",
    "build_cell_mosaics": "core.mosaic.build",
    "build_mosaic": "core.mosaic.build",
    "CELL_MAX_TILES": "core.mosaic.build",
    "CELL_MIN_MEMBERS": "core.mosaic.build",
    "CellMosaic": "core.mosaic.build",
    "COLOUR_CORRELATION": "core.mosaic.inversion",
    "feature_saliency": "core.mosaic.check",
    "GREY": "core.mosaic.check",
    "InversionParams": "core.mosaic.inversion",
    "invert_features": "core.mosaic.inversion",
    "is_cell_mosaics_built": "core.mosaic.build",
    "is_mosaic_built": "core.mosaic.build",
    "MEDOID_SAMPLE": "core.mosaic.tiles",
    "Mosaic": "core.mosaic.build",
    "mosaic_tiles": "core.mosaic.tiles",
    "NEIGHBOURS": "core.mosaic.check",
    "object_votes": "core.mosaic.check",
    "polygon_area": "core.mosaic.tiles",
    "power_cells": "core.mosaic.tiles",
    "REFERENCE_PIXELS": "core.mosaic.check",
    "Resemblance": "core.mosaic.check",
    "resemblance": "core.mosaic.check",
    "SIZE_ITERATIONS": "core.mosaic.tiles",
    "SIZE_STEP": "core.mosaic.tiles",
    "slice_medoids": "core.mosaic.tiles",
    "SPREAD_BUDGET": "core.mosaic.tiles",
    "SPREAD_MIN_POINTS": "core.mosaic.tiles",
    "srgb_to_lab": "core.mosaic.check",
    "target_layer_features": "core.mosaic.inversion",
    "Tile": "core.mosaic.tiles",
    "tile_mask": "core.mosaic.build",
    "TILING": "core.mosaic.build",
    "UNIT_SQUARE": "core.mosaic.tiles",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
