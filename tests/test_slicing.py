"""Slices, layouts and their parameter-keyed cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import SliceScopeError
from core.extract import ScanConfig, scan
from core.models import ModelSpec
from core.slicing import ProjectionParams, SliceParams, find_slices, project, slice_table, slices_frame


@pytest.fixture
def workspace(image_folder, small_net_checkpoint, tmp_path):
    spec = ModelSpec(checkpoint=small_net_checkpoint, factory="tests.helpers:build_small_net", num_classes=3)
    return scan(ScanConfig(data=image_folder, model=spec, out=tmp_path / "ws", image_size=32, normalize="none", workers=0))


def test_slice_table_metrics_match_a_hand_count():
    images = pd.DataFrame({
        "label": ["a", "a", "b", "b", "b"],
        "prediction": ["a", "b", "b", "b", "a"],
        "confidence": [0.9, 0.6, 0.8, 0.7, 0.5],
        "correct": [True, False, True, True, False],
    })
    table = slice_table(images, np.array([0, 0, 1, 1, 1])).set_index("slice")
    assert table.loc[0, "size"] == 2 and table.loc[0, "errors"] == 1
    assert table.loc[1, "accuracy"] == pytest.approx(2 / 3)
    assert table.loc[1, "mean_confidence"] == pytest.approx(2.0 / 3)
    assert table.loc[1, "dominant_label"] == "b" and table.loc[1, "dominant_prediction"] == "b"
    assert table.loc[1, "dominant_prediction_share"] == pytest.approx(2 / 3)
    assert table.loc[1, "confusion"] == "b→b: 2 · b→a: 1"


def test_slices_are_cached_per_parameters(workspace):
    first = find_slices(workspace, "attribution", SliceParams(k=3))
    assert sorted(np.unique(first)) == [0, 1, 2]
    sizes = np.bincount(first)
    assert list(sizes) == sorted(sizes, reverse=True), "slice 0 should be the largest"
    cached = workspace.derived_path("slices-attribution", {"k": 3, "seed": 0}, ".npy")
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    np.testing.assert_array_equal(find_slices(workspace, "attribution", SliceParams(k=3)), first)
    assert cached.stat().st_mtime_ns == stamp, "an unchanged request recomputed"
    find_slices(workspace, "attribution", SliceParams(k=4))
    assert cached.stat().st_mtime_ns == stamp, "another k overwrote the k=3 result"
    assert workspace.has_cached("slices-attribution", {"k": 4, "seed": 0})
    assert not workspace.has_cached("projection-attribution", {"n_neighbors": 15, "min_dist": 0.05, "metric": "euclidean", "seed": 0})


def test_slices_frame_has_the_cli_columns_and_layouts_differ_per_representation(workspace):
    frame = slices_frame(workspace, "attribution", SliceParams(k=3), ProjectionParams(n_neighbors=5))
    assert list(frame.columns) == ["path", "label", "prediction", "confidence", "slice", "flagged", "slice_accuracy", "rest_accuracy",
                                   "slice_accuracy_low", "slice_accuracy_high", "q_value", "slice_description", "slice_metadata", "x", "y"]
    per_slice = slice_table(workspace.images, frame["slice"].to_numpy()).set_index("slice")
    assert (frame["flagged"] == per_slice["flagged"].reindex(frame["slice"]).to_numpy()).all()
    assert len(frame) == len(workspace.images) and np.isfinite(frame[["x", "y"]].to_numpy()).all()
    plain = project(workspace, "features", ProjectionParams(n_neighbors=5))
    assert not np.allclose(plain, frame[["x", "y"]].to_numpy())


def test_bad_slicing_requests_are_explained(workspace):
    with pytest.raises(SliceScopeError, match="more than the 18 images"):
        find_slices(workspace, "attribution", SliceParams(k=50))
    with pytest.raises(SliceScopeError, match="unknown slicing method 'pixels'"):
        find_slices(workspace, "pixels", SliceParams(k=3))
    with pytest.raises(SliceScopeError, match="unknown UMAP metric"):
        ProjectionParams(metric="hamming-ish")


def test_slices_of_a_broken_representation_get_one_line(workspace, monkeypatch):
    constant = np.ones((len(workspace.images), 16), np.float32)
    monkeypatch.setattr(workspace, "representation", lambda name: constant)
    with pytest.raises(SliceScopeError, match="only 1 distinct value.* fewer than k = 3 .*`target_layer`"):
        find_slices(workspace, "features", SliceParams(k=3, seed=7))
    broken = np.random.default_rng(0).normal(size=(len(workspace.images), 16)).astype(np.float32)
    broken[2, 5] = np.nan
    monkeypatch.setattr(workspace, "representation", lambda name: broken)
    with pytest.raises(SliceScopeError, match="NaN or infinite for 1 of 18 images"):
        find_slices(workspace, "features", SliceParams(k=3, seed=8))
    with pytest.raises(SliceScopeError, match="k = 40 slices is more than the 18 images"):
        find_slices(workspace, "features", SliceParams(k=40))


def test_a_slice_is_described_by_its_over_represented_confusion():
    images = pd.DataFrame({
        "label": ["star"] * 4 + ["circle"] * 16,
        "prediction": ["circle"] * 4 + ["circle"] * 16,
        "confidence": 0.9,
        "correct": [False] * 4 + [True] * 16,
    })
    ids = np.array([0] * 5 + [1] * 15)  # slice 0: four star → circle and one circle → circle
    table = slice_table(images, ids).set_index("slice")
    assert table.loc[0, "description"] == "star → circle: 80% of the slice, 20% of all images (×4.0)"


def test_a_model_with_nan_logits_is_refused_at_scan_time(image_folder, tmp_path):
    import torch

    from tests.helpers import build_small_net, small_scan_config

    model = build_small_net()
    with torch.no_grad():
        model.classifier.bias[1] = float("nan")
    torch.save(model.state_dict(), tmp_path / "nan.pt")
    with pytest.raises(SliceScopeError, match=r"NaN or infinite logits for 18 of 18 images \(e.g. apple/apple_00.png\)"):
        scan(small_scan_config(image_folder, tmp_path / "nan.pt", tmp_path / "ws-nan"))


def blindspot_data(seed: int = 0):
    """Three well-separated groups of a representation; the model is wrong on half of group 2's images only."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, 8))
    group = np.repeat([0, 1, 2], [200, 200, 200])
    vectors = centres[group] + rng.normal(0, 1, (600, 8))
    label = np.where(group == 0, 0, 1)
    wrong = (group == 2) & (np.arange(600) % 2 == 0)
    predicted = np.where(wrong, 1 - label, label)
    logits = np.where(np.eye(2)[predicted] > 0, 3.0, -3.0)
    images = pd.DataFrame({"label_index": label, "label": np.array(["a", "b"])[label], "prediction": np.array(["a", "b"])[predicted],
                           "confidence": 0.99, "correct": ~wrong})
    return images, vectors, logits, wrong


