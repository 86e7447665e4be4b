"""CoRM metrics: noise regions, RCS, and evaluation of a real (tiny demo) model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.demo import workspace_dir
from core.errors import SliceScopeError
from core.mitigation import apply_relabels, attribution_regions, choose_regions, corrupt, evaluate, rcs
from core.slicing import SliceParams, default_k, find_slices
from core.workspace import Workspace


def test_rcs_matches_the_papers_definition():
    assert rcs(0.8, 0.3) == pytest.approx(0.5 / 0.9)
    assert rcs(0.9, 0.9) == 0.0
    assert rcs(0.3, 0.8) == pytest.approx(-0.5 / 0.9)  # relying on the spurious region is negative
    assert rcs(1.0, 1.0) == 0.0 and rcs(0.0, 0.0) == 0.0


def test_corrupt_touches_only_the_region_and_stays_in_range():
    pixels = torch.full((2, 3, 8, 8), 0.5)
    region = torch.zeros(2, 8, 8)
    region[:, :4] = 1.0
    noisy = corrupt(pixels, region, sigma=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, 4:], pixels[:, :, 4:])
    assert not torch.equal(noisy[:, :, :4], pixels[:, :, :4])
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_relabels_change_only_known_images_and_classes():
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "label_index": [0, 1, 2]})
    labels = apply_relabels(images, ["cat", "dog", "bird"], {"b": "cat", "zzz": "dog", "c": "unicorn"})
    assert labels.tolist() == [0, 0, 2]


@pytest.fixture(scope="module")
def workspace(tiny_demo) -> Workspace:
    return Workspace(workspace_dir(tiny_demo, "biased"))


def test_evaluate_with_ground_truth_masks(workspace):
    slice_ids = find_slices(workspace, "attribution", SliceParams(k=default_k(len(workspace.images))))
    regions = choose_regions(workspace, slice_ids, {}, 64)
    assert regions.source == "ground_truth" and regions.core.shape == (len(workspace.images), 64, 64)
    first = evaluate(workspace, regions, slice_ids)
    assert first.clean_acc == pytest.approx(workspace.images["correct"].mean())
    assert 0 <= first.core_acc <= 1 and 0 <= first.spurious_acc <= 1
    assert first.rcs == pytest.approx(rcs(first.core_acc, first.spurious_acc))
    assert set(first.group_acc) == set(workspace.images["group"]) and first.worst_group_acc == min(first.group_acc.values())
    assert set(first.slice_acc) == set(np.unique(slice_ids).tolist())
    again = evaluate(workspace, regions, slice_ids)
    assert (again.core_acc, again.spurious_acc) == (first.core_acc, first.spurious_acc)  # seeded noise


def test_attribution_regions_follow_the_annotations(workspace):
    slice_ids = find_slices(workspace, "attribution", SliceParams(k=default_k(len(workspace.images))))
    with pytest.raises(SliceScopeError, match="annotate at least one slice"):
        attribution_regions(workspace, slice_ids, {0: "other"}, 64)
    regions = attribution_regions(workspace, slice_ids, {0: "spurious", 1: "core"}, 64)
    assert set(slice_ids[regions.rows]) == {0, 1}
    cams = torch.nn.functional.interpolate(torch.from_numpy(np.asarray(workspace.array("gradcam"), dtype=np.float32))[:, None], size=64, mode="bilinear")[:, 0]
    spurious_row = int(np.flatnonzero(slice_ids[regions.rows] == 0)[0])
    np.testing.assert_allclose(regions.core[spurious_row], 1 - cams[regions.rows[spurious_row]].clamp(0, 1).numpy(), atol=1e-5)
