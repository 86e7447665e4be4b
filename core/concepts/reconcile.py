"""C3, annotation reconciliation: typed terms → a vocabulary of concepts.

Each word of each term is normalised (:func:`term_words`), spell-corrected and
singularised; the distinct words are embedded and clustered with K-Means, and
each cluster is named by its word nearest the centroid. A term maps to the
concept of its word, or for several words to their concepts joined by ``_``
("front light" → ``front_light``), as the paper's "super cluster".

Spelling: SymSpell with its bundled English frequency dictionary plus the
campaign's own vocabulary (words typed by at least two workers), which wins ties
so that domain words ("lobster", "tench") are not "corrected" into common ones.
A campaign word that is not English still yields to a campaign word within
reach that many times more workers typed: "watter" from 2 workers beside
"water" from 20 is one misspelling made twice, not a domain word.
Singular forms come from ``inflect`` and are kept only when they are known
words, since inflect strips any final "s" ("bus" → "bu"); it still turns a few
plural-only nouns singular ("lens" → "len", "shorts" → "short"), which the
analyst undoes with :meth:`Vocabulary.split` or :meth:`Vocabulary.rename`.

A term with no usable word (emoji, one over-long word, filler words only) can
become no concept; rather than vanish, it is listed in :attr:`Vocabulary.dropped`
with how many used it and why.

Choosing k: the paper takes the k whose clusters have no negative mean
silhouette and silhouettes as uniform as possible. On sentence embeddings of
single words that alone prefers a few large clusters (every colour in one,
every body part in another), which would erase exactly the distinctions the
analysis needs (yellow vs white stamps). So a clustering is admissible only if
no cluster has a negative mean silhouette *and* every word is within the
embedder's ``min_similarity`` of its cluster's name; among admissible k the best
mean silhouette wins, and near-ties go to the most even cluster sizes. When no
k is admissible every word stays its own concept: merging is left to the analyst.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from core.concepts.annotations import (
    FILLER_WORDS,
    concept_name,
    normalise_term,
    shown_term,
    term_words,
    validate_annotations,
    why_no_words,
)
from core.concepts.embed import Embedder, MiniLMEmbedder
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent

VOCABULARY_COLUMNS = ("term", "words", "concept", "count", "workers")
DROPPED_COLUMNS = ("term", "count", "workers", "reason")
CAMPAIGN_MIN_WORKERS = 2
TYPO_DOMINANCE = 5  # a campaign word yields to a neighbour typed by this many times more workers
MAX_K_CANDIDATES = 40  # K-Means fits per reconciliation, spread over 2..n-1
SILHOUETTE_TOLERANCE = 0.01  # silhouettes this close count as a tie, decided by evenness


def _max_edit_distance(word: str) -> int:
    return 1 if len(word) <= 4 else 2  # two edits turn most short words into other words


@functools.cache
def _english_speller():
    from symspellpy import SymSpell

    speller = SymSpell(max_dictionary_edit_distance=2, prefix_length=5)  # prefix 5 loads 3× faster than 7, same results
    dictionary = files("symspellpy") / "frequency_dictionary_en_82_765.txt"
    if not speller.load_dictionary(str(dictionary), term_index=0, count_index=1):
        raise RuntimeError(f"symspellpy's dictionary is missing at {dictionary}")
    return speller


@functools.cache
def _inflect_engine():
    import inflect

    return inflect.engine()


class Speller:
    """Spell correction and singularisation against English plus a campaign's own words."""

    def __init__(self, campaign_words: Mapping[str, int]):
        """``campaign_words``: word → how many workers typed it."""
        from symspellpy import SymSpell

        self.english = _english_speller()
        self.campaign = SymSpell(max_dictionary_edit_distance=2, prefix_length=5)
        for word, workers in campaign_words.items():
            self.campaign.create_dictionary_entry(word, workers)

    def known(self, word: str) -> bool:
        return word in self.campaign.words or word in self.english.words

    def correct(self, word: str) -> str:
        """The closest known word ("watter" → "water"); the word itself if known, numeric or too far from anything."""
        from symspellpy import Verbosity

        if word in self.english.words or any(character.isdigit() for character in word):
            return word
        if word in self.campaign.words:
            own = self.campaign.words[word]
            rivals = [suggestion for suggestion in self.campaign.lookup(word, Verbosity.ALL, max_edit_distance=_max_edit_distance(word))
                      if suggestion.count >= TYPO_DOMINANCE * own and suggestion.term not in FILLER_WORDS]
            return min(rivals, key=lambda suggestion: (suggestion.distance, -suggestion.count)).term if rivals else word
        best = None
        for speller in (self.campaign, self.english):  # campaign first: it wins ties
            suggestions = speller.lookup(word, Verbosity.CLOSEST, max_edit_distance=_max_edit_distance(word))
            if suggestions and (best is None or suggestions[0].distance < best.distance):
                best = suggestions[0]
        return word if best is None or best.term in FILLER_WORDS else best.term  # "teh" must not become "the"

    def singular(self, word: str) -> str:
        singular = _inflect_engine().singular_noun(word) if word.isalpha() else False
        return singular if singular and singular not in FILLER_WORDS and self.known(singular) else word


