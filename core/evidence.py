"""Which slices are problems, with the evidence: not just the lowest accuracies.

A slice of 2 images at 0% is not a finding; a slice of 200 at 60% when the rest
is at 95% is. Every slicing method's slices are judged the same way:

* accuracy with a Wilson 95% interval (scipy's ``binomtest(...).proportion_ci``
  would give it per slice; the closed form here does every slice at once);
* a one-sided binomial test of the slice's errors against the error rate of the
  rest of the data (``scipy.stats.binom.sf``), so a slice's size counts;
* Benjamini–Hochberg over all slices tested (``scipy.stats.false_discovery_control``),
  because a slicing tests dozens of slices at once;
* a minimum size relative to the data, and a minimum accuracy gap to the rest, so
  that a flagged slice is large and bad enough to be worth an analyst's time.

A slice is **flagged** when it passes all of these; the table is sorted with the
strongest evidence first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from core.errors import SliceScopeError

_Z95 = 1.959963984540054  # two-sided 95% normal quantile, for the Wilson interval


@dataclass(frozen=True)
class FlagParams:
    """When a slice counts as a problem."""

    alpha: float = 0.05  # false discovery rate over the slices tested (Benjamini–Hochberg)
    min_gap: float = 0.2  # the slice's accuracy at least this far below the rest's
    min_size: int = 5  # images, and at least min_share of the data
    min_share: float = 0.005

    def __post_init__(self):
        if not 0.0 < self.alpha < 1.0:
            raise SliceScopeError(f"alpha = {self.alpha} is not a false discovery rate", "pass alpha between 0 and 1, e.g. 0.05")
        if not 0.0 <= self.min_gap <= 1.0:
            raise SliceScopeError(f"min_gap = {self.min_gap} is not an accuracy difference", "pass min_gap between 0 and 1, e.g. 0.2")
        if self.min_size < 1 or not 0.0 <= self.min_share < 1.0:
            raise SliceScopeError("min_size must be at least 1 and min_share in [0, 1)", "e.g. min_size=5, min_share=0.005")

    def smallest_slice(self, n_images: int) -> int:
        return max(self.min_size, int(np.ceil(self.min_share * n_images)))


EVIDENCE_COLUMNS = ("rest_accuracy", "gap", "accuracy_low", "accuracy_high", "p_value", "q_value", "flagged")


def slice_evidence(correct: np.ndarray, slice_ids: np.ndarray, params: FlagParams = FlagParams()) -> pd.DataFrame:
    """Per slice id (the index): size, errors, accuracy and the evidence columns (see :data:`EVIDENCE_COLUMNS`).

    ``q_value`` is NaN for slices too small to be tested; they are never flagged.
    """
    correct = np.asarray(correct, dtype=bool)
    slice_ids = np.asarray(slice_ids)
    if correct.shape != slice_ids.shape:
        raise SliceScopeError(f"correct has {correct.size} entries but slice_ids {slice_ids.size}", "pass one slice id per image")
    ids, inverse = np.unique(slice_ids, return_inverse=True)
    size = np.bincount(inverse, minlength=len(ids)).astype(np.int64)
    errors = np.bincount(inverse, weights=~correct, minlength=len(ids)).astype(np.int64)
    accuracy = 1.0 - errors / size
    rest_size = len(correct) - size
    rest_errors = int((~correct).sum()) - errors
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_error_rate = np.where(rest_size > 0, rest_errors / np.maximum(rest_size, 1), np.nan)
    low, high = _wilson_interval(size - errors, size)
    # P(at least this many errors | the slice errs like the rest of the data).
    p_value = np.where(np.isnan(rest_error_rate), 1.0, stats.binom.sf(errors - 1, size, np.nan_to_num(rest_error_rate)))
    testable = (size >= params.smallest_slice(len(correct))) & (rest_size > 0)
    q_value = np.full(len(ids), np.nan)
    if testable.any():
        q_value[testable] = stats.false_discovery_control(p_value[testable], method="bh")
    gap = (1.0 - rest_error_rate) - accuracy
    flagged = testable & (q_value <= params.alpha) & (gap >= params.min_gap)
    return pd.DataFrame({
        "size": size, "errors": errors, "accuracy": accuracy,
        "rest_accuracy": 1.0 - rest_error_rate, "gap": gap, "accuracy_low": low, "accuracy_high": high,
        "p_value": p_value, "q_value": q_value, "flagged": flagged,
    }, index=pd.Index(ids, name="slice"))


def _wilson_interval(successes: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    trials = np.maximum(trials, 1)
    share = successes / trials
    spread = _Z95**2 / trials
    centre = (share + spread / 2) / (1 + spread)
    half = _Z95 * np.sqrt(share * (1 - share) / trials + spread / (4 * trials)) / (1 + spread)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def evidence_order(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (with the evidence columns) sorted strongest evidence first: flagged, then by q-value, then by gap."""
    return table.assign(_untested=table["q_value"].isna()).sort_values(
        ["flagged", "_untested", "q_value", "gap"], ascending=[False, True, True, False], kind="stable",
    ).drop(columns="_untested")
