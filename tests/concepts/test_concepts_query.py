"""SECA validation queries: parsing (precedence, errors, hostile text) and answers with the mining statistics."""

from __future__ import annotations

import math

import pytest

from core.concepts import ConceptStatistics, TreeRules, parse_query, query_concepts
from core.concepts.query import And, Concept, Not, Or, evaluate, format_query
from core.errors import SliceScopeError
from tests.concepts.test_concepts_mining import planted_concept_table, tiny_table

planted_table = pytest.fixture(planted_concept_table, scope="module", name="planted_table")


def test_precedence_is_not_then_and_then_or():
    assert parse_query("a OR b and not c") == Or(Concept("a"), And(Concept("b"), Not(Concept("c"))))
    assert parse_query("(a or b) AND c") == And(Or(Concept("a"), Concept("b")), Concept("c"))
    assert parse_query("NOT NOT Yellow-Stamp") == Not(Not(Concept("yellow-stamp")))
    for text in ("stamp AND NOT fish_body", "(a OR b) AND NOT (c OR d)", "NOT a AND b AND NOT c", "a OR b OR c"):
        assert format_query(parse_query(text)) == text


def test_answer_is_the_statistics_of_the_query_column(planted_table):
    concepts = planted_table.concepts
    answer = query_concepts(planted_table, "stamp and not (grass or water)").set_index("class")
    assert answer["concept"].unique().tolist() == ["stamp AND NOT (grass OR water)"] and (answer["kind"] == "query").all()
    expected = concepts["stamp"] & ~(concepts["grass"] | concepts["water"])
    assert answer.loc["shark", "n_images"] == expected.sum()
    assert answer.loc["shark", "frequency"] == pytest.approx(expected[planted_table.prediction == "shark"].mean())
    assert set(answer.index) == {"shark", "tench", "lobster"}  # every class answers, typical or not
    assert answer.loc["shark", "cramers_v"] > 0.4 and answer.loc["shark", "p_value"] < 1e-6


def test_query_matches_hand_computed_values():
    # stamp × class a is [[4, 1], [1, 4]]: chi² = 3.6, V = 0.6 for both classes (V ignores direction)
    answer = query_concepts(tiny_table(), "stamp OR NOT fin").set_index("class")
    assert answer.loc["a", "cramers_v"] == pytest.approx(0.6) and answer.loc["b", "cramers_v"] == pytest.approx(0.6)
    assert answer.loc["a", "p_value"] == pytest.approx(math.erfc(math.sqrt(1.8)))
    assert answer.loc["a", "lift"] == pytest.approx(1.6) and answer.loc["b", "lift"] == pytest.approx(0.4)
    assert math.isnan(query_concepts(tiny_table(), "fin").loc[0, "p_value"])  # on every image: nothing to test


def test_mined_combinations_read_back_as_queries(planted_table):
    mined = [ConceptStatistics().fit(planted_table).results_, TreeRules(max_depth=2).fit(planted_table).results_]
    for results in mined:
        for row in results[results["kind"].isin(["and", "not", "tree"])].head(5).to_dict("records"):
            again = query_concepts(planted_table, row["concept"]).set_index("class").loc[row["class"]]
            assert again["concept"] == row["concept"] and again["cramers_v"] == pytest.approx(row["cramers_v"])


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    (None, "empty"),
    ("stmp AND NOT grass", "no concept 'stmp' — did you mean stamp"),
    ("__import__('os').system('echo pwned')", "'(' follows a complete query"),
    ("<script>alert(1)</script>", "'(' follows a complete query"),
    ("<script>", "no concept '<script>'"),
    ("grass'; DROP TABLE concepts; --", "'DROP' follows a complete query"),
    ("grass';", "no concept 'grass';'"),
    ("🦈 OR grass", "no concept '🦈'"),
    ("x" * 10_000, "characters long"),
    ("(" * 40 + "stamp" + ")" * 40, "more than 32 deep"),
    ("NOT " * 100 + "stamp", "more than 32 deep"),
    ("stamp AND", "ends where a concept"),
    ("(stamp OR grass", "ends where ')'"),
    ("stamp grass", "'grass' follows a complete query"),
    ("stamp AND OR grass", "'OR' stands where a concept"),
    (") stamp", "')' stands where a concept"),
])
def test_bad_queries_are_one_line_errors(planted_table, text, message):
    with pytest.raises(SliceScopeError, match="^.*$") as caught:
        query_concepts(planted_table, text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_evaluation_uses_only_table_columns(planted_table):
    column = evaluate(parse_query("grass OR water"), planted_table.concepts)
    assert column.dtype == bool and (column == (planted_table.concepts["grass"] | planted_table.concepts["water"])).all()
