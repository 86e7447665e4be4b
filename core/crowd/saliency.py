"""Saliency maps for crowd campaigns (SECA's C1), and the pictures workers are shown.

Two methods, both of the *predicted* class (what the model did, not what it should
have done), both returned as ``(n, S, S)`` float32 maps in [0, 1] at the model's
input resolution S:

``smoothgrad`` (default, as in the paper)
    captum's ``NoiseTunnel(Saliency(model))`` with ``nt_type="smoothgrad"``: the mean
    absolute input gradient over ``samples`` copies of the image with Gaussian noise
    of standard deviation ``sigma × (input range)``, the maximum over colour
    channels, divided by the map's 99th percentile and clipped to 1 (a robust
    normalisation: one hot pixel does not wash out the rest). The input range is
    the workspace's normalisation's: 1 for ``none``, 1/std for ``imagenet``.
    Each image's noise is seeded by ``(seed, image id)``, so an image's map does not
    depend on which other images are computed with it, nor in which order. The last
    few results are kept in memory, so a campaign created and then simulated in one
    process computes its maps once.

``gradcam``
    the workspace's stored GradCAM map (predicted class, target layer, peak-normalised),
    upsampled bilinearly with pixel-centre alignment. captum's ``LayerGradCam`` would
    compute the same map again from the model; the stored one needs no model, is
    instant, and is exactly the map the analyst sees on the Slices page.

Pictures (:func:`picture_png`, :func:`overlay_png`) are PNG bytes at a display size:
the longer side becomes ``display_size`` with the image's aspect kept, so a box
drawn on the picture converts back to image pixels by a plain scale
(:func:`core.crowd.campaigns.canvas_to_image_box`). Small images are enlarged with
nearest-neighbour resampling so workers see the model's pixels, not a blur.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from core.data import NORMALIZATIONS, Preprocess, read_image
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.render import gradcam_overlay
from core.workspace import Workspace

SALIENCY_METHODS = ("smoothgrad", "gradcam")
MAX_SAMPLES = 500
ROBUST_PERCENTILE = 99.0
OVERLAY_ALPHA = 0.65  # opacity of the heat colour where the map peaks
_IMAGES_PER_BATCH = 8  # images read and attributed together (each with its own noise stream)
_RECENT_LIMIT = 4  # maps kept in memory, so that creating a campaign and then simulating it computes them once
_recent: dict[tuple, np.ndarray] = {}


@dataclass(frozen=True)
class SaliencyParams:
    """How a campaign's saliency maps are computed (recorded with the campaign as :meth:`as_dict`).

    ``sigma`` is SmoothGrad's noise standard deviation as a fraction of the input
    range (Smilkov et al. recommend 0.1–0.2); ``samples`` the number of noisy copies
    averaged (captum's ``nt_samples``); ``seed`` seeds the noise. GradCAM ignores all three.
    """

    method: str = "smoothgrad"
    sigma: float = 0.15
    samples: int = 25
    seed: int = 0

    def __post_init__(self):
        if self.method not in SALIENCY_METHODS:
            raise SliceScopeError(f"unknown saliency method {str(self.method)[:40]!r}", f"use one of: {', '.join(SALIENCY_METHODS)}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, int | float) or not (math.isfinite(self.sigma) and 0 < self.sigma <= 1):
            raise SliceScopeError(f"SmoothGrad's sigma must be a fraction of the input range in (0, 1], not {str(self.sigma)[:40]!r}",
                                  "use about 0.15 (the paper's setting)")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 1 <= self.samples <= MAX_SAMPLES:
            raise SliceScopeError(f"SmoothGrad's samples must be a whole number from 1 to {MAX_SAMPLES}, not {str(self.samples)[:40]!r}",
                                  "use 10 to 50 noisy copies per image")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SliceScopeError(f"the saliency seed must be a whole number ≥ 0, not {str(self.seed)[:40]!r}", "use e.g. 0")

    def as_dict(self) -> dict:
        """Plain numbers and text, as a campaign's settings store them."""
        return {**asdict(self), "sigma": float(self.sigma)}

    @classmethod
    def from_dict(cls, values: dict) -> SaliencyParams:
        """The parameters :meth:`as_dict` wrote (unknown keys are ignored, missing ones take their defaults)."""
        known = {name: values[name] for name in ("method", "sigma", "samples", "seed") if name in values}
        return cls(**known)


def _image_seed(seed: int, image_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def _preprocess(workspace: Workspace) -> Preprocess:
    transforms = workspace.manifest.get("transforms") or {}
    return Preprocess(int(transforms["image_size"]), transforms.get("normalize", "none"))


def _rows(workspace: Workspace, image_ids: Sequence[str]) -> np.ndarray:
    if isinstance(image_ids, str):
        raise SliceScopeError("image_ids must be a list of image ids, not one string", "pass e.g. [image_id]")
    positions = {image_id: row for row, image_id in enumerate(workspace.images["image_id"])}
    missing = [image_id for image_id in image_ids if image_id not in positions]
    if missing:
        raise SliceScopeError(f"image {str(missing[0])[:40]!r} is not in workspace {workspace.name}", "pick image ids from the workspace's images table")
    return np.asarray([positions[image_id] for image_id in image_ids], dtype=np.int64)


def load_image(workspace: Workspace, row: int):
    """The workspace image at ``row`` of its images table, decoded as RGB (PIL); a missing file is a SliceScopeError."""
    path = workspace.image_path(workspace.images["path"].iat[int(row)])
    try:
        image = read_image(path).image
    except (OSError, ValueError) as error:
        raise SliceScopeError(f"cannot read {path} ({error})", "restore the dataset the workspace was scanned from") from None
    return image


def robust_normalise(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its 99th percentile and clipped to [0, 1]; an all-zero map stays zero."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    scale = np.percentile(flat, ROBUST_PERCENTILE, axis=1)
    peak = flat.max(axis=1)
    scale = np.where(scale > 0, scale, peak)  # a map hot on under 1% of its pixels: fall back to its peak
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(maps / scale[:, None, None], 0.0, 1.0).astype(np.float32)


def saliency_maps(workspace: Workspace, image_ids: Sequence[str], params: SaliencyParams = SaliencyParams(),
                  progress: ProgressFn | None = None, model=None) -> np.ndarray:
    """``(n, S, S)`` float32 maps in [0, 1] of the predicted class for ``image_ids`` (module docstring).

    ``model`` (a :class:`core.models.AttributionModel`) spares reloading the workspace's
    model when the caller already holds it; by default it is loaded from the recorded
    checkpoint, on the CPU unless the scan recorded a device.
    """
    if not isinstance(params, SaliencyParams):
        raise SliceScopeError(f"saliency parameters must be SaliencyParams, not {type(params).__name__}", "build them with SaliencyParams(...)")
    rows = _rows(workspace, image_ids)
    preprocess = _preprocess(workspace)
    size = preprocess.image_size
    if len(rows) == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    if params.method == "gradcam":
        return _gradcam_maps(workspace, rows, size, progress)
    key = (str(workspace.path), workspace.fingerprint, tuple(image_ids), params)
    if model is None and key in _recent:
        (progress or silent)("computing saliency maps", len(rows), len(rows))
        return _recent[key].copy()
    maps = _smoothgrad_maps(workspace, list(image_ids), rows, preprocess, params, progress, model)
    if model is None:
        _recent[key] = maps.copy()
        while len(_recent) > _RECENT_LIMIT:
            _recent.pop(next(iter(_recent)))
    return maps


def _gradcam_maps(workspace: Workspace, rows: np.ndarray, size: int, progress: ProgressFn | None) -> np.ndarray:
    report = progress or silent
    stored = workspace.array("gradcam")
    maps = np.empty((len(rows), size, size), dtype=np.float32)
    for done, row in enumerate(rows, start=1):
        cam = np.ascontiguousarray(stored[row], dtype=np.float32)
        maps[done - 1] = np.asarray(Image.fromarray(cam).resize((size, size), Image.Resampling.BILINEAR))
        report("computing saliency maps", done, len(rows))
    return np.clip(maps, 0.0, 1.0)


def _smoothgrad_maps(workspace: Workspace, image_ids: list[str], rows: np.ndarray, preprocess: Preprocess, params: SaliencyParams,
                     progress: ProgressFn | None, model) -> np.ndarray:
    from captum.attr import NoiseTunnel, Saliency

    from core.extract import load_workspace_model

    report = progress or silent
    model = model or load_workspace_model(workspace)
    module, device = model.module, model.device
    _, std = NORMALIZATIONS[preprocess.normalize]
    stdev = params.sigma * float(np.mean([1.0 / value for value in std]))  # sigma × the input range
    targets = workspace.images["prediction_index"].to_numpy()[rows]
    tunnel = NoiseTunnel(Saliency(module))
    maps = np.empty((len(rows), preprocess.image_size, preprocess.image_size), dtype=np.float32)
    report("computing saliency maps", 0, len(rows))
    for start in range(0, len(rows), _IMAGES_PER_BATCH):
        batch = range(start, min(start + _IMAGES_PER_BATCH, len(rows)))
        inputs = torch.from_numpy(np.stack([preprocess.to_array(load_image(workspace, rows[i])) for i in batch])).to(device)
        for offset, i in enumerate(batch):
            # Its own noise stream per image; fork_rng leaves the caller's global RNG state untouched.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(_image_seed(params.seed, image_ids[i]))
                attribution = tunnel.attribute(inputs[offset:offset + 1], nt_type="smoothgrad", nt_samples=params.samples,
                                               nt_samples_batch_size=min(params.samples, 64), stdevs=stdev, target=int(targets[i]))
            maps[i] = attribution.detach().abs().amax(dim=1)[0].float().cpu().numpy()
        report("computing saliency maps", batch.stop, len(rows))
    return robust_normalise(maps)


# -- pictures ------------------------------------------------------------------------------------------------------
def _checked_rgb(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise SliceScopeError(f"a picture must be an H × W × 3 uint8 array, not shape {image.shape} and dtype {image.dtype}",
                              "pass the decoded RGB image")
    return image


def display_shape(width: int, height: int, display_size: int) -> tuple[int, int]:
    """(width, height) of the picture shown for an image of ``width`` × ``height``: longer side ``display_size``, aspect kept."""
    if isinstance(display_size, bool) or not isinstance(display_size, int) or not 16 <= display_size <= 2048:
        raise SliceScopeError(f"the display size must be a whole number of pixels from 16 to 2048, not {display_size!r}", "use e.g. 320")
    scale = display_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized(image: np.ndarray, display_size: int) -> np.ndarray:
    height, width = image.shape[:2]
    shape = display_shape(width, height, display_size)
    if shape == (width, height):
        return image
    # Enlarged: every model pixel becomes a crisp block; reduced: bilinear, which keeps thin lines visible.
    resample = Image.Resampling.NEAREST if shape[0] > width else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(shape, resample))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def picture_png(image_rgb: np.ndarray, display_size: int = 320) -> bytes:
    """The image alone, resized for display (longer side ``display_size``), as PNG bytes."""
    return _png(_resized(_checked_rgb(image_rgb), display_size))


def overlay_png(image_rgb: np.ndarray, saliency: np.ndarray, display_size: int = 320, alpha: float = OVERLAY_ALPHA) -> bytes:
    """The image with its saliency map as a heat map (turbo: blue low, yellow, red high; opacity follows the map), PNG bytes.

    The map (any resolution, values in [0, 1]) is upsampled bilinearly onto the resized picture.
    """
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2 or saliency.size == 0 or not np.isfinite(saliency).all():
        raise SliceScopeError(f"a saliency map must be a finite 2-D array, not shape {saliency.shape}", "pass one map of saliency_maps()")
    image = _checked_rgb(image_rgb)
    height, width = image.shape[:2]
    if display_shape(width, height, display_size)[0] > width:
        # Enlarged: blend at the image's own pixels, then enlarge the blend like the picture. The heat map then
        # lines up with the picture's pixel blocks, and the PNG is about a seventh of a blend made at display size.
        return _png(_resized(gradcam_overlay(image, np.clip(saliency, 0.0, 1.0), alpha=alpha), display_size))
    return _png(gradcam_overlay(_resized(image, display_size), np.clip(saliency, 0.0, 1.0), alpha=alpha))
