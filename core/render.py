"""Pictures for the UI: image thumbnails and GradCAM overlays, as uint8 arrays.

Everything here is plain numpy + PIL so the app, the CLI and tests can draw
images without Streamlit. A thumbnail is the whole image resized to a square,
exactly as the model saw it, so a GradCAM map upsampled onto it lines up with
the pixels that drove the prediction.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data import read_image

if TYPE_CHECKING:
    from core.workspace import Workspace

# The 'turbo' colormap sampled at 11 evenly spaced points (RGB, 0-255) and
# interpolated into a 256-entry table: matplotlib is not a dependency, and a
# hand-written table of anchors is enough for a perceptually ordered heat map.
_TURBO_ANCHORS = np.array(
    [
        [48, 18, 59], [69, 89, 203], [62, 155, 254], [25, 213, 205], [70, 248, 132], [164, 252, 60],
        [225, 221, 55], [254, 164, 49], [240, 91, 18], [195, 37, 3], [122, 4, 3],
    ],
    dtype=np.float32,
)
_LUT_LEVELS = 256
_TURBO_LUT = np.stack(
    [
        np.interp(np.linspace(0.0, 1.0, _LUT_LEVELS), np.linspace(0.0, 1.0, len(_TURBO_ANCHORS)), _TURBO_ANCHORS[:, channel])
        for channel in range(3)
    ],
    axis=1,
).astype(np.float32)

_PLACEHOLDER_GREY = 160
_PLACEHOLDER_CROSS_GREY = 90


def thumbnail(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` as a ``size`` × ``size`` × 3 uint8 array.

    A missing or unreadable file gives a grey placeholder with a diagonal cross
    instead of an error, so one bad file never breaks a gallery.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1 pixel, got {size}")
    picture = _read_thumbnail(path, size)
    return picture if picture is not None else _placeholder(size)


def gradcam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a GradCAM map (h × w, values in [0, 1]) onto an H × W × 3 uint8 image.

    The map is upsampled bilinearly to the image size and coloured with 'turbo'.
    ``alpha`` is the opacity of the colour where the map peaks.
    """
    image = np.asarray(image)
    cam = np.ascontiguousarray(cam, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be a non-empty H × W × 3 uint8 array, got shape {image.shape} and dtype {image.dtype}")
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"GradCAM map must be a non-empty 2-D array (h × w), got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("GradCAM map contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")

    height, width = image.shape[:2]
    # A float32 array becomes a PIL 'F' image, which resizes float maps with pixel-centre alignment, matching how
    # the model's latent grid covers the square input image.
    upsampled = np.asarray(Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR))
    heat = np.clip(upsampled, 0.0, 1.0)
    colours = _TURBO_LUT[np.rint(heat * (_LUT_LEVELS - 1)).astype(np.intp)]
    # The opacity follows the map: where the model did not look (cam ≈ 0) the
    # image shows through untouched instead of under a uniform blue tint, so the
    # eye goes straight to the attended region and the content stays readable.
    weight = (alpha * heat)[..., None]
    blended = image.astype(np.float32) * (1.0 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def render_images(workspace: Workspace, rows: Sequence[int], size: int = 128, overlay: bool = False) -> list[np.ndarray]:
    """Thumbnails for the given row positions of ``workspace.images``.

    With ``overlay`` each thumbnail carries its GradCAM map. Placeholders for
    unreadable files stay plain: a heat map over a grey box would suggest an
    image that is not there.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1 pixel, got {size}")
    paths = workspace.images["path"]
    gradcam = workspace.array("gradcam") if overlay else None
    rendered = []
    for row in rows:
        picture = _read_thumbnail(workspace.image_path(paths.iat[row]), size)
        if picture is None:
            picture = _placeholder(size)
        elif gradcam is not None:
            picture = gradcam_overlay(picture, gradcam[row])
        rendered.append(picture)
    return rendered


def thumbnail_data_uris(workspace: Workspace, rows: Sequence[int], size: int = 56, quality: int = 80) -> list[str]:
    """Small JPEG thumbnails as ``data:`` URIs, for charts whose tooltips show images (Vega-Lite's ``image`` field).

    JPEG at this size is a few kB per image, so a chart of a few thousand points
    stays a few MB; placeholders stand in for unreadable files as in a gallery.
    """
    uris = []
    for picture in render_images(workspace, rows, size=size):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return uris


def _read_thumbnail(path: Path, size: int) -> np.ndarray | None:
    """The resized image, or None when the file cannot be read."""
    try:
        image = read_image(path).image
    except (OSError, ValueError):
        return None
    # Same resize as the model's preprocessing (whole image, bilinear, no crop).
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _placeholder(size: int) -> np.ndarray:
    """A neutral grey square with a diagonal cross: visibly 'no image here'."""
    picture = np.full((size, size, 3), _PLACEHOLDER_GREY, dtype=np.uint8)
    half_stroke = size // 40
    rows, columns = np.indices((size, size))
    on_cross = (np.abs(rows - columns) <= half_stroke) | (np.abs(rows + columns - (size - 1)) <= half_stroke)
    picture[on_cross] = _PLACEHOLDER_CROSS_GREY
    return picture
