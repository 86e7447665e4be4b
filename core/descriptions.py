"""Slices in words: the columns of a table that set a slice's images apart from the others.

A slice found in an embedding is a set of images; an analyst needs a sentence.
Where the images carry metadata (the manifest's own columns: ``colour``,
``background``, a sensor id, a size in pixels) or crowd concepts, a shallow
decision tree that tells the slice's images from the rest names it, as
sliceguard does: "colour = green & texture = plain (88% of the slice, 2% of the
other images)". The tree is scikit-learn's; what is written here is turning its
best leaf into a short conjunction (conditions that do not help are dropped) and
deciding when it describes the slice well enough to be shown at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import SliceScopeError

# What every scan writes per image: what the model did, not what the images show.
SCAN_COLUMNS = frozenset({"image_id", "path", "split", "label", "label_index", "prediction", "prediction_index", "confidence",
                          "loss", "correct", "sha1"})
# A text column with more distinct values than this is an identifier or free text, not a property to slice by.
MAX_CATEGORIES = 20


@dataclass(frozen=True)
class DescriptionParams:
    """When a conjunction of column conditions is good enough to describe a slice."""

    max_depth: int = 3  # conditions at most: deeper trees describe a handful of images (SECA saw trees overfit)
    min_coverage: float = 0.5  # the description holds for at least this share of the slice's images ...
    min_lift: float = 2.0  # ... and is this many times more common in the slice than in the other images

    def __post_init__(self):
        if self.max_depth < 1:
            raise SliceScopeError(f"max_depth = {self.max_depth} allows no condition", "pass max_depth of at least 1, e.g. 3")
        if not 0.0 < self.min_coverage <= 1.0 or self.min_lift < 1.0:
            raise SliceScopeError("min_coverage must be in (0, 1] and min_lift at least 1", "e.g. min_coverage=0.5, min_lift=2")


def leaf_paths(tree, condition: Callable[[int, float, bool], str]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(leaf node, conditions from the root) for each leaf of a fitted scikit-learn ``tree_``.

    ``condition(feature, threshold, above)`` words one split: ``above`` is the right
    branch (feature > threshold), so for a 0/1 feature split at 0.5 it means present.
    """
    stack = [(0, ())]
    while stack:
        node, conditions = stack.pop()
        if tree.children_left[node] == -1:
            yield node, conditions
            continue
        feature, threshold = int(tree.feature[node]), float(tree.threshold[node])
        stack.append((tree.children_left[node], (*conditions, condition(feature, threshold, False))))
        stack.append((tree.children_right[node], (*conditions, condition(feature, threshold, True))))


