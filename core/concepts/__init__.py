"""SECA (Balayn et al., WWW 2021): crowd concepts → typical concepts per predicted class.

The stages, each a module::

    annotations  the input tables (crowd annotations; images with their prediction)
    reconcile    C3: typed terms → Vocabulary (spelling, singular, embedding, K-Means)
    table        C4: images × concepts binary table (types, attributes, attribute-type pairs)
    mining       C5: chi-square / Cramér's V, NOT and AND, association rules, tree rules; slices named by concepts
    query        validation queries ("stamp AND NOT fish_body") with the same statistics

Typical use::

    vocabulary = reconcile(annotations)                  # edit with rename / merge / split
    table = build_concept_table(annotations, images, vocabulary)
    findings = filter_results(mine_concepts(table))      # Cramér's V ≥ 0.2, p < 0.05
    answer = query_concepts(table, "stamp AND NOT fish_body")
"""

from core.concepts.annotations import ANNOTATION_COLUMNS, IMAGE_COLUMNS, normalise_term, read_annotations_csv
from core.concepts.embed import Embedder, FastTextEmbedder, MiniLMEmbedder
from core.concepts.mining import (
    RESULT_COLUMNS,
    RESULT_KINDS,
    AssociationRules,
    ConceptStatistics,
    TreeRules,
    concept_statistics,
    filter_results,
    mine_concepts,
    slice_concepts,
)
from core.concepts.query import parse_query, query_concepts
from core.concepts.reconcile import Vocabulary, reconcile
from core.concepts.table import ConceptTable, build_concept_table, concept_boxes

__all__ = [
    "ANNOTATION_COLUMNS", "IMAGE_COLUMNS", "RESULT_COLUMNS", "RESULT_KINDS", "AssociationRules", "ConceptStatistics", "ConceptTable",
    "Embedder", "FastTextEmbedder", "MiniLMEmbedder", "TreeRules", "Vocabulary", "build_concept_table", "concept_boxes", "concept_statistics",
    "filter_results", "mine_concepts", "normalise_term", "parse_query", "query_concepts", "read_annotations_csv", "reconcile",
    "slice_concepts",
]
