"""SECA mining: the concept table, chi-square / Cramér's V, NOT / AND, association rules, tree rules, filtering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.concepts import (
    RESULT_COLUMNS,
    AssociationRules,
    ConceptStatistics,
    TreeRules,
    Vocabulary,
    build_concept_table,
    concept_statistics,
    filter_results,
    mine_concepts,
    normalise_term,
    read_annotations_csv,
    slice_concepts,
)
from core.concepts.table import ConceptTable
from core.errors import SliceScopeError

CLASSES = ("shark", "tench", "lobster")
PLANTED = {"stamp", "yellow", "yellow-stamp"}  # identical columns: yellow is only ever typed on the stamp
HOSTILE = ["<script>alert('x')</script>", "'; DROP TABLE annotations; --", "x" * 10_000, "🦈🌊", "", "   ", "\x00\n\t",
           "ｓｔａｍｐ"]


def planted_campaign(n_per_class: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annotations and images where a yellow stamp is planted on most "shark" predictions.

    Shark images: yellow stamp in 85%, others 5%. Tench: grass in 60%, others 10%.
    Every image has a grey fin and a water background half of the time (no class
    signal), and a third of the rows carry a hostile string as an extra attribute.
    """
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for name in CLASSES:
        for index in range(n_per_class):
            image = f"{name}-{index}"
            images.append({"image_id": image, "prediction": name, "label": name})
            boxes = [("fin", "grey")]
            if rng.random() < (0.85 if name == "shark" else 0.05):
                boxes.append(("stamp", "yellow"))
            if rng.random() < (0.6 if name == "tench" else 0.1):
                boxes.append(("grass", "green"))
            if rng.random() < 0.5:
                boxes.append(("water", "blue"))
            for worker in ("w1", "w2"):
                for box, (entity, attribute) in enumerate(boxes):
                    rows.append({"image_id": image, "worker_id": worker, "box_id": str(box), "entity_type": entity, "attribute": attribute})
                    if rng.random() < 1 / 3:
                        rows.append({"image_id": image, "worker_id": worker, "box_id": str(box), "entity_type": entity,
                                     "attribute": HOSTILE[rng.integers(len(HOSTILE))]})
    return pd.DataFrame(rows), pd.DataFrame(images)


def identity_vocabulary(annotations: pd.DataFrame) -> Vocabulary:
    """Every normalised term its own concept, as an analyst could write by hand."""
    terms = sorted({normalise_term(value) for column in ("entity_type", "attribute") for value in annotations[column]} - {""})
    return Vocabulary(pd.DataFrame({"term": terms, "words": terms, "concept": terms, "count": 1, "workers": 1}))


def planted_concept_table() -> ConceptTable:
    annotations, images = planted_campaign()
    return build_concept_table(annotations, images, identity_vocabulary(annotations))


planted_table = pytest.fixture(planted_concept_table, scope="module", name="planted_table")


def tiny_table() -> ConceptTable:
    """10 images, 5 per class; "stamp" on 4 of 5 "a" and 1 of 5 "b"; "fin" on all."""
    index = pd.Index([f"i{i}" for i in range(10)], name="image_id")
    concepts = pd.DataFrame({"stamp": [1, 1, 1, 1, 0, 1, 0, 0, 0, 0], "fin": [1] * 10}, index=index).astype(bool)
    prediction = pd.Series(["a"] * 5 + ["b"] * 5, index=index, name="prediction")
    return ConceptTable(concepts, prediction, None, pd.Series({"stamp": "type", "fin": "type"}))


def test_statistics_match_a_hand_computed_contingency_table():
    # stamp × class a: [[4, 1], [1, 4]]; chi² = n (ad − bc)² / (row and column sums) = 10 · 15² / 5⁴ = 3.6
    stats = concept_statistics(tiny_table().concepts, tiny_table().prediction, "type").set_index(["concept", "class"])
    row = stats.loc[("stamp", "a")]
    assert row["cramers_v"] == pytest.approx(math.sqrt(3.6 / 10))  # 0.6
    assert row["p_value"] == pytest.approx(math.erfc(math.sqrt(3.6 / 2)))  # chi² survival with 1 degree of freedom
    assert (row["frequency"], row["frequency_outside"], row["n_images"]) == (pytest.approx(0.8), pytest.approx(0.2), 5)
    assert [row["support"], row["confidence"], row["lift"], row["coverage"]] == pytest.approx([0.4, 0.8, 1.6, 0.5])
    # stamp is typical of a, not of b (its absence is: NOT stamp); fin is everywhere, so it has no test and is typical of nothing
    assert ("stamp", "b") not in stats.index and "fin" not in stats.index.get_level_values("concept")
    everything = concept_statistics(tiny_table().concepts, tiny_table().prediction, "type", typical_only=False)
    everything = everything.set_index(["concept", "class"])
    assert np.isnan(everything.loc[("fin", "a"), "p_value"]) and everything.loc[("stamp", "b"), "cramers_v"] == pytest.approx(0.6)