def describable_columns(table: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The columns of ``table`` that can describe a slice: numbers, and text with 2 … ``MAX_CATEGORIES`` values.

    Left out: the scan's own columns (:data:`SCAN_COLUMNS`), ``exclude``, paths
    (``*_path``) and constants.
    """
    columns = []
    for column in table.columns:
        if column in SCAN_COLUMNS or column in exclude or str(column).endswith("_path"):
            continue
        values = table[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            usable = values.nunique(dropna=True) > 1
        else:
            usable = 1 < values.astype(str).nunique() <= MAX_CATEGORIES
        if usable:
            columns.append(str(column))
    return columns


@dataclass(frozen=True)
class _Feature:
    """One column of the tree's input: a number as it is, or one value of a text column as 0/1."""

    column: str
    value: str | None  # None: numeric


def _design(table: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[_Feature]]:
    parts, features = [], []
    for column in columns:
        values = table[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype=np.float64)
            # A missing number sits below every real one, so a split can still isolate it.
            parts.append(np.where(np.isnan(numbers), np.nanmin(numbers) - 1.0, numbers)[:, None])
            features.append(_Feature(column, None))
            continue
        text = values.astype(str)
        distinct = sorted(text.unique())
        for value in distinct:
            parts.append((text == value).to_numpy(dtype=np.float64)[:, None])
            features.append(_Feature(column, value))
    return np.hstack(parts), features


def _f1(members: np.ndarray, selected: np.ndarray) -> float:
    hits = int((members & selected).sum())
    return 0.0 if hits == 0 else 2 * hits / (int(members.sum()) + int(selected.sum()))


def describe_members(table: pd.DataFrame, members: np.ndarray, columns: Sequence[str] | None = None,
                     params: DescriptionParams = DescriptionParams(), seed: int = 0) -> str:
    """The conjunction of column conditions that best picks out ``members`` (a bool per row of ``table``), in words.

    "colour = green & texture = plain (88% of the slice, 2% of the other images)",
    or "" when no column tells the slice apart well enough (``params``).
    ``columns``: those to use (default: :func:`describable_columns`).
    """
    from sklearn.tree import DecisionTreeClassifier

    members = np.asarray(members, dtype=bool)
    if members.shape != (len(table),):
        raise SliceScopeError(f"members has {members.size} entries for {len(table)} rows", "pass one bool per row of the table")
    columns = describable_columns(table) if columns is None else list(columns)
    if not columns or members.all() or not members.any():
        return ""
    design, features = _design(table, columns)
    tree = DecisionTreeClassifier(max_depth=params.max_depth, min_samples_leaf=max(1, int(members.sum()) // 5),
                                  class_weight="balanced", random_state=seed).fit(design, members)
    leaves = tree.apply(design)
    best_path, best_f1 = (), 0.0
    for leaf, path in leaf_paths(tree.tree_, lambda feature, threshold, above: (feature, threshold, above)):
        score = _f1(members, leaves == leaf)
        if path and score > best_f1:
            best_path, best_f1 = path, score
    # Greedily drop conditions that do not help: a tree often repeats a column or splits on what its parent implied.
    path = list(best_path)
    for condition in list(path):
        shorter = [c for c in path if c != condition]
        score = _f1(members, _selection(design, shorter)) if shorter else 0.0
        if score >= best_f1:
            path, best_f1 = shorter, score
    if not path:
        return ""
    selected = _selection(design, path)
    coverage = (members & selected).sum() / members.sum()
    elsewhere = (selected & ~members).sum() / max(1, (~members).sum())
    if coverage < params.min_coverage or coverage < params.min_lift * elsewhere:
        return ""
    words = " & ".join(dict.fromkeys(_worded(table, selected, features[feature], threshold, above) for feature, threshold, above in path))
    return f"{words} ({coverage:.0%} of the slice, {elsewhere:.0%} of the other images)"


def _worded(table: pd.DataFrame, selected: np.ndarray, feature: _Feature, threshold: float, above: bool) -> str:
    """One condition in words: "size_px ≤ 12", "colour = green", or "colour ≠ blue" unless one value is left among the
    selected rows ("size ≠ large" reads "size = small", and a two-valued column always reads as its other value)."""
    if feature.value is None:
        return f"{feature.column} > {threshold:.4g}" if above else f"{feature.column} ≤ {threshold:.4g}"
    if above:
        return f"{feature.column} = {feature.value}"
    left = table.loc[selected, feature.column].astype(str).unique()
    return f"{feature.column} = {left[0]}" if len(left) == 1 else f"{feature.column} ≠ {feature.value}"


def _selection(design: np.ndarray, path: Sequence[tuple[int, float, bool]]) -> np.ndarray:
    selected = np.ones(len(design), dtype=bool)
    for feature, threshold, above in path:
        selected &= design[:, feature] > threshold if above else design[:, feature] <= threshold
    return selected


def describe_by_columns(table: pd.DataFrame, slice_ids: np.ndarray, which: Sequence[int], columns: Sequence[str] | None = None,
                        params: DescriptionParams = DescriptionParams()) -> pd.Series:
    """:func:`describe_members` of each slice id in ``which`` (index), "" where nothing describes it or there is nothing to describe with."""
    slice_ids = np.asarray(slice_ids)
    columns = describable_columns(table) if columns is None else list(columns)
    return pd.Series({int(slice_id): describe_members(table, slice_ids == slice_id, columns, params) for slice_id in which},
                     dtype=object).reindex(list(which), fill_value="")
