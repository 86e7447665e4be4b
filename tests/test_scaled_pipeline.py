"""The scaled pipeline (issue 20): above the threshold, layouts and slices are fitted on a sample and applied to all images.

The threshold and sample are lowered so that a 400-image synthetic workspace takes the scaled path in seconds.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import numpy as np
import pytest

from benchmarks.page_speed import write_synthetic_workspace
from core import slicing
from core.slicing import ProjectionParams, SliceParams, bic_mixture, distinct_rows, domino_features, find_slices, largest_first, project
from core.workspace import Workspace

IMAGES = 400
SAMPLE = 150


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    path, _ = write_synthetic_workspace(tmp_path, IMAGES)
    return Workspace(path)


@pytest.fixture
def scaled(monkeypatch):
    monkeypatch.setattr(slicing, "SCALED_PIPELINE_THRESHOLD", 200)
    monkeypatch.setattr(slicing, "FIT_SAMPLE_IMAGES", SAMPLE)
    monkeypatch.setattr(slicing, "SCALED_PCA_COMPONENTS", 8)  # below the synthetic features' 64 columns, so PCA runs
    monkeypatch.setattr(slicing, "TRANSFORM_CHUNK_IMAGES", 100)


def recorder() -> tuple[list[tuple[str, int, int]], object]:
    calls: list[tuple[str, int, int]] = []
    return calls, lambda step, done, total: calls.append((step, done, total))


def recompute(workspace: Workspace, compute):
    """``compute(workspace)`` again from an empty cache."""
    shutil.rmtree(workspace.path / "derived")
    return compute(workspace)


def test_a_large_workspace_is_laid_out_by_umap_fitted_on_a_sample(workspace, scaled):
    calls, progress = recorder()
    params = ProjectionParams(n_neighbors=10, seed=3)
    layout = project(workspace, "attribution", params, progress)
    assert layout.shape == (IMAGES, 2) and np.isfinite(layout).all()
    assert workspace.has_cached("projection-attribution", asdict(params) | {"fit_sample": SAMPLE, "pca_components": 8})
    assert ("projecting attribution (UMAP fitted on 150 of 400 images)", 1, 1) in calls
    placed = [done for step, done, total in calls if step == "projecting attribution (UMAP placing the other 250 images)"]
    assert placed == [0, 100, 200, 250], "the rest is placed in chunks, each reported"
    np.testing.assert_array_equal(recompute(workspace, lambda ws: project(ws, "attribution", params)), layout)
    other_seed = project(workspace, "attribution", ProjectionParams(n_neighbors=10, seed=4))
    assert not np.allclose(other_seed, layout)


@pytest.mark.parametrize("method", ["kmeans", "domino", "planespot"])
def test_a_large_workspace_is_sliced_by_fits_on_a_sample(workspace, scaled, method):
    calls, progress = recorder()
    params = SliceParams(k=6, method=method)
    ids = find_slices(workspace, "attribution", params, progress)
    assert ids.shape == (IMAGES,) and ids.min() == 0 and np.bincount(ids).min() > 0, "every image gets a slice, ids without gaps"
    scaled_key = {"minibatch": slicing.MINIBATCH_IMAGES} if method == "kmeans" else {"fit_sample": SAMPLE}
    assert workspace.has_cached("slices-attribution", params.key() | scaled_key)
    if method == "kmeans":
        assert ("slicing attribution (MiniBatchKMeans, k=6)", 1, 1) in calls
    else:
        bic_steps = [(done, total) for step, done, total in calls if step == "choosing the number of slices by BIC (150 images)"]
        assert bic_steps[0][0] == 0 and bic_steps[-1][0] == bic_steps[-1][1] > 1, "the BIC search reports each candidate, on the sample"
    np.testing.assert_array_equal(recompute(workspace, lambda ws: find_slices(ws, "attribution", params)), ids)


def test_below_the_threshold_results_are_plain_umap_and_kmeans_on_every_image(workspace):
    import umap
    from sklearn.cluster import KMeans

    vectors = np.asarray(workspace.representation("attribution"), dtype=np.float32)
    params = ProjectionParams(n_neighbors=10)
    direct = umap.UMAP(n_components=2, n_neighbors=10, min_dist=params.min_dist, metric="euclidean", random_state=0, n_jobs=1)
    np.testing.assert_array_equal(project(workspace, "attribution", params), direct.fit_transform(vectors).astype(np.float32))
    assert workspace.has_cached("projection-attribution", asdict(params)), "the cache key is the one it always was"

    kmeans = find_slices(workspace, "attribution", SliceParams(k=6))
    np.testing.assert_array_equal(kmeans, largest_first(KMeans(n_clusters=6, n_init=4, random_state=0).fit_predict(vectors)))
    assert workspace.has_cached("slices-attribution", {"k": 6, "seed": 0})

    domino = find_slices(workspace, "attribution", SliceParams(k=6, method="domino"))
    features = domino_features(workspace.images, vectors, workspace.array("logits"), workspace.classes)
    np.testing.assert_array_equal(domino, largest_first(bic_mixture(features, 6)))
    assert workspace.has_cached("slices-attribution", {"k": 6, "seed": 0, "method": "domino"})


def test_distinct_rows_counts_what_unique_rows_at_six_decimals_counts():
    rows = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    rows[150:] = rows[:150]  # duplicates
    rows[0, 0], rows[1] = -0.0, rows[0]
    rows[1, 0] = 0.0  # equal to row 0, with other bytes
    rows[2] = rows[3] + np.float32(1e-8)  # equal at 6 decimals
    for vectors in (rows, np.ones((20, 4), np.float32), np.zeros((0, 4), np.float32)):
        assert distinct_rows(vectors) == len(np.unique(vectors.round(6), axis=0))