def test_error_aware_slicing_separates_the_model_s_errors():
    from core.slicing import bic_mixture, domino_features

    images, vectors, logits, wrong = blindspot_data()
    plain = bic_mixture(vectors, 10)
    aware = bic_mixture(domino_features(images, vectors, logits, ["a", "b"]), 10)
    # K-Means-like clustering of the representation alone mixes right and wrong images of group 2 ...
    assert min(np.mean(wrong[plain == s]) for s in np.unique(plain[wrong])) < 0.9
    # ... while the error-aware mixture puts the errors in slices of their own, which the evidence flags,
    # one of them holding most of them (the discovery criterion of Plumb et al.: precision ≥ 0.8, coverage ≥ 0.5).
    table = slice_table(images, aware).set_index("slice")
    flagged = table.index[table["flagged"]]
    assert len(flagged) >= 1
    assert all(np.mean(wrong[aware == s]) > 0.95 for s in flagged)
    assert max(np.mean(aware[wrong] == s) for s in flagged) >= 0.5
    assert np.isin(aware[wrong], flagged).mean() > 0.95


def test_planespot_features_are_the_layout_and_the_true_class_confidence():
    from core.slicing import planespot_features

    images, _, logits, wrong = blindspot_data()
    layout = np.random.default_rng(1).normal(5, 3, (600, 2))
    features = planespot_features(images, layout, logits, ["a", "b"])
    np.testing.assert_allclose(features[:, :2].mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(features[:, :2].std(axis=0), 1)
    assert (features[wrong, 2] < features[~wrong, 2].min()).all()


@pytest.mark.parametrize("method", ["domino", "planespot"])
def test_every_method_slices_every_representation_and_names_itself(workspace, method):
    from core.mitigation import Slicing
    from core.slicing import slicing_name

    for representation in ("attribution", "features"):
        params = SliceParams(k=4, method=method)
        ids = find_slices(workspace, representation, params)
        assert len(ids) == len(workspace.images) and ids.min() == 0 and np.bincount(ids).tolist() == sorted(np.bincount(ids), reverse=True)
        assert workspace.has_cached(f"slices-{representation}", {"k": 4, "seed": 0, "method": method})
        name = slicing_name(representation, params)
        assert name == f"{representation}:{method}:k=4:seed=0"
        assert Slicing.from_name(name) == Slicing(representation, params)
    assert slicing_name("attribution", SliceParams(k=4)) == "attribution:k=4:seed=0"  # K-Means keeps its name
    with pytest.raises(SliceScopeError, match="unknown slicing method 'hdbscan'"):
        SliceParams(method="hdbscan")
