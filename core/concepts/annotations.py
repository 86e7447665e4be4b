"""The crowd annotation table SECA starts from, and how one typed term becomes words.

Annotations (one row per box attribute; a box with two attributes is two rows,
a box with none has an empty ``attribute``):

=============  ======================================================================
column         meaning
=============  ======================================================================
image_id       the image, as in the workspace's ``images`` table
worker_id      who annotated (the campaign's own vocabulary counts distinct workers)
box_id         the box on the image's saliency map; pairs are formed within a box
entity_type    what the worker typed as the box's entity type (a noun: "stamp")
attribute      what the worker typed as one of its attributes (an adjective: "yellow")
=============  ======================================================================

Images (one row per image; the workspace's ``images`` table has these columns):
``image_id``, ``prediction`` (the predicted class) and optionally ``label``.

Every value is kept as a string. Typed text is untrusted: :func:`term_words`
bounds it, keeps only letters and digits, and never fails; :func:`why_no_words`
says why a term it finds nothing in is lost, and :func:`shown_term` makes the
term fit to show.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pandas as pd

from core.errors import SliceScopeError

ANNOTATION_COLUMNS = ("image_id", "worker_id", "box_id", "entity_type", "attribute")
IMAGE_COLUMNS = ("image_id", "prediction")
LABEL_COLUMN = "label"

# A term is a word or two ("fish body"); anything longer is pasted text, so only its start is read.
MAX_TERM_CHARS = 64
MAX_TERM_WORDS = 4
MAX_WORD_CHARS = 30  # longer runs of letters are not words (a keyboard mash, a pasted blob)
# Glue words carry no concept, and dropping them keeps AND / OR / NOT free for queries.
FILLER_WORDS = frozenset({"a", "an", "the", "of", "with", "and", "or", "not"})
MAX_SHOWN_TERM_CHARS = 40
_WORD = re.compile(r"[^\W_]+")


def _candidate_words(raw: str, max_chars: int) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", raw[: max_chars * 4]).lower()[:max_chars])


def term_words(raw: object, max_chars: int = MAX_TERM_CHARS) -> tuple[str, ...]:
    """The words of one typed term: NFKC, lowercase, letters and digits only, bounded; () for nothing."""
    if not isinstance(raw, str):
        return ()
    words = [word for word in _candidate_words(raw, max_chars) if len(word) <= MAX_WORD_CHARS and word not in FILLER_WORDS]
    return tuple(words[:MAX_TERM_WORDS])


def why_no_words(raw: str) -> str:
    """Why :func:`term_words` finds no word in ``raw``, in plain English; meant for the terms where it finds none."""
    words = _candidate_words(raw, MAX_TERM_CHARS)
    if not words:
        return "no letters or digits: emoji or symbols only"
    if any(len(word) > MAX_WORD_CHARS for word in words):
        return f"a word longer than {MAX_WORD_CHARS} letters"
    return f"only filler words ({', '.join(sorted(FILLER_WORDS))})"


def shown_term(raw: str) -> str:
    """A typed term fit to show on a page or a terminal: on one line, bounded, without control or format characters
    (terminal escapes, right-to-left overrides); "" when nothing visible was typed."""
    visible = "".join(char for char in raw[: MAX_SHOWN_TERM_CHARS * 4] if char.isspace() or unicodedata.category(char) not in ("Cc", "Cf"))
    text = " ".join(visible.split())
    return text if len(text) <= MAX_SHOWN_TERM_CHARS else f"{text[:MAX_SHOWN_TERM_CHARS]}…"


def normalise_term(raw: object) -> str:
    """The key a typed term is known by in a vocabulary ("  Fish-Bodies!" → "fish bodies"); "" for nothing."""
    return " ".join(term_words(raw))


def concept_name(text: str) -> str:
    """A name usable as a table column and in queries: words joined by underscores ("Fish body" → "fish_body")."""
    name = "_".join(term_words(text, 2 * MAX_TERM_CHARS))  # room for a normalised term's words after spelling fixes
    if not name:
        raise SliceScopeError(f"'{str(text)[:40]}' is not a usable concept name", "use letters or digits, e.g. fish_body")
    return name


def _as_text(frame: pd.DataFrame, columns) -> pd.DataFrame:
    return frame.assign(**{column: frame[column].astype("string").fillna("").astype(object) for column in columns})


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SliceScopeError(f"the {what} table has no {', '.join(missing)} column", f"{what} need the columns {', '.join(columns)}")


def validate_annotations(annotations: pd.DataFrame) -> pd.DataFrame:
    """The annotation columns as strings (missing values → ""), or a SliceScopeError naming what is wrong."""
    _require(annotations, ANNOTATION_COLUMNS, "annotations")
    if annotations.empty:
        raise SliceScopeError(
            "the annotation table is empty",
            "collect annotations first, one row per (image, box, entity type, attribute)",
        )
    frame = _as_text(annotations[list(ANNOTATION_COLUMNS)], ANNOTATION_COLUMNS)
    if (frame["image_id"] == "").any():
        raise SliceScopeError(
            f"{int((frame['image_id'] == '').sum())} annotations have no image_id",
            "give every annotation the image it describes",
        )
    return frame


def validate_images(images: pd.DataFrame) -> pd.DataFrame:
    """image_id, prediction (and label when present) as strings, one row per image."""
    _require(images, IMAGE_COLUMNS, "images")
    columns = [*IMAGE_COLUMNS, *([LABEL_COLUMN] if LABEL_COLUMN in images.columns else [])]
    frame = _as_text(images[columns], columns)
    duplicated = frame["image_id"].duplicated()
    if duplicated.any():
        raise SliceScopeError(
            f"image {frame['image_id'][duplicated].iloc[0][:40]!r} has more than one prediction",
            "give each image one row",
        )
    return frame


def read_annotations_csv(path: Path, images_path: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annotations and images from CSV files.

    Without ``images_path`` the annotation CSV itself carries ``prediction`` (and
    optionally ``label``) on every row, the same for all rows of an image.
    """
    annotations = _read_csv(path)
    validated = validate_annotations(annotations)
    if images_path is not None:
        return validated, validate_images(_read_csv(images_path))
    if "prediction" not in annotations.columns:
        raise SliceScopeError(
            f"{path} has no prediction column",
            "add each image's predicted class as a prediction column, or pass the images separately (`images`)",
        )
    columns = [*IMAGE_COLUMNS, *([LABEL_COLUMN] if LABEL_COLUMN in annotations.columns else [])]
    images = annotations[columns].drop_duplicates()
    conflicting = images["image_id"].duplicated()
    if conflicting.any():
        raise SliceScopeError(
            f"image {images['image_id'][conflicting].iloc[0][:40]!r} has different predictions on different rows",
            "give every row of an image the same prediction, or pass the images separately (`images`)",
        )
    return validated, validate_images(images)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise SliceScopeError(f"{path} does not exist", "pass the path of an annotation CSV") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SliceScopeError(
            f"{path} is not a readable CSV ({str(error).splitlines()[0][:80]})",
            "save it as UTF-8 CSV with a header row",
        ) from None
