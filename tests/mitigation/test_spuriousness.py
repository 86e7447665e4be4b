"""Spuriousness propagation over slices (Label Spreading, and the one-kind fallback)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import SliceScopeError
from core.mitigation import PropagationParams, annotated_values, propagate, slice_embeddings, slice_spuriousness


def two_groups(n_per_group: int = 6, seed: int = 0) -> np.ndarray:
    """Slice embeddings in two well-separated groups: slices 0..n-1 and n..2n-1."""
    rng = np.random.default_rng(seed)
    first = rng.normal(0.0, 0.3, size=(n_per_group, 8))
    second = rng.normal(0.0, 0.3, size=(n_per_group, 8)) + 5.0
    return np.vstack([first, second])


def test_nothing_annotated_gives_no_numbers():
    assert np.isnan(propagate(two_groups(), {})).all()


@pytest.mark.parametrize("kernel", ["rbf", "knn"])
def test_both_kinds_spread_to_their_own_group(kernel):
    embeddings = two_groups()
    scores = propagate(embeddings, {0: 1.0, 6: 0.0}, PropagationParams(kernel=kernel))
    assert scores[0] == 1.0 and scores[6] == 0.0  # annotated slices keep their value
    assert (scores[1:6] > 0.5).all() and (scores[7:] < 0.5).all()
    assert ((scores >= 0) & (scores <= 1)).all()


def test_one_kind_ranks_slices_by_closeness():
    embeddings = two_groups()
    scores = propagate(embeddings, {0: 1.0})
    assert scores[0] == 1.0
    assert scores[1:6].min() > scores[6:].max()
    core_only = propagate(embeddings, {0: 0.0})
    assert core_only[0] == 0.0 and core_only[1:6].max() < core_only[6:].min()


def test_only_core_and_spurious_kinds_carry_spuriousness():
    assert annotated_values({1: "core", 2: "spurious", 3: "wrong_labels", 4: "other"}) == {1: 0.0, 2: 1.0}


def test_slice_embeddings_are_standardised_slice_means():
    features = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 30.0], [6.0, 30.0]])
    embeddings = slice_embeddings(features, np.array([0, 0, 1, 1]))
    assert embeddings.shape == (2, 2)
    np.testing.assert_allclose(embeddings, [[-1.0, -1.0], [1.0, 1.0]])


def test_image_level_entry_point_matches_the_steps():
    rng = np.random.default_rng(1)
    features = np.vstack([rng.normal(0, 1, (30, 4)), rng.normal(6, 1, (30, 4))])
    slice_ids = np.repeat(np.arange(6), 10)
    scores = slice_spuriousness(features, slice_ids, {0: "spurious", 5: "core"})
    assert scores[0] == 1.0 and scores[5] == 0.0
    assert scores[1] > 0.5 > scores[4]


@pytest.mark.parametrize("params", [
    {"kernel": "cosine"}, {"alpha": 1.0}, {"alpha": 0.0}, {"gamma": -1.0}, {"n_neighbors": 0},
])
def test_bad_settings_are_explained(params):
    with pytest.raises(SliceScopeError):
        PropagationParams(**params)
