"""IMACS end to end: the paper's validation check (a trained against an untrained model), caching, the estimate, SLIC segments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.compare import (
    CompareParams,
    EmbeddingParams,
    SegmentParams,
    ShapleyParams,
    attribution,
    compare_versions,
    embedding,
    estimate_seconds,
)
from core.compare.clusters import SEGMENT_COLUMNS

# Few images and permutations, a briefly trained embedding model: seconds on two cores.
FAST = CompareParams(per_model=16, k=3, shapley=ShapleyParams(n_samples=2), embedding=EmbeddingParams(epochs=1, train_images=64))


def test_an_untrained_model_attributes_nearly_nothing_in_every_cluster(trained_and_untrained):
    """IMACS §6.1: against a trained model, the untrained one's mean attribution is near zero in all clusters."""
    trained, untrained = trained_and_untrained
    result = compare_versions(trained, untrained, "circle", FAST)
    segments = result.segments
    assert list(segments.columns[: len(SEGMENT_COLUMNS)]) == list(SEGMENT_COLUMNS)
    assert set(segments["model"]) == {"A", "B"} and segments["cluster"].between(0, FAST.k - 1).all()
    assert len(segments) == 16 * len(result.sample.images)  # every segment of every sampled image
    magnitude = segments.assign(size=segments["attribution"].abs()).pivot_table(index="cluster", columns="model", values="size", aggfunc="mean")
    overall = segments.assign(size=segments["attribution"].abs()).groupby("model")["size"].mean()
    assert overall["B"] < 0.05 * overall["A"]
    assert (magnitude["B"] < 0.25 * overall["A"]).all()
    clusters = result.clusters
    assert clusters["abs_disparity"].is_monotonic_decreasing
    assert clusters[["size_A", "size_B"]].sum().tolist() == [int((segments["model"] == m).sum()) for m in ("A", "B")]
    np.testing.assert_allclose(clusters["disparity"], clusters["mean_A"] - clusters["mean_B"])


def test_a_second_run_computes_nothing(pair, monkeypatch):
    biased, balanced = pair
    first = compare_versions(biased, balanced, "square", FAST)
    for workspace in pair:
        assert list((workspace.path / "derived").glob("compare-shapley-*.npy"))
        assert list((workspace.path / "derived").glob("compare-embedding-*.npy"))
    assert list((biased.path / "derived").glob("compare-embedder-*.pt"))
    assert estimate_seconds(biased, balanced, "square", FAST) == 0

    def refuse(*_args, **_kwargs):
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr(attribution, "shapley_values", refuse)
    monkeypatch.setattr(embedding, "train_tile_cnn", refuse)
    again = compare_versions(biased, balanced, "square", FAST)
    assert again.segments.equals(first.segments) and again.clusters.equals(first.clusters)
    # Another class is another result, computed (and refused here) rather than read from the wrong file.
    with pytest.raises(AssertionError, match="recomputed"):
        compare_versions(biased, balanced, "triangle", FAST)


def test_the_estimate_is_a_positive_number_of_seconds_before_anything_is_cached(pair):
    seconds = estimate_seconds(*pair, "circle", FAST)
    assert 0 < seconds < 600
    assert not list((pair[0].path / "derived").glob("compare-*"))


class Cancelled(Exception):
    """What stopping a computation raises inside it (Streamlit's rerun, a Ctrl-C)."""


def test_a_cancelled_comparison_leaves_only_whole_results_and_resumes(pair):
    biased, balanced = pair

    def cancel_during_model_b(step: str, done: int, total: int) -> None:
        if step.startswith("Shapley values, model B"):
            raise Cancelled

    with pytest.raises(Cancelled):
        compare_versions(biased, balanced, "square", FAST, cancel_during_model_b)
    files = sorted(path.name for workspace in pair for path in (workspace.path / "derived").iterdir())
    assert not [name for name in files if name.startswith(".")], files  # atomic writes: no temporary file left behind
    assert list((biased.path / "derived").glob("compare-shapley-*.npy")) and not list((balanced.path / "derived").glob("compare-shapley-*.npy"))
    resumed = compare_versions(biased, balanced, "square", FAST)
    assert set(resumed.segments["model"]) == {"A", "B"} and len(resumed.segments) == 16 * len(resumed.sample.images)


def test_slic_superpixels_compare_end_to_end_without_padding_segments(pair, monkeypatch):
    biased, balanced = pair
    slic = replace(FAST, segments=SegmentParams(method="slic"))
    assert estimate_seconds(biased, balanced, "square", slic) > 0
    result = compare_versions(biased, balanced, "square", slic)
    segments = result.segments
    assert (segments["x0"] >= 0).all() and (segments["x1"] > segments["x0"]).all() and (segments["y1"] > segments["y0"]).all()
    counts = segments.groupby(["model", "image_id"])["segment"].agg(list)
    # Each image's own superpixels, each once: the padding players of images with fewer never become rows.
    assert all(sorted(ids) == list(range(len(ids))) for ids in counts) and counts.map(len).nunique() > 1
    assert len(result.embeddings) == len(segments) and segments["cluster"].between(0, FAST.k - 1).all()
    assert result.clusters[["size_A", "size_B"]].to_numpy().sum() == len(segments)

    # GradCAM's pre-selection picks among each image's own superpixels.
    top = compare_versions(biased, balanced, "square", replace(slic, shapley=replace(FAST.shapley, top_n=4)))
    picked = top.segments.groupby(["model", "image_id"]).size()
    assert (picked == counts.map(len).clip(upper=4).reindex(picked.index)).all()

    def refuse(*_args, **_kwargs):
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr(attribution, "shapley_values", refuse)
    again = compare_versions(biased, balanced, "square", slic)
    assert again.segments.equals(segments) and again.clusters.equals(result.clusters)
