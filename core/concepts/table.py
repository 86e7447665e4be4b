"""C4, the tabular representation: one row per annotated image, one binary column per concept.

Columns are the concepts of entity types ("stamp"), of attributes ("yellow"),
and of the attribute-type pairs named within one box ("yellow-stamp", attribute
first as in the paper). A concept typed both as a type and as an attribute is one
column; its kind is the role it was typed in more often. Pair names are the only
ones with a hyphen, so they can never collide with a concept's own name.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.concepts.annotations import LABEL_COLUMN, normalise_term, validate_annotations, validate_images
from core.concepts.reconcile import Vocabulary
from core.errors import SliceScopeError

KINDS = ("type", "attribute", "pair")
# Leading underscores cannot start a concept name, so these never collide with a concept column.
PREDICTION_COLUMN, LABEL_OUTPUT_COLUMN = "_prediction", "_label"


@dataclass(frozen=True)
class ConceptTable:
    """Images × concepts.

    ``concepts``: bool DataFrame indexed by ``image_id``, one column per concept;
    ``prediction`` / ``label``: the images' predicted class and true label (None
    when unknown), as strings on the same index; ``kinds``: concept → "type",
    "attribute" or "pair".
    """

    concepts: pd.DataFrame
    prediction: pd.Series
    label: pd.Series | None
    kinds: pd.Series

    def to_frame(self) -> pd.DataFrame:
        """The table as 0/1 columns plus ``_prediction`` (and ``_label``), for export."""
        frame = self.concepts.astype(int).assign(**{PREDICTION_COLUMN: self.prediction})
        return frame if self.label is None else frame.assign(**{LABEL_OUTPUT_COLUMN: self.label})


def _concepts_of(values: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """Each typed value's concept ("" for an empty value); a term missing from the vocabulary is an error."""
    unique = pd.Series(values.unique())
    keys = unique.map(normalise_term)
    unknown = keys[(keys != "") & ~keys.isin(list(mapping))]
    if not unknown.empty:
        raise SliceScopeError(
            f"{len(unknown)} annotated terms are not in the vocabulary (e.g. {unknown.iloc[0][:40]!r})",
            "reconcile the annotations again, or add the terms to the vocabulary",
        )
    concept = dict(zip(unique, keys.map(lambda key: mapping.get(key, ""))))
    return values.map(concept)


def build_concept_table(annotations: pd.DataFrame, images: pd.DataFrame, vocabulary: Vocabulary) -> ConceptTable:
    """The images × concepts table of the annotated images (schemas in :mod:`core.concepts.annotations`)."""
    annotations = validate_annotations(annotations)
    images = validate_images(images).set_index("image_id")
    mapping = vocabulary.mapping()
    boxes = annotations.assign(
        type=_concepts_of(annotations["entity_type"], mapping),
        attribute=_concepts_of(annotations["attribute"], mapping),
    )
    annotated = pd.Index(boxes["image_id"].unique())
    missing = annotated.difference(images.index)
    if len(missing):
        raise SliceScopeError(
            f"{len(missing)} annotated images have no prediction (e.g. {missing[0][:40]!r})",
            "pass the images table of the workspace the campaign's images came from",
        )

    box = ["image_id", "worker_id", "box_id"]
    types = boxes.loc[boxes["type"] != "", [*box, "type"]].drop_duplicates()
    attributes = boxes.loc[boxes["attribute"] != "", [*box, "attribute"]].drop_duplicates()
    pairs = types.merge(attributes, on=box)
    pairs = pairs[pairs["type"] != pairs["attribute"]]  # "stamp-stamp" says no more than stamp
    long = pd.concat([
        types.rename(columns={"type": "concept"}).assign(kind="type"),
        attributes.rename(columns={"attribute": "concept"}).assign(kind="attribute"),
        pairs.assign(concept=pairs["attribute"] + "-" + pairs["type"], kind="pair")[[*box, "concept", "kind"]],
    ], ignore_index=True)
    if long.empty:
        raise SliceScopeError("no annotation names a concept of the vocabulary", "check that entity_type and attribute hold words")

    roles = long.groupby(["concept", "kind"]).size().unstack(fill_value=0).reindex(columns=list(KINDS), fill_value=0)
    kinds = roles.idxmax(axis=1).rename("kind")  # ties go to the first of KINDS: type
    concepts = pd.crosstab(long["image_id"], long["concept"]).reindex(index=annotated, fill_value=0) > 0
    order = sorted(concepts.columns, key=lambda concept: (KINDS.index(kinds[concept]), concept))
    concepts = concepts[order].rename_axis(index="image_id", columns=None)
    label = images.loc[annotated, LABEL_COLUMN].rename("label") if LABEL_COLUMN in images.columns else None
    return ConceptTable(concepts, images.loc[annotated, "prediction"].rename("prediction"), label, kinds.loc[order])


def concept_boxes(annotations: pd.DataFrame, vocabulary: Vocabulary, concept: str) -> pd.DataFrame:
    """The boxes that put ``concept`` in the table (``image_id, worker_id, box_id``): its type, one of its attributes,
    or, for a pair "attribute-type", both in one box."""
    annotations = validate_annotations(annotations)
    mapping = vocabulary.mapping()
    boxes = annotations.assign(type=_concepts_of(annotations["entity_type"], mapping),
                               attribute=_concepts_of(annotations["attribute"], mapping))
    pair = boxes["attribute"] + "-" + boxes["type"]
    hits = boxes[(boxes["type"] == concept) | (boxes["attribute"] == concept) | (pair == concept)]
    return hits[["image_id", "worker_id", "box_id"]].drop_duplicates(ignore_index=True)
