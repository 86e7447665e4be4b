"""Feature inversion: the optimised images match their target features and respect tile masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SliceScopeError
from core.models import AttributionModel
from core.mosaic import InversionParams, invert_features, target_layer_features
from tests.helpers import build_small_net

SIZE = 32


@pytest.fixture
def model() -> AttributionModel:
    torch.manual_seed(0)
    return AttributionModel(build_small_net(), image_size=SIZE, device="cpu")


def relative_error(model: AttributionModel, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        features = target_layer_features(model, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).numpy()
    return np.linalg.norm(features - targets, axis=1) / np.linalg.norm(targets, axis=1)


def test_inverted_images_match_their_targets_far_better_than_noise(model):
    rng = np.random.default_rng(0)
    sources = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
    sources[0, ..., 0] = 220  # a red image
    sources[1, ..., 2] = 220  # a blue one
    with torch.no_grad():
        targets = target_layer_features(model, torch.from_numpy(sources).permute(0, 3, 1, 2).float() / 255.0).numpy()
    inverted = invert_features(model, targets, params=InversionParams(steps=120, jitter=1))
    noise = rng.integers(0, 256, size=inverted.shape, dtype=np.uint8)
    assert inverted.shape == (2, SIZE, SIZE, 3) and inverted.dtype == np.uint8
    assert (relative_error(model, inverted, targets) < 0.5 * relative_error(model, noise, targets)).all()
    # each inversion is closer to its own target than to the other one
    assert (relative_error(model, inverted, targets) < relative_error(model, inverted, targets[::-1])).all()


def test_pixels_outside_the_tile_stay_black(model):
    masks = np.zeros((1, SIZE, SIZE), dtype=np.float32)
    masks[0, 4:20, 6:28] = 1.0
    inverted = invert_features(model, np.ones((1, model.feature_dim), np.float32), masks=masks, params=InversionParams(steps=10))
    assert inverted[0][masks[0] == 0].max() == 0
    assert inverted[0][masks[0] == 1].max() > 0


def test_a_tiles_features_average_only_the_grid_cells_it_covers(model):
    images = torch.rand(2, 3, SIZE, SIZE)
    left_half = torch.zeros(2, 1, SIZE, SIZE)
    left_half[..., : SIZE // 2] = 1.0
    with torch.no_grad():
        _, activation = model.forward_with_activation(images)
        masked = target_layer_features(model, images, left_half)
        everywhere = target_layer_features(model, images, torch.ones(2, 1, SIZE, SIZE))
    torch.testing.assert_close(masked, activation[..., : activation.shape[-1] // 2].mean(dim=(2, 3)))
    torch.testing.assert_close(everywhere, activation.mean(dim=(2, 3)))


def test_targets_of_the_wrong_width_are_refused(model):
    with pytest.raises(SliceScopeError, match="feature vector per tile"):
        invert_features(model, np.ones((1, model.feature_dim + 1), np.float32))
