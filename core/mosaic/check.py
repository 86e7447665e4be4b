"""Does a mosaic tile mean something? Its inversion against the slice's objects and backgrounds.

Given a slice's real images and their ground-truth object masks, the check asks
whether the slice's feature inversion looks like the objects or like the
backgrounds. Two choices make the answer robust on the demo:

* **Per-pixel colour votes, balanced.** Each inversion pixel is compared, in
  CIELAB (where distance is roughly perceived colour difference), with equally
  many object and background pixels drawn from the slice's images; its vote is
  the share of object pixels among its nearest real pixels. 0.5 means "as
  typical of the object as of the background", so the far larger background
  area does not decide by itself. Mean colours cannot do this: a tile that is
  one-fifth red blobs has a mean colour near the background's.
* **Weighted by what the model reads.** A feature inversion is a texture that
  repeats the slice's attended pattern, with filler in between that the
  optimiser never needed to change and whose colour means nothing (grey that
  happens to match rock). Each pixel's vote is weighted by its gradient ×
  input contribution to the features' projection on the slice's target,
  measured from the uniform grey the optimisation starts from, positive part
  only: the pixels whose change from grey made the features look like the
  slice's.

``resemblance()`` returns the weighted object share and, for comparison, the
plain one where every tile pixel counts alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from core.data import NORMALIZATIONS
from core.errors import SliceScopeError
from core.models import AttributionModel
from core.mosaic.inversion import target_layer_features

NEIGHBOURS = 5  # odd, so a pixel's vote is never an exact tie
REFERENCE_PIXELS = 4000  # object and background pixels drawn from the slice's images, each
GREY = 0.5  # sigmoid(0): the colour every inversion starts from

_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB colours (... × 3), as floats: L in [0, 100], a and b roughly ±100."""
    linear = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def object_votes(colours: np.ndarray, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per colour (P × 3 uint8 RGB), the share of object pixels among its nearest pixels of ``images``.

    ``images`` (N × H × W × 3 uint8) and ``masks`` (N × H × W, true on the
    object) give the reference; as many object as background pixels are drawn.
    """
    images, masks = np.asarray(images), np.asarray(masks, dtype=bool)
    if images.shape[:3] != masks.shape:
        raise SliceScopeError(f"{images.shape[:3]} images but {masks.shape} masks", "pass one object mask per image, of the image's size")
    objects, backgrounds = images[masks], images[~masks]
    count = min(len(objects), len(backgrounds), REFERENCE_PIXELS)
    if count < NEIGHBOURS:
        raise SliceScopeError(f"the slice's images have only {count} object or background pixels", "check the object masks")
    rng = np.random.default_rng(seed)
    reference = np.concatenate([objects[rng.choice(len(objects), count, replace=False)], backgrounds[rng.choice(len(backgrounds), count, replace=False)]])
    _, nearest = cKDTree(srgb_to_lab(reference)).query(srgb_to_lab(colours), k=NEIGHBOURS)
    return (nearest < count).mean(axis=1)  # the first ``count`` reference pixels are the object's


def feature_saliency(model: AttributionModel, image: np.ndarray, target: np.ndarray, normalize: str = "none") -> np.ndarray:
    """Per pixel (S × S), how much its change from grey moved the features towards ``target`` (≥ 0).

    ``image`` is S × S × 3 uint8, or × 4 with a tile as alpha whose grid cells
    alone make the features, as in :func:`core.mosaic.inversion.invert_features`.
    """
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32, device=model.device).permute(2, 0, 1)[None] / 255.0
    pixels = image[:, :3].clone().requires_grad_(True)
    tile = image[:, 3:] if image.shape[1] == 4 else None
    mean, std = (torch.tensor(v, device=model.device).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalize])
    direction = torch.as_tensor(np.asarray(target, dtype=np.float32), device=model.device)
    features = target_layer_features(model, (pixels - mean) / std, tile)[0]
    (gradient,) = torch.autograd.grad((features * direction).sum() / direction.norm().clamp(min=1e-6), pixels)
    return torch.relu((gradient * (pixels - GREY)).sum(dim=1))[0].detach().cpu().numpy()


@dataclass(frozen=True)
class Resemblance:
    object_share: float  # weighted by feature saliency: > 0.5 reads as the object, < 0.5 as the background
    plain_object_share: float  # every tile pixel counted alike

    @property
    def resembles(self) -> str:
        return "object" if self.object_share > 0.5 else "background"


def resemblance(
    model: AttributionModel,
    inversion: np.ndarray,
    target: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray,
    normalize: str = "none",
) -> Resemblance:
    """How much ``inversion`` (S × S × 3, or × 4 with the tile as alpha) looks like the objects of ``images``.

    ``target`` is the feature vector it was inverted from (the slice's mean F_W);
    ``images`` and ``masks`` are the slice's real images and object masks.
    """
    inversion = np.asarray(inversion)
    tile = inversion[..., 3] > 0 if inversion.shape[-1] == 4 else np.ones(inversion.shape[:2], dtype=bool)
    if not tile.any():
        raise SliceScopeError("the inversion's tile is empty", "check it with an inversion that has visible pixels")
    votes = object_votes(inversion[..., :3][tile], images, masks)
    weights = feature_saliency(model, inversion, target, normalize)[tile]
    # An inversion that never left grey has no salient pixel; then every pixel counts alike.
    weighted = float(np.average(votes, weights=weights)) if weights.sum() > 0 else float(votes.mean())
    return Resemblance(weighted, float(votes.mean()))


def attention_on_objects(gradcam: np.ndarray, masks: np.ndarray) -> float:
    """GradCAM's share inside the object masks divided by the masks' share of the image.

    Above 1 the model attends to the objects more than their size alone would
    give; the ground truth of what a slice is read by.
    """
    gradcam, masks = np.asarray(gradcam, dtype=np.float64), np.asarray(masks, dtype=np.float64)
    grid = gradcam.shape[1:]
    cells = masks.reshape(len(masks), grid[0], masks.shape[1] // grid[0], grid[1], masks.shape[2] // grid[1]).mean(axis=(2, 4))
    return float((gradcam * cells).sum() / gradcam.sum() / cells.mean())