def test_table_has_types_attributes_and_pairs_and_survives_hostile_text(planted_table):
    kinds = planted_table.kinds
    assert kinds["stamp"] == "type" and kinds["yellow"] == "attribute" and kinds["yellow-stamp"] == "pair"
    assert planted_table.concepts.shape[0] == 3 * 40 and planted_table.concepts.dtypes.eq(bool).all()
    # hostile strings became plain words at most (no markup, no quotes, nothing long), the 10 kB one and emoji nothing
    for column in planted_table.concepts.columns:
        assert len(column) < 80 and not set(column) & set("<>'\";()\x00 ")
    assert "stamp" in planted_table.concepts.columns  # full-width "ｓｔａｍｐ" typed as an attribute folds into stamp
    shark = planted_table.prediction == "shark"
    assert planted_table.concepts.loc[shark, "yellow-stamp"].mean() > 0.7
    exported = planted_table.to_frame()
    assert list(exported.columns[-2:]) == ["_prediction", "_label"] and set(exported["yellow-stamp"]) <= {0, 1}


def test_planted_concept_comes_out_on_top(planted_table):
    results = ConceptStatistics().fit(planted_table).results_
    assert list(results.columns) == list(RESULT_COLUMNS)
    singles = results[results["kind"].isin(["type", "attribute", "pair"])]
    shark = singles[singles["class"] == "shark"]
    assert set(shark.iloc[:3]["concept"]) == PLANTED
    assert shark.iloc[0]["cramers_v"] > 0.6 and shark.iloc[0]["p_value"] < 1e-10
    assert results[results["concept"] == "fin"].empty  # on every image: no signal
    assert singles[singles["class"] == "tench"].iloc[0]["concept"] in {"grass", "green", "green-grass"}
    # absence of the stamp is typical of the other classes, and combinations are named as queries
    nots = results[results["kind"] == "not"]
    assert {"NOT stamp"} <= set(nots.loc[nots["class"] == "lobster", "concept"])
    assert (results["kind"] == "and").any() and results.loc[results["kind"] == "and", "concept"].str.contains(" AND ").all()


def test_association_rules_rank_the_planted_concept_by_lift(planted_table):
    rules = AssociationRules(min_support=0.1, min_confidence=0.6).fit(planted_table).results_
    assert (rules["kind"] == "rule").all() and rules["lift"].is_monotonic_decreasing
    shark = rules[rules["class"] == "shark"]
    assert shark.iloc[0]["lift"] > 2.3 and set(shark.iloc[0]["concept"].split(" AND ")) <= PLANTED  # 1 / P(shark) = 3 is the ceiling
    assert (rules["support"] >= 0.1 - 1e-9).all() and (rules["confidence"] >= 0.6 - 1e-9).all()
    assert not rules["concept"].str.contains("shark|tench|lobster").any()  # bodies are concepts, never labels


def test_tree_rules_describe_leaves_with_accuracy_and_coverage(planted_table):
    trees = TreeRules(max_depth=2, min_samples_leaf=5).fit(planted_table).results_
    shark = trees[trees["class"] == "shark"].iloc[0]
    assert shark["concept"].split(" AND ")[0] in PLANTED and shark["confidence"] > 0.8  # the root splits on the planted stamp
    assert (trees["confidence"] > 0.5).all() and trees["coverage"].between(0, 1).all()
    assert (trees["kind"] == "tree").all()


def test_filter_keeps_typical_significant_rows_of_the_asked_kinds(planted_table):
    results = mine_concepts(planted_table)
    kept = filter_results(results)
    assert (kept["cramers_v"] >= 0.2).all() and (kept["p_value"] < 0.05).all() and len(kept) < len(results)
    pairs = filter_results(results, min_typicality=0.5, kinds=["pair"])
    assert set(pairs["kind"]) == {"pair"} and "yellow-stamp" in set(pairs["concept"])
    with pytest.raises(SliceScopeError, match="unknown kind"):
        filter_results(results, kinds=["<script>"])
    with pytest.raises(SliceScopeError, match="outside"):
        filter_results(results, min_typicality=2)