def campaign_words(annotations: pd.DataFrame, min_workers: int = CAMPAIGN_MIN_WORKERS) -> dict[str, int]:
    """Words typed (as type or attribute) by at least ``min_workers`` distinct workers, with how many typed each."""
    used = [
        (word, worker)
        for column in ("entity_type", "attribute")
        for raw, worker in zip(annotations[column], annotations["worker_id"])
        for word in term_words(raw)
    ]
    pairs = pd.DataFrame(used, columns=["word", "worker"]).drop_duplicates()
    counts = pairs["word"].value_counts()
    return {str(word): int(count) for word, count in counts[counts >= min_workers].items()}


@dataclass(frozen=True)
class Clustering:
    """Word clusters: ``names[labels[i]]`` is word i's concept."""

    labels: np.ndarray
    names: list[str]


def _names(vectors: np.ndarray, labels: np.ndarray, words: Sequence[str], counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each cluster's name (its word nearest the centroid; equally near → the more used) and each word's similarity to it."""
    names, similarity = [], np.zeros(len(words))
    for cluster in range(labels.max() + 1):
        members = np.flatnonzero(labels == cluster)
        closeness = np.round(vectors[members] @ vectors[members].mean(axis=0), 6)  # a pair is equally near: rounding lets use decide
        name = members[np.lexsort((-counts[members], -closeness))[0]]
        names.append(words[name])
        similarity[members] = vectors[members] @ vectors[name]
    return names, similarity


def cluster_words(vectors: np.ndarray, words: Sequence[str], counts: np.ndarray, min_similarity: float, seed: int = 0,
                  progress: ProgressFn | None = None) -> Clustering:
    """K-Means over unit word vectors with k chosen by silhouette under the cohesion rule (module docstring)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_samples

    n = len(words)
    singletons = Clustering(np.arange(n), list(words))
    if n < 3:
        return singletons
    report = progress or silent
    candidates = np.unique(np.linspace(2, n - 1, min(MAX_K_CANDIDATES, n - 2)).round().astype(int))
    admissible = []
    for done, k in enumerate(candidates, start=1):
        # Repeated vectors can leave clusters empty: number the filled ones 0..k_found-1.
        labels = np.unique(KMeans(n_clusters=int(k), n_init=3, random_state=seed).fit_predict(vectors), return_inverse=True)[1]
        k_found = labels.max() + 1
        if 2 <= k_found < n:
            scores = silhouette_samples(vectors, labels, metric="cosine")
            per_cluster = np.bincount(labels, weights=scores) / np.bincount(labels)
            names, similarity = _names(vectors, labels, words, counts)
            if per_cluster.min() >= 0 and similarity.min() >= min_similarity:
                sizes = np.bincount(labels)
                admissible.append((float(scores.mean()), float(sizes.std() / sizes.mean()), labels, names))
        report("clustering terms", done, len(candidates))
    if not admissible:
        return singletons
    best = max(score for score, *_ in admissible)
    near_best = [entry for entry in admissible if entry[0] >= best - SILHOUETTE_TOLERANCE]
    _, _, labels, names = min(near_best, key=lambda entry: (entry[1], -entry[0]))  # most even sizes, then best silhouette
    return Clustering(labels, names)


def _typed_terms(annotations: pd.DataFrame) -> pd.DataFrame:
    """Every typed entity type and attribute: ``raw`` (as typed), ``worker``, ``term`` (normalised; "" when it has no word)."""
    typed = pd.concat([annotations[["entity_type", "worker_id"]].set_axis(["raw", "worker"], axis=1),
                       annotations[["attribute", "worker_id"]].set_axis(["raw", "worker"], axis=1)], ignore_index=True)
    return typed.assign(term=typed["raw"].map(normalise_term))


def _dropped(typed: pd.DataFrame) -> pd.DataFrame:
    """The :attr:`Vocabulary.dropped` table of :func:`_typed_terms`: its wordless terms, grouped as shown, most used first."""
    wordless = typed[typed["term"] == ""]
    wordless = wordless.assign(shown=wordless["raw"].map(shown_term))
    wordless = wordless[wordless["shown"] != ""]  # an empty attribute is no term, and nothing was lost
    dropped = wordless.groupby("shown").agg(count=("raw", "size"), workers=("worker", "nunique"), raw=("raw", "first"))
    dropped = dropped.assign(reason=dropped["raw"].map(why_no_words)).rename_axis("term").reset_index()
    return dropped.sort_values(["count", "term"], ascending=[False, True], ignore_index=True)[list(DROPPED_COLUMNS)]


def dropped_terms(annotations: pd.DataFrame) -> pd.DataFrame:
    """The typed terms of ``annotations`` that can become no concept, as in :attr:`Vocabulary.dropped`."""
    return _dropped(_typed_terms(validate_annotations(annotations)))


@dataclass(frozen=True)
class Vocabulary:
    """Typed term → concept, one row per normalised term, editable (every edit returns a new vocabulary).

    ``terms`` columns: ``term`` (:func:`normalise_term` of what workers typed),
    ``words`` (after spelling and singular), ``concept`` (its concept's name: words
    joined by ``_``), ``count`` (annotation values using the term), ``workers``
    (distinct workers who typed it). Edits act on whole terms: renaming ``fish``
    leaves ``fish_body`` as it is.

    ``dropped``: the typed terms no concept can come from, one row each, so that they
    do not vanish unseen: ``term`` (as typed, made fit to show by :func:`shown_term`),
    ``count``, ``workers`` and ``reason`` (plain English). :func:`reconcile` fills it
    and edits keep it; a vocabulary read from CSV has none (see :func:`dropped_terms`).
    """

    terms: pd.DataFrame
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(DROPPED_COLUMNS)))

    def __post_init__(self):
        missing = [column for column in VOCABULARY_COLUMNS if column not in self.terms.columns]
        if missing:
            raise SliceScopeError(
                f"the vocabulary has no {', '.join(missing)} column",
                f"a vocabulary has the columns {', '.join(VOCABULARY_COLUMNS)}",
            )
        frame = self.terms[list(VOCABULARY_COLUMNS)].astype({"term": str, "words": str, "concept": str, "count": int, "workers": int})
        frame = frame.assign(term=frame["term"].map(normalise_term), concept=frame["concept"].map(concept_name))
        if frame["term"].duplicated().any():
            raise SliceScopeError(
                f"the term {frame['term'][frame['term'].duplicated()].iloc[0]!r} appears twice in the vocabulary",
                "keep one row per term",
            )
        object.__setattr__(self, "terms", frame.sort_values(["concept", "count", "term"], ascending=[True, False, True], ignore_index=True))

    @classmethod
    def read_csv(cls, path: Path) -> Vocabulary:
        try:
            return cls(pd.read_csv(path, dtype={"term": str, "words": str, "concept": str}, keep_default_na=False))
        except FileNotFoundError:
            raise SliceScopeError(f"vocabulary {path} does not exist", "write one with `save_vocabulary` first") from None
        except (ValueError, pd.errors.ParserError) as error:
            raise SliceScopeError(
                f"{path} is not a vocabulary CSV ({str(error).splitlines()[0][:80]})",
                "edit the file `save_vocabulary` wrote, keeping its columns",
            ) from None

    @property
    def concepts(self) -> pd.DataFrame:
        """One row per concept: ``concept``, ``terms`` (comma-separated, most used first), ``count``."""
        grouped = self.terms.groupby("concept", sort=True)
        return pd.DataFrame({"terms": grouped["term"].agg(", ".join), "count": grouped["count"].sum()}).reset_index()

    def mapping(self) -> dict[str, str]:
        """Normalised term → concept."""
        return dict(zip(self.terms["term"], self.terms["concept"]))

    def _require(self, concepts: Iterable[str]) -> None:
        known = set(self.terms["concept"])
        for concept in concepts:
            if concept not in known:
                near = get_close_matches(str(concept), known, n=3)
                hint = f"did you mean {', '.join(near)}?" if near else "pick a concept from the vocabulary"
                raise SliceScopeError(f"the vocabulary has no concept '{str(concept)[:40]}'", hint)

    def _relabel(self, rows: pd.Series, concept: str) -> Vocabulary:
        return replace(self, terms=self.terms.assign(concept=self.terms["concept"].where(~rows, concept_name(concept))))

    def rename(self, concept: str, new_name: str) -> Vocabulary:
        """Give a concept another name (a name already in use merges the two)."""
        self._require([concept])
        return self._relabel(self.terms["concept"] == concept, new_name)

    def merge(self, concepts: Sequence[str], into: str) -> Vocabulary:
        """Map every term of ``concepts`` to one concept named ``into``."""
        self._require(concepts)
        return self._relabel(self.terms["concept"].isin(list(concepts)), into)

    def split(self, concept: str, terms: Sequence[str], new_name: str) -> Vocabulary:
        """Move some of a concept's terms (as typed or normalised) to a concept named ``new_name``."""
        self._require([concept])
        keys = {normalise_term(term) for term in terms}
        own = set(self.terms.loc[self.terms["concept"] == concept, "term"])
        foreign = sorted(keys - own)
        if foreign:
            raise SliceScopeError(f"'{foreign[0][:40]}' is not a term of {concept}", f"its terms are: {', '.join(sorted(own))[:200]}")
        return self._relabel(self.terms["term"].isin(keys), new_name)


