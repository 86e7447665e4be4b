"""Validation queries: boolean expressions over concepts, answered with the mining statistics.

Grammar (NOT binds tighter than AND, AND tighter than OR; keywords in any case)::

    query  := and ("OR" and)*
    and    := factor ("AND" factor)*
    factor := "NOT" factor | "(" query ")" | CONCEPT

A concept is any run of characters other than spaces and parentheses, matched
against the table's column names ("yellow-stamp", "fish_body"). The parser is a
few lines of recursive descent rather than pyparsing or boolean.py: neither is a
dependency of ours, and owning the parser lets every mistake (an unknown concept,
a missing parenthesis) become a one-line SliceScopeError with its fix. Text is
never evaluated as Python; its length and nesting are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import get_close_matches

import numpy as np
import pandas as pd

from core.concepts.mining import concept_statistics
from core.concepts.table import ConceptTable
from core.errors import SliceScopeError

MAX_QUERY_CHARS = 500
MAX_DEPTH = 32
KEYWORDS = ("AND", "OR", "NOT")
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_EXAMPLE = "e.g. stamp AND NOT (fish_body OR fin)"


@dataclass(frozen=True)
class Concept:
    name: str


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


Node = Concept | Not | And | Or


def _shown(token: str) -> str:
    return token if len(token) <= 40 else f"{token[:40]}…"


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.position = tokens, 0

    def accept(self, keyword: str) -> bool:
        if self.position < len(self.tokens) and self.tokens[self.position].upper() == keyword:
            self.position += 1
            return True
        return False

    def next(self, expected: str) -> str:
        if self.position == len(self.tokens):
            raise SliceScopeError(f"the query ends where {expected} should follow", _EXAMPLE)
        self.position += 1
        return self.tokens[self.position - 1]

    def any_of(self, depth: int) -> Node:
        node = self.all_of(depth)
        while self.accept("OR"):
            node = Or(node, self.all_of(depth))
        return node

    def all_of(self, depth: int) -> Node:
        node = self.factor(depth)
        while self.accept("AND"):
            node = And(node, self.factor(depth))
        return node

    def factor(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise SliceScopeError(f"the query nests NOT and parentheses more than {MAX_DEPTH} deep", "write it flatter")
        token = self.next("a concept")
        if token.upper() == "NOT":
            return Not(self.factor(depth + 1))
        if token == "(":
            node = self.any_of(depth + 1)
            if self.next("')'") != ")":
                raise SliceScopeError(f"'{_shown(self.tokens[self.position - 1])}' stands where ')' should close a parenthesis", _EXAMPLE)
            return node
        if token == ")" or token.upper() in KEYWORDS:
            raise SliceScopeError(f"'{_shown(token)}' stands where a concept should be", _EXAMPLE)
        return Concept(token.lower())


def parse_query(text: str) -> Node:
    """The query's syntax tree; a SliceScopeError for anything that is not a query."""
    if not isinstance(text, str) or not text.strip():
        raise SliceScopeError("the query is empty", f"name concepts joined by AND, OR and NOT, {_EXAMPLE}")
    if len(text) > MAX_QUERY_CHARS:
        raise SliceScopeError(f"the query is {len(text)} characters long", f"keep it under {MAX_QUERY_CHARS}")
    parser = _Parser(_TOKEN.findall(text))
    node = parser.any_of(0)
    if parser.position < len(parser.tokens):
        raise SliceScopeError(
            f"'{_shown(parser.tokens[parser.position])}' follows a complete query",
            f"join parts with AND or OR, {_EXAMPLE}",
        )
    return node


def format_query(node: Node) -> str:
    """Canonical text: upper-case keywords, parentheses only where needed (mined rules read the same way)."""
    match node:
        case Concept(name):
            return name
        case Not(operand):
            inner = format_query(operand)
            return f"NOT {inner}" if isinstance(operand, Concept | Not) else f"NOT ({inner})"
        case And(left, right):
            return " AND ".join(f"({format_query(part)})" if isinstance(part, Or) else format_query(part) for part in (left, right))
        case Or(left, right):
            return f"{format_query(left)} OR {format_query(right)}"


def evaluate(node: Node, concepts: pd.DataFrame) -> np.ndarray:
    """Which images (rows of ``concepts``) satisfy the query."""
    match node:
        case Concept(name):
            if name not in concepts.columns:
                near = get_close_matches(name, [str(column) for column in concepts.columns], n=3)
                hint = f"did you mean {', '.join(near)}?" if near else "use a concept of the table (see the vocabulary)"
                raise SliceScopeError(f"there is no concept '{_shown(name)}'", hint)
            return concepts[name].to_numpy(dtype=bool)
        case Not(operand):
            return ~evaluate(operand, concepts)
        case And(left, right):
            return evaluate(left, concepts) & evaluate(right, concepts)
        case Or(left, right):
            return evaluate(left, concepts) | evaluate(right, concepts)


def query_concepts(table: ConceptTable, text: str) -> pd.DataFrame:
    """The query's statistics for every predicted class (``RESULT_COLUMNS``, kind "query")."""
    node = parse_query(text)
    column = pd.DataFrame({format_query(node): evaluate(node, table.concepts)}, index=table.concepts.index)
    return concept_statistics(column, table.prediction, "query", typical_only=False)
