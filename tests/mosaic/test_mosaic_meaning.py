"""Does a mosaic tile mean something (issue 4)? The check itself, then the demo.

On a demo whose biased model took the shortcuts, the inversion of a slice read by
the injected water background must look like the background, and the inversion
of a slice read by the object (red squares) like the object.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.demo import _build_data, _scan_held_out, _train_model, is_demo_built, workspace_dir
from core.demo.config import PRESETS
from core.demo.mosaic import demo_images_and_masks, demo_slices
from core.errors import SliceScopeError
from core.extract import load_workspace_model
from core.models import AttributionModel
from core.mosaic import (
    GREY,
    attention_on_objects,
    invert_features,
    object_votes,
    resemblance,
    srgb_to_lab,
    target_layer_features,
)
from core.progress import silent
from core.slicing import SliceParams, default_k, find_slices
from core.workspace import Workspace
from tests.helpers import build_small_net

RED, ROCK = (220, 30, 30), (120, 125, 115)


def two_colour_images(count: int = 3, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Red objects (the top-left quarter) on grey rock backgrounds."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    images[:] = ROCK
    masks = np.zeros((count, size, size), dtype=bool)
    masks[:, : size // 2, : size // 2] = True
    images[masks] = RED
    return images, masks


def test_lab_of_reference_colours():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab, [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20]], atol=0.1)


def test_votes_follow_the_masks_not_the_areas():
    images, masks = two_colour_images()  # the background covers three quarters of every image
    votes = object_votes(np.array([RED, ROCK, (200, 40, 60)], dtype=np.uint8), images, masks)
    np.testing.assert_array_equal(votes, [1.0, 0.0, 1.0])


def test_masks_must_match_the_images():
    images, masks = two_colour_images()
    with pytest.raises(SliceScopeError, match="one object mask per image"):
        object_votes(np.array([RED], dtype=np.uint8), images, masks[:, :8])


def test_pixels_left_grey_do_not_vote():
    torch.manual_seed(0)
    model = AttributionModel(build_small_net(), image_size=32, device="cpu")
    images, masks = two_colour_images(size=32)
    inversion = np.full((32, 32, 3), round(GREY * 255), dtype=np.uint8)
    inversion[:, :16] = RED  # half drawn like the object, half still the grey every inversion starts from
    with torch.no_grad():
        target = target_layer_features(model, torch.from_numpy(inversion).permute(2, 0, 1)[None].float() / 255.0)[0].numpy()
    result = resemblance(model, inversion, target, images, masks)
    assert result.plain_object_share == pytest.approx(0.5, abs=0.02)  # the grey half looks like the rock
    assert result.object_share > 0.95 and result.resembles == "object"


def test_attention_on_objects_compares_with_the_objects_area():
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[:, :16, :16] = True  # 1/16 of the image, the top-left 2 × 2 cells of an 8 × 8 grid
    on_object = np.zeros((2, 8, 8))
    on_object[:, :2, :2] = 1.0
    assert attention_on_objects(on_object, masks) == pytest.approx(16.0)
    assert attention_on_objects(np.ones((2, 8, 8)), masks) == pytest.approx(1.0)


def test_demo_slices_are_picked_by_ground_truth():
    images = pd.DataFrame(
        {
            "background": ["water"] * 4 + ["grass"] * 3 + ["sand"],
            "true_class": ["square", "star", "circle", "triangle", "square", "square", "square", "star"],
            "prediction": ["circle", "circle", "circle", "circle", "square", "square", "square", "star"],
            "colour": ["blue"] * 4 + ["red"] * 3 + ["green"],
        }
    )
    images["correct"] = images["true_class"] == images["prediction"]
    assert demo_slices(images, np.array([0, 0, 0, 0, 1, 1, 1, 1])) == {"background": 0, "object": 1}
    with pytest.raises(SliceScopeError, match="object-driven"):
        demo_slices(images, np.array([0, 0, 0, 0, 0, 1, 1, 1]))


@pytest.fixture(scope="module")
def shortcut_workspace(tmp_path_factory) -> Workspace:
    """The biased model's scan of a demo: ``$SLICESCOPE_DEMO_DIR``'s when it names a built demo.

    Otherwise the small preset, built here without the balanced model and the
    UMAP layouts, which the check does not need (about 30 s on 2 cores).
    """
    reuse = os.environ.get("SLICESCOPE_DEMO_DIR")
    if reuse:
        if not is_demo_built(Path(reuse)):
            pytest.fail(f"SLICESCOPE_DEMO_DIR={reuse} holds no built demo; build one with python -m core demo --out {reuse}")
        return Workspace(workspace_dir(Path(reuse), "biased"))
    out = tmp_path_factory.mktemp("small-demo")
    config = PRESETS["small"]
    metadata = _build_data(out / "data", config, silent)
    _train_model(out, "biased", metadata, config, silent)
    return _scan_held_out(out, "biased", silent)


def test_demo_inversions_resemble_what_the_model_reads(shortcut_workspace):
    workspace = shortcut_workspace
    slice_ids = find_slices(workspace, "attribution", SliceParams(k=default_k(len(workspace.images))))
    rows = {kind: np.flatnonzero(slice_ids == slice_id) for kind, slice_id in demo_slices(workspace.images, slice_ids).items()}
    features = workspace.array("attribution_features")
    targets = np.stack([np.asarray(features[members], dtype=np.float32).mean(axis=0) for members in rows.values()])
    model = load_workspace_model(workspace)
    normalize = workspace.manifest["transforms"]["normalize"]
    inversions = invert_features(model, targets, normalize=normalize)

    attention, results = {}, {}
    for (kind, members), inversion, target in zip(rows.items(), inversions, targets):
        images, masks = demo_images_and_masks(workspace, members)
        attention[kind] = attention_on_objects(workspace.array("gradcam")[members], masks)
        results[kind] = resemblance(model, inversion, target, images, masks, normalize)
    # The premise, from ground truth: GradCAM avoids the objects in one slice and seeks them in the other.
    assert attention["background"] < 1.5 and attention["object"] > 3.0, attention
    assert results["background"].resembles == "background", results
    assert results["object"].resembles == "object", results
