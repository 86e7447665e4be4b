"""C5, query answering: which concepts are typical of which predicted class.

Every finding is one row of the same table (``RESULT_COLUMNS``), whatever found it:

=================  ==========================================================================
column             meaning
=================  ==========================================================================
concept            a concept or a query over concepts ("yellow-stamp", "stamp AND NOT fish_body")
kind               type, attribute, pair (concepts); not, and (combinations); rule (apriori);
                   tree (decision-tree leaf); query (asked by the analyst)
class              the predicted class it is typical of
p_value            chi-square test of independence of concept and class (2×2: concept present
                   or not × predicted as the class or not; no continuity correction)
cramers_v          Cramér's V of that table, the typicality score (the paper's filter: ≥ 0.2)
frequency          share of the class's images that have the concept
frequency_outside  share of the other images that have it
n_images           images that have the concept
coverage           n_images / all annotated images
support            share of all images that have the concept and are predicted as the class
confidence         share of the concept's images predicted as the class (a tree leaf's accuracy)
lift               confidence / share of images predicted as the class (the rules' ranking)
=================  ==========================================================================

The chi-square test is per class against the rest, so that each class gets its
own typical concepts; on two classes it equals the paper's concept × label test.
A 2×2 table's V is symmetric in presence and absence, so only rows where the
concept is more frequent in the class than outside are reported (a concept
typical by its absence shows up as its NOT). A concept in every image or in none
has no test (p_value and cramers_v NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from core.concepts.table import ConceptTable
from core.descriptions import DescriptionParams, describe_members, leaf_paths
from core.errors import SliceScopeError

RESULT_COLUMNS = ("concept", "kind", "class", "p_value", "cramers_v", "frequency", "frequency_outside", "n_images", "coverage",
                  "support", "confidence", "lift")
RESULT_KINDS = ("type", "attribute", "pair", "not", "and", "rule", "tree", "query")
DEFAULT_MIN_TYPICALITY = 0.2


def concept_statistics(columns: pd.DataFrame, prediction: pd.Series, kinds: pd.Series | str, typical_only: bool = True) -> pd.DataFrame:
    """``RESULT_COLUMNS`` for every bool column × predicted class; ``typical_only`` keeps rows more frequent in the class than outside."""
    from scipy.stats import chi2_contingency

    present = columns.to_numpy(dtype=bool)
    predicted = prediction.reindex(columns.index).to_numpy()
    kind_of = pd.Series(kinds, index=columns.columns) if isinstance(kinds, str) else kinds.reindex(columns.columns)
    n = len(predicted)
    frames = []
    for name in sorted(pd.unique(predicted)):
        in_class = predicted == name
        n_class, n_outside = int(in_class.sum()), int((~in_class).sum())
        a, b = present[in_class].sum(axis=0), present[~in_class].sum(axis=0)  # with the concept: in / outside the class
        with np.errstate(invalid="ignore", divide="ignore"):
            frequency, frequency_outside, confidence = a / n_class, b / n_outside, a / (a + b)
        keep = frequency > frequency_outside if typical_only else np.ones(len(a), dtype=bool)
        p_value, cramers_v = np.full(len(a), np.nan), np.full(len(a), np.nan)
        for j in np.flatnonzero(keep & (a + b > 0) & (a + b < n) & (n_outside > 0)):
            chi2, p_value[j], _, _ = chi2_contingency([[a[j], b[j]], [n_class - a[j], n_outside - b[j]]], correction=False)
            cramers_v[j] = np.sqrt(chi2 / n)  # min(rows, columns) - 1 = 1 for a 2×2 table
        frames.append(pd.DataFrame({
            "concept": columns.columns, "kind": kind_of.to_numpy(), "class": name, "p_value": p_value, "cramers_v": cramers_v,
            "frequency": frequency, "frequency_outside": frequency_outside, "n_images": a + b, "coverage": (a + b) / n,
            "support": a / n, "confidence": confidence, "lift": confidence / (n_class / n),
        })[keep])
    if not frames or not columns.shape[1]:
        text = ("concept", "kind", "class")
        return pd.DataFrame({column: pd.Series(dtype=object if column in text else float) for column in RESULT_COLUMNS})
    return pd.concat(frames, ignore_index=True).sort_values("cramers_v", ascending=False, na_position="last", ignore_index=True)


def _check_fraction(name: str, value: float, example: str) -> None:
    if not 0.0 < value <= 1.0:
        raise SliceScopeError(f"{name} = {value} is outside (0, 1]", f"use a fraction such as {example}")


@dataclass
class ConceptStatistics:
    """Chi-square and Cramér's V for every concept, then NOT and pairwise AND of the significant ones.

    The paper combines every significant concept; ``combine_top`` bounds that to
    the most typical ones, because the pairs grow with its square.
    ``fit(table)`` sets ``results_`` (``RESULT_COLUMNS``, by Cramér's V).
    """

    alpha: float = 0.05
    combine_top: int = 20

    def __post_init__(self):
        _check_fraction("alpha", self.alpha, "0.05")
        if self.combine_top < 0:
            raise SliceScopeError(f"combine_top = {self.combine_top} is negative", "use 0 for no combinations, or about 20")

    def fit(self, table: ConceptTable) -> ConceptStatistics:
        singles = concept_statistics(table.concepts, table.prediction, table.kinds)
        significant = singles[singles["p_value"] < self.alpha].drop_duplicates("concept").head(self.combine_top)["concept"]
        literals = [(concept, name, column) for concept in significant
                    for name, column in ((concept, table.concepts[concept]), (f"NOT {concept}", ~table.concepts[concept]))]
        nots = pd.DataFrame({name: column for _, name, column in literals if name.startswith("NOT ")}, index=table.concepts.index)
        ands = {}
        for (first, first_name, first_column), (second, second_name, second_column) in combinations(literals, 2):
            both = first_column & second_column
            # A pair equal to one of its parts says nothing new ("yellow AND yellow-stamp" is yellow-stamp).
            if first != second and both.any() and not both.equals(first_column) and not both.equals(second_column):
                ands[f"{first_name} AND {second_name}"] = both
        self.results_ = pd.concat([
            singles,
            concept_statistics(nots, table.prediction, "not"),
            concept_statistics(pd.DataFrame(ands, index=table.concepts.index), table.prediction, "and"),
        ], ignore_index=True).sort_values("cramers_v", ascending=False, na_position="last", ignore_index=True)
        return self


def _bodies_statistics(bodies: dict[str, np.ndarray], heads: list[tuple[str, str]], table: ConceptTable, kind: str) -> pd.DataFrame:
    """Statistics of rule bodies, each for its own head class."""
    stats = concept_statistics(pd.DataFrame(bodies, index=table.concepts.index), table.prediction, kind, typical_only=False)
    return stats.merge(pd.DataFrame(heads, columns=["concept", "class"]), on=["concept", "class"])


@dataclass
class AssociationRules:
    """Apriori rules "concepts → predicted class" (bodies: concepts present; heads: one class), ranked by lift.

    ``fit(table)`` sets ``results_`` (``RESULT_COLUMNS``, kind "rule").
    """

    min_support: float = 0.1
    min_confidence: float = 0.5
    max_len: int = 4  # body of up to three concepts, as the paper's "long AND gray AND black"

    def __post_init__(self):
        _check_fraction("min_support", self.min_support, "0.1")
        _check_fraction("min_confidence", self.min_confidence, "0.5")
        if self.max_len < 2:
            raise SliceScopeError(f"max_len = {self.max_len} leaves no room for a rule", "use 2 or more (body and head)")

    def fit(self, table: ConceptTable) -> AssociationRules:
        from mlxtend.frequent_patterns import apriori, association_rules

        names = list(table.concepts.columns)
        classes = sorted(table.prediction.unique())
        heads = table.prediction.to_numpy()[:, None] == np.array(classes)[None, :]
        onehot = pd.DataFrame(np.hstack([table.concepts.to_numpy(dtype=bool), heads]))  # items 0..m-1 concepts, m.. classes
        frequent = apriori(onehot, min_support=self.min_support, max_len=self.max_len, low_memory=True)
        bodies, rule_heads = {}, []
        if not frequent.empty:
            rules = association_rules(frequent, num_itemsets=len(onehot), metric="confidence", min_threshold=self.min_confidence,
                                     return_metrics=["confidence"])  # the statistics come from concept_statistics
            for body, head in zip(rules["antecedents"], rules["consequents"]):
                item = min(head)
                if len(head) == 1 and item >= len(names) and all(part < len(names) for part in body):
                    expression = " AND ".join(sorted(names[part] for part in body))
                    bodies[expression] = table.concepts[[names[part] for part in body]].all(axis=1).to_numpy()
                    rule_heads.append((expression, classes[item - len(names)]))
        self.results_ = _bodies_statistics(bodies, rule_heads, table, "rule").sort_values(
            ["lift", "support"], ascending=False, ignore_index=True)
        return self


@dataclass
class TreeRules:
    """Per class, a decision tree (class vs rest) on the concepts; each leaf where the class is the majority is a rule.

    A rule's ``confidence`` is its leaf's accuracy and ``coverage`` the share of
    images in the leaf. Shallow trees and a minimum leaf size keep rules from
    describing a handful of images, which the paper saw trees overfit to.
    ``fit(table)`` sets ``results_`` (``RESULT_COLUMNS``, kind "tree").
    """

    max_depth: int = 3
    min_samples_leaf: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.max_depth < 1 or self.min_samples_leaf < 1:
            raise SliceScopeError("max_depth and min_samples_leaf must be at least 1", "e.g. max_depth 3, min_samples_leaf 5")

    def fit(self, table: ConceptTable) -> TreeRules:
        from sklearn.tree import DecisionTreeClassifier

        names = list(table.concepts.columns)
        features = table.concepts.to_numpy(dtype=float)
        predicted = table.prediction.to_numpy()
        bodies, heads = {}, []
        for name in sorted(pd.unique(predicted)):
            target = predicted == name
            if target.all():
                continue
            tree = DecisionTreeClassifier(max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf, random_state=self.seed)
            tree.fit(features, target)
            leaves = tree.apply(features)
            for leaf, conditions in leaf_paths(tree.tree_, lambda feature, _, present: names[feature] if present else f"NOT {names[feature]}"):
                members = leaves == leaf
                if conditions and target[members].mean() > 0.5:
                    expression = " AND ".join(conditions)
                    bodies[expression] = members
                    heads.append((expression, name))
        self.results_ = _bodies_statistics(bodies, heads, table, "tree").sort_values(
            ["confidence", "coverage"], ascending=False, ignore_index=True)
        return self


def filter_results(results: pd.DataFrame, min_typicality: float = DEFAULT_MIN_TYPICALITY, alpha: float = 0.05,
                   kinds: list[str] | None = None) -> pd.DataFrame:
    """Significant rows (p < alpha) with Cramér's V ≥ ``min_typicality``, of the given kinds (all by default)."""
    if not 0.0 <= min_typicality <= 1.0:
        raise SliceScopeError(f"minimum typicality {min_typicality} is outside [0, 1]", "Cramér's V lies in [0, 1]; the paper uses 0.2")
    _check_fraction("alpha", alpha, "0.05")
    unknown = sorted(set(kinds or ()) - set(RESULT_KINDS))
    if unknown:
        raise SliceScopeError(f"unknown kind {unknown[0][:40]!r}", f"use some of: {', '.join(RESULT_KINDS)}")
    keep = (results["p_value"] < alpha) & (results["cramers_v"] >= min_typicality)
    if kinds is not None:
        keep &= results["kind"].isin(kinds)
    return results[keep].reset_index(drop=True)


def mine_concepts(table: ConceptTable, statistics: ConceptStatistics | None = None, rules: AssociationRules | None = None,
                  trees: TreeRules | None = None) -> pd.DataFrame:
    """Statistics, association rules and tree rules in one table (``RESULT_COLUMNS``), each part in its own ranking."""
    parts = [(statistics or ConceptStatistics()), (rules or AssociationRules()), (trees or TreeRules())]
    return pd.concat([part.fit(table).results_ for part in parts], ignore_index=True)


def slice_concepts(table: ConceptTable, image_slices: pd.Series, min_images: int = 5,
                   params: DescriptionParams = DescriptionParams()) -> pd.DataFrame:
    """Each slice named by the crowd's concepts: the conjunction that best tells its annotated images from the other annotated ones.

    ``image_slices``: slice id per ``image_id``. A slice needs ``min_images`` annotated images to be described;
    the words are :func:`core.descriptions.describe_members` over the concept columns ("stamp = yes & fish_body = no").
    Returns ``slice, annotated, concepts`` (``concepts`` "" where none describes the slice), largest slices first.
    """
    if min_images < 1:
        raise SliceScopeError(f"min_images = {min_images} is not a number of images", "pass min_images of at least 1, e.g. 5")
    slices = image_slices.reindex(table.concepts.index)
    known = slices.notna().to_numpy()
    concepts = table.concepts[known]
    presence = pd.DataFrame(np.where(concepts.to_numpy(dtype=bool), "yes", "no"), index=concepts.index, columns=concepts.columns)
    slice_ids = slices[known].astype(int).to_numpy()
    counts = pd.Series(slice_ids).value_counts()
    rows = [{"slice": int(slice_id), "annotated": int(count),
             "concepts": describe_members(presence, slice_ids == slice_id, list(presence.columns), params) if count >= min_images else ""}
            for slice_id, count in counts.items()]
    return pd.DataFrame(rows, columns=["slice", "annotated", "concepts"])