def test_bad_inputs_are_explained():
    annotations, images = planted_campaign(n_per_class=2)
    vocabulary = identity_vocabulary(annotations)
    with pytest.raises(SliceScopeError, match="no prediction"):
        build_concept_table(annotations, images.iloc[1:], vocabulary)
    with pytest.raises(SliceScopeError, match="not in the vocabulary"):
        build_concept_table(annotations.assign(entity_type="unheard of"), images, vocabulary)
    with pytest.raises(SliceScopeError, match="no box_id column"):
        build_concept_table(annotations.drop(columns="box_id"), images, vocabulary)
    with pytest.raises(SliceScopeError, match="outside"):
        AssociationRules(min_support=0)


def test_annotation_csv_carries_predictions_or_says_what_is_missing(tmp_path):
    annotations, images = planted_campaign(n_per_class=2)
    path = tmp_path / "annotations.csv"
    annotations.merge(images, on="image_id").to_csv(path, index=False)
    read, predictions = read_annotations_csv(path)
    assert len(read) == len(annotations)
    assert predictions.set_index("image_id")["prediction"].to_dict() == images.set_index("image_id")["prediction"].to_dict()
    assert read["attribute"].tolist() == annotations["attribute"].tolist()  # hostile text read as typed; bounded when normalised
    annotations.to_csv(path, index=False)
    with pytest.raises(SliceScopeError, match="no prediction column"):
        read_annotations_csv(path)
    annotations.assign(prediction=[str(i) for i in range(len(annotations))]).to_csv(path, index=False)
    with pytest.raises(SliceScopeError, match="different predictions"):
        read_annotations_csv(path)
    with pytest.raises(SliceScopeError, match="does not exist"):
        read_annotations_csv(tmp_path / "missing.csv")


def test_command_line_writes_findings_and_answers_queries(tmp_path, capsys):
    from core.cli import main

    annotations, images = planted_campaign()
    annotations.merge(images, on="image_id").to_csv(tmp_path / "annotations.csv", index=False)
    identity_vocabulary(annotations).terms.to_csv(tmp_path / "vocabulary.csv", index=False)
    command = ["concepts", str(tmp_path / "annotations.csv"), "--vocabulary", str(tmp_path / "vocabulary.csv"),
               "--out", str(tmp_path / "out.csv")]
    assert main([*command, "--table", str(tmp_path / "table.csv"), "--query", "stamp AND NOT grass"]) == 0
    findings = pd.read_csv(tmp_path / "out.csv")
    assert list(findings.columns) == list(RESULT_COLUMNS)
    assert findings[findings["kind"] == "query"]["class"].tolist() == ["shark", "lobster", "tench"]  # every class, by V
    mined = findings[findings["kind"] != "query"]
    shark = mined[(mined["class"] == "shark") & mined["kind"].isin(["type", "attribute", "pair"])]
    assert (mined["cramers_v"] >= 0.2).all() and shark.nlargest(1, "cramers_v")["concept"].iloc[0] in PLANTED
    assert pd.read_csv(tmp_path / "table.csv", index_col="image_id").shape[0] == 120
    assert "most typical of shark" in capsys.readouterr().out
    assert main([*command, "--query", "stmp"]) == 2
    assert "error: there is no concept 'stmp' — did you mean stamp" in capsys.readouterr().err


def test_slices_are_named_by_the_concepts_their_annotated_images_share(planted_table):
    # Slice 0: the shark images (85% carry the yellow stamp); slice 1: the rest; slice 2: two images, too few to describe.
    image_ids = planted_table.concepts.index
    slices = pd.Series(np.where(planted_table.prediction == "shark", 0, 1), index=image_ids)
    slices.iloc[-2:] = 2
    named = slice_concepts(planted_table, slices).set_index("slice")
    assert named.loc[0, "annotated"] == 40 and named.loc[2, "annotated"] == 2
    assert any(f"{concept} = yes" in named.loc[0, "concepts"] for concept in PLANTED), named.loc[0, "concepts"]
    assert named.loc[2, "concepts"] == ""
    unannotated = slice_concepts(planted_table, pd.Series({"not-annotated": 0}))
    assert unannotated.empty
    with pytest.raises(SliceScopeError, match="min_images"):
        slice_concepts(planted_table, slices, min_images=0)
