"""SECA reconciliation: normalising, spelling, singular, clustering, the editable vocabulary, the embedders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.concepts import (
    AssociationRules,
    ConceptStatistics,
    FastTextEmbedder,
    MiniLMEmbedder,
    Vocabulary,
    build_concept_table,
    normalise_term,
    reconcile,
)
from core.concepts.annotations import MAX_SHOWN_TERM_CHARS, MAX_TERM_CHARS, MAX_WORD_CHARS
from core.concepts.reconcile import Speller, campaign_words, cluster_words
from core.errors import SliceScopeError
from tests.concepts.test_concepts_mining import HOSTILE, PLANTED, identity_vocabulary, planted_campaign

# Canonical spellings are typed by two workers (so they are the campaign's own words); variants by one.
GROUPS = {
    "tooth": ["tooth", "teeth", "Teeth "],
    "belly": ["belly", "stomach"],
    "grey": ["grey", "gray"],
    "water": ["water", "watter", "waters", "WATER!"],
    "sea": ["sea", "ocean", "seas"],
    "fish body": ["fish body", "fish bodies", "fish  Body"],
}
DISTINCT = ["yellow", "white", "black", "red", "blue", "stamp", "fin", "claw", "plate", "grass"]


def campaign(terms_by_worker: dict[str, list[str]]) -> pd.DataFrame:
    rows = [{"image_id": f"img{index}", "worker_id": worker, "box_id": "0", "entity_type": term, "attribute": ""}
            for worker, terms in terms_by_worker.items() for index, term in enumerate(terms)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(device="cpu")


def test_terms_are_normalised_and_bounded():
    assert normalise_term("  Fish-Bodies!! ") == "fish bodies"
    assert normalise_term("the <b>Yellow</b> stamp") == "b yellow b stamp"
    assert normalise_term("ｓｔａｍｐ") == "stamp"  # full-width letters fold (NFKC)
    for hostile in HOSTILE:
        assert len(normalise_term(hostile)) <= MAX_TERM_CHARS and "<" not in normalise_term(hostile)
    assert normalise_term("x" * 10_000) == "" and normalise_term("🦈🌊") == "" and normalise_term(None) == ""


def test_spelling_prefers_the_campaign_vocabulary():
    annotations = campaign({"w1": ["zorbfin", "watter"], "w2": ["zorbfin"], "w3": ["zorbfim", "zorbfim"]})
    words = campaign_words(annotations)
    assert words == {"zorbfin": 2}  # zorbfim: two rows, but one worker
    speller = Speller(words)
    assert speller.correct("zorbfim") == "zorbfin" and Speller({}).correct("zorbfim") != "zorbfin"
    assert speller.correct("watter") == "water" and speller.correct("stomac") == "stomach"
    assert speller.correct("teh") == "teh"  # never into a glue word
    assert speller.correct("2021") == "2021"  # numbers are not misspelt words
    assert [speller.singular(word) for word in ("teeth", "waters", "bus", "this", "grass")] == ["tooth", "water", "bus", "this", "grass"]


def test_a_misspelling_shared_by_a_few_workers_yields_to_the_common_word():
    many = {f"w{index}": ["water", "zorbfin"] for index in range(10)}
    few = {"x1": ["watter", "zorbfit"], "x2": ["watter", "zorbfit"]}
    words = campaign_words(campaign({**many, **few}))
    assert words["watter"] == 2 and words["water"] == 10
    speller = Speller(words)
    assert speller.correct("watter") == "water" and speller.correct("zorbfit") == "zorbfin"
    close_rivals = Speller({"zorbfin": 3, "zorbfit": 2, "water": 9, "watter": 2})
    assert close_rivals.correct("zorbfit") == "zorbfit"  # 3 against 2 workers: two words, not one misspelt
    assert close_rivals.correct("watter") == "watter"  # 9 against 2: under five times as many
    assert Speller({"teh": 2, "the": 40}).correct("teh") == "teh"  # never into a glue word


def test_typos_plurals_and_synonyms_collapse_into_their_groups(minilm):
    canonical = [terms[0] for terms in GROUPS.values()] + DISTINCT
    variants = [term for terms in GROUPS.values() for term in terms[1:]]
    annotations = campaign({"w1": canonical + variants, "w2": canonical, "w3": HOSTILE})
    vocabulary = reconcile(annotations, minilm)
    concept = vocabulary.mapping()
    for group in GROUPS.values():
        assert len({concept[normalise_term(term)] for term in group}) == 1, group
    named = [concept[normalise_term(terms[0])] for terms in GROUPS.values()] + [concept[term] for term in DISTINCT]
    assert len(set(named)) == len(named)  # colours, body parts and backgrounds stay apart
    assert concept["fish body"] == "fish_body" and concept["water"] == "water"
    assert concept[normalise_term("teeth")] == "tooth"
    # hostile text: the long and the emoji ones vanish, markup and SQL become plain words
    assert set(vocabulary.terms["term"]).isdisjoint({"", normalise_term("x" * 10_000)})
    assert all(len(name) < 80 and name.replace("_", "").isalnum() for name in vocabulary.terms["concept"])


def test_cluster_choice_keeps_cohesive_groups_and_names_them_by_use():
    basis = np.eye(8)
    spread = [basis[0], basis[0] + 0.2 * basis[6], basis[0] - 0.2 * basis[6],  # w0 sits at its group's centre
              basis[1] + 0.2 * basis[7], basis[1] - 0.2 * basis[7],  # w3, w4 equally near theirs
              basis[2] + 0.2 * basis[6], basis[2], basis[2] - 0.2 * basis[6]]
    vectors = np.array(spread) / np.linalg.norm(spread, axis=1, keepdims=True)
    words = [f"w{i}" for i in range(8)]
    counts = np.array([1, 5, 5, 2, 7, 1, 1, 1])
    clustering = cluster_words(vectors, words, counts, min_similarity=0.9)
    names = [clustering.names[label] for label in clustering.labels]
    assert names == ["w0"] * 3 + ["w4"] * 2 + ["w6"] * 3  # nearest the centroid; on a tie, the most used
    strict = cluster_words(vectors, words, counts, min_similarity=0.99)
    assert strict.names == words  # nothing that close: every word stays its own concept


def test_vocabulary_edits_rename_merge_split():
    annotations = campaign({"w1": ["sea", "ocean", "lake", "fish"], "w2": ["fish"]})
    vocabulary = identity_vocabulary(annotations).merge(["sea", "ocean", "lake"], "Water Body")
    assert vocabulary.mapping() == {"fish": "fish", "lake": "water_body", "ocean": "water_body", "sea": "water_body"}
    split = vocabulary.split("water_body", ["Lake"], "lake")
    assert split.mapping()["lake"] == "lake" and split.mapping()["sea"] == "water_body"
    renamed = split.rename("water_body", "sea")
    assert set(renamed.concepts["concept"]) == {"fish", "lake", "sea"}
    assert renamed.concepts.set_index("concept").loc["sea", "terms"] in {"ocean, sea", "sea, ocean"}
    with pytest.raises(SliceScopeError, match="did you mean water_body"):
        vocabulary.rename("water_bdy", "x")
    with pytest.raises(SliceScopeError, match="not a term of water_body"):
        vocabulary.split("water_body", ["fish"], "x")
    with pytest.raises(SliceScopeError, match="not a usable concept name"):
        vocabulary.rename("fish", "🐟 <>")


def test_vocabulary_round_trips_through_csv(tmp_path):
    vocabulary = identity_vocabulary(campaign({"w1": ["sea", "fish"]})).rename("sea", "water")
    path = tmp_path / "vocabulary.csv"
    vocabulary.terms.to_csv(path, index=False)
    assert Vocabulary.read_csv(path).mapping() == vocabulary.mapping()
    path.write_text("term,concept\nsea,water\n")
    with pytest.raises(SliceScopeError, match="no words, count, workers column"):
        Vocabulary.read_csv(path)
    with pytest.raises(SliceScopeError, match="does not exist"):
        Vocabulary.read_csv(tmp_path / "missing.csv")


def test_reconciled_planted_concept_is_top_by_cramers_v_and_lift(minilm):
    annotations, images = planted_campaign()
    # one careless worker misspells the stamp on a third of its rows
    careless = (annotations["worker_id"] == "w2") & (annotations["entity_type"] == "stamp") & (annotations.index % 3 == 0)
    annotations.loc[careless, ["entity_type", "attribute"]] = ["Stamps", "yelow"]
    table = build_concept_table(annotations, images, reconcile(annotations, minilm))
    assert not {"stamps", "yelow"} & set(table.concepts.columns)
    stats = ConceptStatistics().fit(table).results_
    shark = stats[(stats["class"] == "shark") & stats["kind"].isin(["type", "attribute", "pair"])]
    assert set(shark.iloc[:3]["concept"]) == PLANTED
    rules = AssociationRules().fit(table).results_
    assert set(rules.iloc[0]["concept"].split(" AND ")) <= PLANTED and rules.iloc[0]["class"] == "shark" and rules.iloc[0]["lift"] > 2.3


def test_fasttext_embedder_reads_a_trained_model(tmp_path):
    import fasttext

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the shark swims in blue water . a grey shark fin in the sea . the red lobster claw on a plate .\n" * 100)
    model = fasttext.train_unsupervised(str(corpus), model="skipgram", dim=16, epoch=5, minCount=1, thread=1, verbose=0)
    model.save_model(str(tmp_path / "words.bin"))
    embedder = FastTextEmbedder(tmp_path / "words.bin", min_similarity=0.999)
    vectors = embedder.embed(["shark", "watter", "claw"])
    assert vectors.shape == (3, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1)  # sub-words embed the typo too
    vocabulary = reconcile(campaign({"w1": ["shark", "fin", "claw", "plate"], "w2": ["shark"]}), embedder)
    assert set(vocabulary.terms["concept"]) == {"shark", "fin", "claw", "plate"}
    with pytest.raises(SliceScopeError, match="does not exist"):
        FastTextEmbedder(tmp_path / "missing.bin")
    with pytest.raises(SliceScopeError, match="not a fastText model"):
        FastTextEmbedder(corpus)


def test_reconcile_explains_unusable_input(minilm):
    with pytest.raises(SliceScopeError, match="no worker_id column"):
        reconcile(pd.DataFrame({"image_id": ["a"], "box_id": ["0"], "entity_type": ["x"], "attribute": [""]}), minilm)
    with pytest.raises(SliceScopeError, match="no annotation has a usable"):
        reconcile(campaign({"w1": ["", "🦈", "x" * 10_000]}), minilm)


def test_reconcile_lists_the_terms_it_drops_and_why(minilm):
    long_word = "zorb" * 16  # one 64-character word: the worker app accepts it, no concept can come from it
    annotations = campaign({"w1": ["stamp", "water", "🦈🌊", long_word, "the", ""], "w2": ["stamp", "water", "🦈🌊", "Stamps"]})
    vocabulary = reconcile(annotations, minilm)
    assert set(vocabulary.terms["term"]) == {"stamp", "stamps", "water"}
    assert set(vocabulary.terms["concept"]) == {"stamp", "water"}
    dropped = vocabulary.dropped.set_index("term")
    assert list(dropped.columns) == ["count", "workers", "reason"]
    assert dropped.loc["🦈🌊"].tolist() == [2, 2, "no letters or digits: emoji or symbols only"]
    shown = f"{long_word[:MAX_SHOWN_TERM_CHARS]}…"  # bounded for display: it is hostile text
    assert dropped.loc[shown].tolist() == [1, 1, f"a word longer than {MAX_WORD_CHARS} letters"]
    assert dropped.loc["the", "reason"].startswith("only filler words")
    assert len(dropped) == 3  # an empty attribute is no term, so nothing is dropped for it
    assert vocabulary.rename("stamp", "mark").dropped.equals(vocabulary.dropped)  # edits keep the list


def test_command_line_names_the_dropped_terms_in_one_line(tmp_path, capsys):
    from core.cli import main

    annotations, images = planted_campaign()  # a third of its rows carry a hostile attribute
    annotations.merge(images, on="image_id").to_csv(tmp_path / "annotations.csv", index=False)
    identity_vocabulary(annotations).terms.to_csv(tmp_path / "vocabulary.csv", index=False)
    assert main(["concepts", str(tmp_path / "annotations.csv"), "--vocabulary", str(tmp_path / "vocabulary.csv"),
                 "--out", str(tmp_path / "out.csv")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dropped")]
    assert len(lines) == 1 and lines[0].startswith("dropped 2 typed terms no concept can come from: ")
    assert "'🦈🌊' ×" in lines[0] and "(no letters or digits: emoji or symbols only)" in lines[0]
    assert f"'{'x' * MAX_SHOWN_TERM_CHARS}…' ×" in lines[0] and f"(a word longer than {MAX_WORD_CHARS} letters)" in lines[0]
