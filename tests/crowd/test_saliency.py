"""Saliency maps for crowd campaigns: real models, real captum, tiny data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.crowd import SaliencyParams, display_shape, overlay_png, picture_png, robust_normalise, saliency_maps
from core.errors import SliceScopeError
from core.extract import ScanConfig, scan
from core.models import ModelSpec
from core.workspace import Workspace
from tests.helpers import SMALL_NET_FACTORY, build_small_net

OBJECT = 8  # side of the drawn square, in pixels


@pytest.fixture(scope="module")
def shapes_workspace(tmp_path_factory) -> tuple[Workspace, dict[str, tuple[int, int]]]:
    """A SmallNet trained to tell filled from hollow white squares on dark noise, scanned; with each object's corner.

    The shape is the only cue, and it lies in the bottom-right part of the image, so the top-left corner is empty.
    """
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    corners, arrays, labels = {}, [], []
    for number in range(32):
        label = number % 2
        pixels = rng.normal(20, 10, (32, 32, 3))
        x, y = (int(value) for value in rng.integers(14, 24, 2))
        pixels[y:y + OBJECT, x:x + OBJECT] = 230
        if label:
            pixels[y + 2:y + 6, x + 2:x + 6] = 20
        image = np.clip(pixels, 0, 255).astype(np.uint8)
        folder = root / "data" / ("hollow" if label else "filled")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{number:02d}.png")
        corners[f"{folder.name}/{number:02d}.png"] = (x, y)
        arrays.append(image)
        labels.append(label)
    inputs = torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2) / 255
    targets = torch.tensor(labels)
    net = build_small_net(2)
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), targets).backward()
        optimiser.step()
    torch.save(net.state_dict(), root / "net.pt")
    spec = ModelSpec(checkpoint=root / "net.pt", factory=SMALL_NET_FACTORY, num_classes=2)
    workspace = scan(ScanConfig(data=root / "data", model=spec, out=root / "ws", image_size=32, normalize="none", batch_size=16, workers=0))
    return workspace, corners


def test_params_are_validated_and_round_trip():
    params = SaliencyParams(sigma=0.2, samples=10, seed=3)
    assert params.as_dict() == {"method": "smoothgrad", "sigma": 0.2, "samples": 10, "seed": 3}
    assert SaliencyParams.from_dict({**params.as_dict(), "display_size": 320}) == params
    for bad, message in [({"method": "lime"}, "unknown saliency method 'lime'"), ({"sigma": 0}, "sigma must be"),
                         ({"sigma": float("nan")}, "sigma must be"), ({"samples": 0}, "samples must be"),
                         ({"samples": True}, "samples must be"), ({"samples": 2.5}, "samples must be"), ({"seed": -1}, "seed must be")]:
        with pytest.raises(SliceScopeError, match=message):
            SaliencyParams(**bad)


def test_smoothgrad_maps_are_normalised_deterministic_and_on_the_object(shapes_workspace):
    workspace, corners = shapes_workspace
    assert workspace.report["accuracy"] == 1.0  # the model learnt the shape, so its evidence is the object
    ids = list(workspace.images["image_id"])
    params = SaliencyParams(samples=8)
    maps = saliency_maps(workspace, ids, params)
    assert maps.shape == (32, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() == 1.0 and (maps.reshape(32, -1).max(axis=1) == 1.0).all()

    # Each image has its own noise stream: its map does not depend on the other images or their order.
    again = saliency_maps(workspace, [ids[5], ids[2]], params, model=None)
    np.testing.assert_array_equal(again, maps[[5, 2]])
    other_seed = saliency_maps(workspace, ids[:2], SaliencyParams(samples=8, seed=1))
    assert not np.allclose(other_seed, maps[:2])

    ratios = []
    for row, path in enumerate(workspace.images["path"]):
        x, y = corners[path]
        ratios.append(maps[row, y:y + OBJECT, x:x + OBJECT].mean() / maps[row, :OBJECT, :OBJECT].mean())
    assert np.median(ratios) > 1.5 and np.mean(np.asarray(ratios) > 1.0) >= 0.9, np.round(ratios, 2)


def test_gradcam_maps_are_the_stored_maps_upsampled(shapes_workspace):
    workspace, _ = shapes_workspace
    ids = list(workspace.images["image_id"][:4])
    maps = saliency_maps(workspace, ids, SaliencyParams(method="gradcam"))
    stored = np.asarray(workspace.array("gradcam")[:4], dtype=np.float32)
    assert maps.shape == (4, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    # Averaged back over each 2×2 block, the map is the stored 16×16 one (up to the blur of bilinear upsampling).
    pooled = maps.reshape(4, 16, 2, 16, 2).mean(axis=(2, 4))
    for small, cells in zip(pooled, stored, strict=True):
        assert np.corrcoef(small.ravel(), cells.ravel())[0, 1] > 0.95
    assert saliency_maps(workspace, [], SaliencyParams()).shape == (0, 32, 32)
    with pytest.raises(SliceScopeError, match="is not in workspace"):
        saliency_maps(workspace, ["nope"], SaliencyParams())


def test_robust_normalise_ignores_a_single_hot_pixel():
    maps = np.full((2, 20, 20), 0.5, dtype=np.float32)
    maps[0, 0, 0] = 1000.0
    maps[1] = 0.0
    normalised = robust_normalise(maps)
    assert normalised[0, 5, 5] == 1.0 and normalised[0, 0, 0] == 1.0  # the spike does not wash the rest out
    assert (normalised[1] == 0).all()


def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_pictures_keep_the_aspect_and_show_the_heat_where_the_map_is():
    image = np.full((48, 64, 3), 100, dtype=np.uint8)
    saliency = np.zeros((32, 32), dtype=np.float32)
    saliency[:, 16:] = 1.0  # the right half is hot
    picture, overlay = _decode(picture_png(image)), _decode(overlay_png(image, saliency))
    assert picture.shape == overlay.shape == (240, 320, 3) and display_shape(64, 48, 320) == (320, 240)
    assert (picture == 100).all()  # enlarged by whole pixels: nothing blurred in
    assert (overlay[:, :100] == 100).all() and (np.abs(overlay[:, 220:].astype(int) - 100).sum(axis=2) > 30).all()
    big = _decode(picture_png(np.zeros((900, 600, 3), dtype=np.uint8), display_size=300))
    assert big.shape == (300, 200, 3)
    with pytest.raises(SliceScopeError, match="H × W × 3 uint8"):
        picture_png(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(SliceScopeError, match="finite 2-D"):
        overlay_png(image, np.full((4, 4), np.nan))
    with pytest.raises(SliceScopeError, match="display size"):
        picture_png(image, display_size=5)


def test_smoothgrad_on_the_tiny_demo_reads_the_workspace_model(tiny_demo: Path):
    workspace = Workspace(tiny_demo / "workspace")
    maps = saliency_maps(workspace, list(workspace.images["image_id"][:3]), SaliencyParams(samples=2))
    assert maps.shape == (3, 64, 64) and np.isfinite(maps).all() and maps.max() == 1.0
