"""The SpotCheck-style benchmark's generator and scoring (no model is trained here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmarks.spotcheck import (
    DEFAULT_METHOD,
    FEATURES,
    MANIFEST_COLUMNS,
    MAX_TOTAL_SHARE,
    METHODS,
    SpotCheckConfig,
    blindspot_membership,
    blindspot_name,
    build_spotcheck_cnn,
    evaluate,
    expected_share,
    flag_low_accuracy,
    generate,
    generated_metadata,
    model_accuracy,
    naming_rate,
    sample_blindspots,
    sample_features,
    scan_test_split,
    score,
)
from core.training import attach_training_data


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("spotcheck")
    config = SpotCheckConfig(n_blindspots=3, image_size=32, n_train=400, n_val=40, n_test=160)
    manifest = generate(config, out, seed=3)
    return config, out, pd.read_csv(manifest, dtype=str, keep_default_na=False)


def test_manifest_has_every_column_split_and_image(generated):
    config, out, manifest = generated
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["split"].value_counts().to_dict() == {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    assert set(manifest["label"]) == set(manifest["true_label"]) == {"square", "no_square"}
    for feature, values in FEATURES.items():
        assert set(manifest[feature]) <= {*values, "none"}
    assert (manifest.loc[manifest["square"] == "no", ["size", "colour"]] == "none").all().all()
    with Image.open(out / manifest["path"].iat[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    names = {blindspot["name"] for blindspot in generated_metadata(out)["blindspots"]}
    assert set(manifest["blindspot"]) == {"", *names}


def test_labels_are_flipped_inside_blindspots_for_training_only(generated):
    _, _, manifest = generated
    inside = manifest["blindspot"] != ""
    training = manifest["split"] != "test"
    assert (manifest.loc[inside, "true_label"] == "square").all()
    assert (manifest.loc[inside & training, "label"] == "no_square").all()
    assert (manifest.loc[~(inside & training), "label"] == manifest.loc[~(inside & training), "true_label"]).all()


def test_blindspots_hold_their_intended_share(generated):
    _, out, manifest = generated
    blindspots = generated_metadata(out)["blindspots"]
    assert len(blindspots) == 3
    for blindspot in blindspots:
        definition = blindspot["definition"]
        assert definition["square"] == "yes" and len(definition) in (3, 4)
        matches = np.logical_and.reduce([manifest[feature] == value for feature, value in definition.items()])
        assert (manifest.loc[matches, "blindspot"] == blindspot["name"]).all()
        # A binomial count: within 4 standard deviations of the expected share.
        share, n = blindspot["expected_share"], len(manifest)
        assert abs(matches.mean() - share) <= 4 * np.sqrt(share * (1 - share) / n)


def test_sampled_blindspots_are_disjoint_and_bounded():
    rng = np.random.default_rng(0)
    for n_blindspots in (1, 2, 3):
        for _ in range(10):
            blindspots = sample_blindspots(n_blindspots, rng)
            assert len(blindspots) == n_blindspots
            assert sum(map(expected_share, blindspots)) <= MAX_TOTAL_SHARE
            table = sample_features(2000, rng)
            inside = [np.logical_and.reduce([table[f] == v for f, v in b]) for b in blindspots]
            assert (np.sum(inside, axis=0) <= 1).all()
            membership = blindspot_membership(table, blindspots)
            for blindspot, mask in zip(blindspots, inside):
                assert (membership[mask] == blindspot_name(blindspot)).all()


# -- score ----------------------------------------------------------------------------------------------

A, B = "square=yes & circle=yes", "square=yes & texture=stripes"


def labels(*runs: tuple[str, int]) -> np.ndarray:
    return np.array([name for name, count in runs for _ in range(count)], dtype=object)


def test_perfect_slicing_discovers_everything():
    truth = labels((A, 20), (B, 10), ("", 70))
    slice_ids = np.array([0] * 20 + [1] * 10 + [2] * 70)
    result = score(slice_ids, np.array([True, True, False]), truth)
    assert result == {"dr": 1.0, "fdr": 0.0, "p_at_10": 1.0, "n_flagged": 2}


def test_flagged_junk_slice_is_a_false_discovery():
    truth = labels((A, 20), (B, 10), ("", 70))
    slice_ids = np.array([0] * 20 + [1] * 10 + [2] * 30 + [3] * 40)
    result = score(slice_ids, np.array([True, False, True, False]), truth)
    assert result["dr"] == 0.5 and result["fdr"] == 0.5 and result["n_flagged"] == 2
    assert result["p_at_10"] == pytest.approx(0.5)


def test_precision_below_080_does_not_count():
    # Slice 0: 79 images of A and 21 others (precision 0.79); A has 79 images in all.
    truth = labels((A, 79), ("", 21), ("", 100))
    slice_ids = np.array([0] * 100 + [1] * 100)
    result = score(slice_ids, np.array([True, False]), truth)
    assert result["dr"] == 0.0 and result["fdr"] == 1.0
    # With two of the others moved out, precision is 79/98 ≥ 0.8: a discovery.
    slice_ids[98:100] = 1
    assert score(slice_ids, np.array([True, False]), truth)["dr"] == 1.0


def test_coverage_below_half_belongs_but_does_not_discover():
    # A split over three pure slices of 10: each belongs to A (no false discovery) but covers only a third.
    truth = labels((A, 30), ("", 70))
    slice_ids = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 70)
    result = score(slice_ids, np.array([True, True, True, False]), truth)
    assert result == {"dr": 0.0, "fdr": 0.0, "p_at_10": 1.0, "n_flagged": 3}


def test_p_at_10_takes_the_members_nearest_the_centre():
    # Slice 0: 10 other images at x = ±100 first, then 10 blindspot images at the slice's centre (the origin).
    truth = labels(("", 10), (A, 10), ("", 30))
    vectors = np.zeros((50, 2))
    vectors[:10, 0] = [100, -100] * 5
    vectors[20:] = 7
    slice_ids = np.array([0] * 20 + [1] * 30)
    flagged = np.array([True, False])
    assert score(slice_ids, flagged, truth, vectors)["p_at_10"] == 1.0
    # Without a representation, the slice's first 10 images are its most typical.
    assert score(slice_ids, flagged, truth)["p_at_10"] == 0.0


def test_nothing_flagged_scores_zero_discoveries():
    truth = labels((A, 10), ("", 10))
    result = score(np.zeros(20, dtype=int), np.array([False]), truth)
    assert result["dr"] == 0.0 and result["fdr"] == 0.0 and result["n_flagged"] == 0 and np.isnan(result["p_at_10"])


def test_a_discovered_blindspot_is_named_by_its_feature_values(generated):
    _, _, manifest = generated
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    names = sorted(set(test["blindspot"]) - {""})
    slice_ids = np.array([names.index(name) + 1 if name else 0 for name in test["blindspot"]])
    flagged = np.array([False] + [True] * len(names))
    assert naming_rate(test, slice_ids, flagged) == 1.0
    # Nothing flagged, nothing discovered: the rate is undefined rather than 0 or 1.
    assert np.isnan(naming_rate(test, slice_ids, np.zeros_like(flagged)))


def test_held_out_flagging_rule():
    # Overall accuracy (60 + 5 + 0 + 24) / 100 = 0.89, so a slice is flagged at accuracy ≤ 0.69 with ≥ 5 images.
    correct = np.array([1] * 60 + [1] * 5 + [0] * 5 + [0] * 4 + [1] * 24 + [0] * 2, dtype=bool)
    slice_ids = np.array([0] * 60 + [1] * 10 + [2] * 4 + [3] * 26)
    # Slice 1 (0.5) is flagged; slice 2 (0.0) has 4 images; slice 3 (0.92) is fine; slice 4 is empty.
    assert flag_low_accuracy(correct, slice_ids, 5).tolist() == [False, True, False, False, False]


def test_default_method_is_registered():
    assert DEFAULT_METHOD in METHODS
    assert all(method.representation in (None, "attribution", "features", "influence") for method in METHODS.values())


def test_untrained_model_scans_and_every_method_scores(generated, tmp_path):
    """The harness end to end with random weights: the manifest scans, ground truth reaches the workspace, methods score."""
    _, out, manifest = generated
    checkpoint = tmp_path / "model.pt"
    torch.save(build_spotcheck_cnn().state_dict(), checkpoint)
    workspace = scan_test_split(out / "manifest.csv", checkpoint, tmp_path / "workspace", image_size=32)
    attach_training_data(workspace, out / "manifest.csv", "train")  # the influence methods need it, as the benchmark attaches it
    test_rows = manifest[manifest["split"] == "test"].sort_values("path")
    assert workspace.images["blindspot"].tolist() == test_rows["blindspot"].tolist()
    assert set(model_accuracy(workspace)) == {"overall", "outside blindspots", *(set(test_rows["blindspot"]) - {""})}
    for method in METHODS.values():
        result = evaluate(workspace, method)
        assert set(result) == {"dr", "fdr", "p_at_10", "n_flagged", "named", "seconds"}
        assert 0 <= result["dr"] <= 1 and 0 <= result["fdr"] <= 1
    assert not (workspace.path / "derived").exists()  # methods ran on a scratch copy
