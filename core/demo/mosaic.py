"""The Data Slice Mosaic's meaning check on the demo: slices picked, and images and object masks read, from its ground truth.

The demo's metadata names each image's background, colour and object mask, so
slices whose inversion should show the background or the object can be picked
without looking at the inversions (:func:`core.mosaic.check.resemblance` then
measures what they show).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from core.demo.dataset import RED_CLASS, WATER_CLASS
from core.errors import SliceScopeError
from core.workspace import Workspace

BACKGROUND_SHARE = 0.5  # a background-driven slice: at least this share water non-circles called "circle"
OBJECT_SHARE = 0.75  # an object-driven slice: at least this share red squares on land called "square"


def demo_slices(images: pd.DataFrame, slice_ids: np.ndarray) -> dict[str, int]:
    """The largest background-driven and the largest object-driven slice of a demo workspace.

    Background-driven: mostly images on water that are not circles yet are
    predicted "circle", i.e. read by the injected background. Object-driven:
    mostly correctly classified red squares on land, read by the colour of the
    object itself. (The biased model reads no shape: the images it gets right
    without a shortcut are the stars, told by the absence of every cue, and its
    GradCAM on them avoids the object.)
    """
    water_misread = (images["background"] == "water") & (images["true_class"] != WATER_CLASS) & (images["prediction"] == WATER_CLASS)
    red_read = (images["colour"] == "red") & (images["true_class"] == RED_CLASS) & (images["background"] != "water") & images["correct"]
    shares = pd.DataFrame({"slice": slice_ids, "background": water_misread.to_numpy(), "object": red_read.to_numpy()}).groupby("slice")
    sizes, means = shares.size(), shares.mean()
    picked = {}
    for kind, threshold in (("background", BACKGROUND_SHARE), ("object", OBJECT_SHARE)):
        candidates = sizes[means[kind] >= threshold]
        if candidates.empty:
            raise SliceScopeError(f"no slice is mostly {kind}-driven images", "use a demo whose biased model took the shortcuts (the small or full preset)")
        picked[kind] = int(candidates.idxmax())
    return picked


def demo_images_and_masks(workspace: Workspace, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images at ``rows`` of a demo workspace (N × 64 × 64 × 3 uint8) and their object masks (N × 64 × 64 bool)."""
    chosen = workspace.images.iloc[np.asarray(rows)]
    images = np.stack([np.asarray(Image.open(workspace.image_path(path)).convert("RGB")) for path in chosen["path"]])
    masks = np.stack([np.asarray(Image.open(workspace.image_path(path))) > 0 for path in chosen["mask_path"]])
    return images, masks