def reconcile(annotations: pd.DataFrame, embedder: Embedder | None = None, min_similarity: float | None = None, seed: int = 0,
              progress: ProgressFn | None = None) -> Vocabulary:
    """Build the vocabulary of an annotation table (schema in :mod:`core.concepts.annotations`)."""
    annotations = validate_annotations(annotations)
    embedder = embedder or MiniLMEmbedder()
    threshold = embedder.min_similarity if min_similarity is None else min_similarity
    report = progress or silent

    typed = _typed_terms(annotations)
    dropped = _dropped(typed)
    typed = typed[typed["term"] != ""]
    if typed.empty:
        raise SliceScopeError(
            "no annotation has a usable entity type or attribute",
            "annotations need words (letters or digits) in entity_type or attribute",
        )
    terms = typed.groupby("term").agg(count=("raw", "size"), workers=("worker", "nunique")).reset_index()

    speller = Speller(campaign_words(annotations))
    raw_words = sorted({word for term in terms["term"] for word in term.split()})
    fixed = {}
    for done, word in enumerate(raw_words, start=1):
        fixed[word] = speller.singular(speller.correct(word))
        report("correcting spelling", done, len(raw_words))
    terms["words"] = terms["term"].map(lambda term: " ".join(fixed[word] for word in term.split()))

    word_counts = terms.assign(word=terms["words"].str.split()).explode("word").groupby("word")["count"].sum()
    words = list(word_counts.index)
    report("embedding terms", 0, 1)
    vectors = embedder.embed(words)
    report("embedding terms", 1, 1)
    if vectors.shape[0] != len(words):
        raise RuntimeError(f"the embedder returned {vectors.shape[0]} vectors for {len(words)} words")
    clustering = cluster_words(vectors, words, word_counts.loc[words].to_numpy(), threshold, seed, progress)
    concept_of = {word: clustering.names[label] for word, label in zip(words, clustering.labels)}
    terms["concept"] = terms["words"].map(lambda words: "_".join(dict.fromkeys(concept_of[word] for word in words.split())))
    return Vocabulary(terms, dropped)
