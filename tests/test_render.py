"""Thumbnails, placeholders and GradCAM overlays on real files and a real workspace."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.demo import workspace_dir
from core.render import gradcam_overlay, render_images, thumbnail
from core.workspace import Workspace

GREY = 128


def grey_image(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def is_placeholder(picture: np.ndarray) -> bool:
    """Grey everywhere, with darker pixels on both diagonals (the cross)."""
    size = picture.shape[0]
    diagonal = picture[np.arange(size), np.arange(size)]
    anti_diagonal = picture[np.arange(size), size - 1 - np.arange(size)]
    corner_block = picture[: size // 4, size // 2 - 2 : size // 2 + 2]
    channels_equal = (picture == picture[..., :1]).all()
    return bool(channels_equal and (diagonal < corner_block.min()).all() and (anti_diagonal < corner_block.min()).all())


def test_thumbnail_resizes_the_whole_image_to_a_square(tmp_path):
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 30:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)

    picture = thumbnail(path, 20)

    assert picture.shape == (20, 20, 3) and picture.dtype == np.uint8
    # No crop: both halves survive, squeezed into the square side by side.
    assert tuple(picture[10, 2]) == (255, 0, 0)
    assert tuple(picture[10, 17]) == (0, 0, 255)


@pytest.mark.parametrize("name, content", [("garbage.png", b"\x00not an image at all\xff" * 10), ("missing.png", None)])
def test_unreadable_files_give_a_placeholder_of_the_requested_size(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    picture = thumbnail(path, 48)

    assert picture.shape == (48, 48, 3) and picture.dtype == np.uint8
    assert is_placeholder(picture)


@pytest.mark.parametrize("image_shape, cam_shape", [((64, 64), (8, 8)), ((40, 96), (2, 4)), ((96, 40), (6, 3))])
def test_overlay_follows_the_map_after_upsampling(image_shape, cam_shape):
    height, width = image_shape
    cam = np.zeros(cam_shape, dtype=np.float16)
    cam[: cam_shape[0] // 2, : cam_shape[1] // 2] = 1.0  # top-left quadrant only

    overlaid = gradcam_overlay(grey_image(height, width), cam)

    change = np.abs(overlaid.astype(int) - GREY).sum(axis=2)
    # Stay clear of the quadrant border, where bilinear upsampling blends the two.
    top_left = change[: height // 4, : width // 4]
    bottom_right = change[-height // 4 :, -width // 4 :]
    assert top_left.min() > 60
    assert bottom_right.max() <= 3


def test_an_all_zero_map_leaves_the_image_unchanged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)

    overlaid = gradcam_overlay(image, np.zeros((7, 7), dtype=np.float16))

    assert np.abs(overlaid.astype(int) - image).max() <= 1


@pytest.mark.parametrize(
    "image, cam, alpha, message",
    [
        (np.zeros((16, 16), np.uint8), np.ones((4, 4)), 0.5, "H × W × 3 uint8"),
        (np.zeros((16, 16, 4), np.uint8), np.ones((4, 4)), 0.5, "H × W × 3 uint8"),
        (np.zeros((16, 16, 3), np.float32), np.ones((4, 4)), 0.5, "H × W × 3 uint8"),
        (grey_image(16, 16), np.ones((2, 4, 4)), 0.5, "2-D array"),
        (grey_image(16, 16), np.ones((0, 4)), 0.5, "non-empty 2-D"),
        (grey_image(16, 16), np.full((4, 4), np.nan), 0.5, "NaN or infinite"),
        (grey_image(16, 16), np.ones((4, 4)), 1.5, "alpha must be between 0 and 1"),
    ],
)
def test_invalid_overlay_inputs_raise_clear_errors(image, cam, alpha, message):
    with pytest.raises(ValueError, match=message):
        gradcam_overlay(image, cam, alpha)


def test_render_images_on_a_real_workspace(tiny_demo):
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    gradcam = workspace.array("gradcam")
    has_map = gradcam.reshape(len(gradcam), -1).max(axis=1) > 0
    assert has_map.any(), "the tiny demo should have at least one non-empty attribution map"
    rows = [int(np.flatnonzero(has_map)[0]), 0, 1]

    plain = render_images(workspace, rows, size=40)
    overlaid = render_images(workspace, rows, size=40, overlay=True)

    assert len(plain) == len(overlaid) == len(rows)
    assert all(picture.shape == (40, 40, 3) and picture.dtype == np.uint8 for picture in plain + overlaid)
    first_path = workspace.image_path(workspace.images["path"].iat[rows[0]])
    assert np.array_equal(plain[0], thumbnail(first_path, 40))
    # Each overlay carries its own row's map: a non-empty map tints the picture, an empty one leaves it as it was.
    for row, before, after in zip(rows, plain, overlaid):
        tint = np.abs(after.astype(int) - before).max()
        assert tint > 20 if has_map[row] else tint <= 1
    assert render_images(workspace, [], size=40) == []


def test_thumbnail_data_uris_are_small_jpegs_of_the_images(tiny_demo):
    import base64
    import io

    from PIL import Image

    from core.demo import workspace_dir
    from core.render import render_images, thumbnail_data_uris
    from core.workspace import Workspace

    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    uris = thumbnail_data_uris(workspace, [0, 3], size=32)
    assert len(uris) == 2 and all(uri.startswith("data:image/jpeg;base64,") for uri in uris)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[1].split(",", 1)[1]))).convert("RGB"), dtype=np.float32)
    expected = render_images(workspace, [3], size=32)[0].astype(np.float32)
    assert decoded.shape == (32, 32, 3) and np.abs(decoded - expected).mean() < 12  # JPEG is lossy, but it is this image
