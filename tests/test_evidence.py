"""Flagging slices with evidence: size, multiple testing and the gap to the rest all count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.errors import SliceScopeError
from core.evidence import FlagParams, evidence_order, slice_evidence


def slicing(*slices: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(correct, slice_ids) for slices given as (size, errors)."""
    correct, ids = [], []
    for slice_id, (size, errors) in enumerate(slices):
        correct += [False] * errors + [True] * (size - errors)
        ids += [slice_id] * size
    return np.asarray(correct), np.asarray(ids)


def test_a_large_bad_slice_is_flagged_and_a_tiny_zero_is_not():
    correct, ids = slicing((900, 30), (200, 80), (2, 2), (40, 5))
    table = slice_evidence(correct, ids)
    assert table["flagged"].tolist() == [False, True, False, False]
    assert np.isnan(table.loc[2, "q_value"])  # 2 images: below the minimum size, never tested
    assert table.loc[2, "accuracy"] == 0.0
    assert evidence_order(table).index[0] == 1


def test_p_values_are_the_binomial_test_and_q_values_benjamini_hochberg():
    correct, ids = slicing((500, 25), (100, 20), (100, 9))
    table = slice_evidence(correct, ids)
    rest_error = (25 + 9) / 600
    expected = stats.binomtest(20, 100, rest_error, alternative="greater").pvalue
    assert table.loc[1, "p_value"] == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(table["q_value"], stats.false_discovery_control(table["p_value"]))


def test_the_interval_contains_the_accuracy_and_narrows_with_size():
    correct, ids = slicing((20, 10), (2000, 1000), (500, 0))
    table = slice_evidence(correct, ids)
    assert (table["accuracy_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_high"]).all()
    widths = table["accuracy_high"] - table["accuracy_low"]
    assert widths[0] > widths[1]
    low, high = stats.binomtest(10, 20).proportion_ci(0.95, method="wilson")
    assert (table.loc[0, "accuracy_low"], table.loc[0, "accuracy_high"]) == pytest.approx((low, high))


def test_a_significant_but_small_gap_is_not_a_problem():
    correct, ids = slicing((5000, 250), (5000, 500))  # 90% against 95%: significant, 5 points
    assert not slice_evidence(correct, ids)["flagged"].any()
    assert slice_evidence(correct, ids, FlagParams(min_gap=0.04))["flagged"].tolist() == [False, True]


def test_one_slice_and_everything_right_flag_nothing():
    correct, ids = slicing((50, 10))
    assert not slice_evidence(correct, ids)["flagged"].any()
    correct, ids = slicing((50, 0), (50, 0))
    assert not slice_evidence(correct, ids)["flagged"].any()


def test_bad_parameters_and_shapes_are_one_line():
    with pytest.raises(SliceScopeError, match="alpha"):
        FlagParams(alpha=0)
    with pytest.raises(SliceScopeError, match="one slice id per image"):
        slice_evidence(np.ones(3, bool), np.zeros(4, int))
