"""What the worker app decides without drawing anything: who the visitor is, whether their answer is complete,
and how the boxes on the canvas become boxes in image pixels. Kept apart from the page so it is tested directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from core.crowd import MAX_ATTRIBUTES_PER_BOX, PLATFORM_ID_MAX_CHARS, Box, canvas_to_image_box
from core.store import DATABASE_URL_ENV, SQLITE_FILE

# MTurk opens an external HIT's page with this assignment id while the worker only previews it.
MTURK_PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
# Where MTurk may tell the page to post the answer back; any other turkSubmitTo is ignored, so a crafted link cannot
# send a worker's completion code to a third party.
MTURK_SUBMIT_HOSTS = frozenset({"www.mturk.com", "workersandbox.mturk.com"})
PROLIFIC_COMPLETE_URL = "https://app.prolific.com/submissions/complete"
_PLATFORM_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{PLATFORM_ID_MAX_CHARS}}}")


def _platform_id(value: object) -> str | None:
    """A platform id as the platforms write them (letters, digits, _ and -); anything else is dropped, not stored."""
    text = value[0] if isinstance(value, list) and value else value
    return text if isinstance(text, str) and _PLATFORM_ID.fullmatch(text) else None


@dataclass(frozen=True)
class Visit:
    """Who opened the page, read from its query parameters (all optional except the token)."""

    token: str | None
    worker_id: str | None = None  # MTurk workerId or Prolific PROLIFIC_PID
    assignment_id: str | None = None  # MTurk assignmentId
    hit_id: str | None = None  # MTurk hitId
    submit_to: str | None = None  # MTurk turkSubmitTo, checked
    platform: str | None = None  # "mturk", "prolific" or None

    @property
    def preview(self) -> bool:
        return self.assignment_id == MTURK_PREVIEW


def read_visit(params: Mapping[str, object]) -> Visit:
    """The visit described by a task link's query parameters; ids that do not look like platform ids are ignored."""
    token = params.get("token")
    token = token if isinstance(token, str) and token.strip() else None
    if params.get("assignmentId") is not None or params.get("hitId") is not None:
        submit_to = params.get("turkSubmitTo")
        parts = urlsplit(submit_to) if isinstance(submit_to, str) else None
        trusted = parts is not None and parts.scheme == "https" and parts.hostname in MTURK_SUBMIT_HOSTS
        assignment = params.get("assignmentId")
        return Visit(token, _platform_id(params.get("workerId")),
                     MTURK_PREVIEW if assignment == MTURK_PREVIEW else _platform_id(assignment),
                     _platform_id(params.get("hitId")), f"https://{parts.hostname}" if trusted else None, "mturk")
    if params.get("PROLIFIC_PID") is not None:
        return Visit(token, _platform_id(params.get("PROLIFIC_PID")), platform="prolific")
    return Visit(token)


def mturk_submit_action(visit: Visit) -> str | None:
    """The URL an external HIT's answer is posted to, or None when the page was not opened by MTurk."""
    if visit.platform != "mturk" or visit.submit_to is None or not visit.assignment_id or visit.preview:
        return None
    return f"{visit.submit_to}/mturk/externalSubmit"


def mturk_submit_form(action: str, assignment_id: str, code: str) -> str:
    """The HTML form MTurk asks an external HIT to post back (assignmentId plus the answer), every value escaped."""
    fields = "".join(f'<input type="hidden" name="{name}" value="{escape(value, quote=True)}">'
                     for name, value in (("assignmentId", assignment_id), ("completion_code", code)))
    return (f'<form method="post" action="{escape(action, quote=True)}" id="mturk_form">{fields}'
            '<button type="submit" style="padding:0.5rem 1rem;border-radius:0.5rem;border:none;background:#2f6fb0;color:white;'
            'font-size:1rem;cursor:pointer">Send your answer to Mechanical Turk</button></form>')


def prolific_completion_url(code: str) -> str:
    return f"{PROLIFIC_COMPLETE_URL}?{urlencode({'cc': code})}"


def worker_database_url(configured: str | None, demo_workspace: Path) -> str:
    """The campaign database: the deployment's URL (secrets, then the environment), else the demo workspace's file."""
    url = (configured or "").strip() or os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or f"sqlite:///{demo_workspace / SQLITE_FILE}"


def split_attributes(text: str) -> list[str]:
    """Attributes as typed in one field: separated by commas or semicolons, blanks and repeats dropped."""
    terms = (term.strip() for term in re.split(r"[,;]", text or ""))
    return list(dict.fromkeys(term for term in terms if term))


@dataclass
class DrawnBox:
    """A box on the canvas (canvas pixels) and what the worker typed for it; ``number`` names it on the page."""

    number: int
    left: float
    top: float
    width: float
    height: float
    entity_type: str = ""
    attributes: str = ""

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return self.left, self.top, self.left + self.width, self.top + self.height

    def same_place(self, box: Mapping) -> bool:
        return all(abs(getattr(self, side) - float(box[side])) < 0.5 for side in ("left", "top", "width", "height"))


# Per image, the boxes that left the canvas are remembered this far back (the draft stays small however much is redrawn).
_REMEMBERED_REMOVED = 20


def _drawn_box(record: object) -> DrawnBox | None:
    try:
        box = DrawnBox(**record)
    except TypeError:
        return None
    numbers = (box.left, box.top, box.width, box.height)
    if not isinstance(box.number, int) or not all(isinstance(value, int | float) for value in numbers) \
            or not isinstance(box.entity_type, str) or not isinstance(box.attributes, str):
        return None
    return box


@dataclass
class Answer:
    """The worker's answer so far: boxes per image, canvas size, and the seconds spent on each image."""

    image_ids: tuple[str, ...]
    boxes: dict[str, list[DrawnBox]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    numbers_used: dict[str, int] = field(default_factory=dict)  # per image: the highest box number given so far
    # Per image: boxes that left the canvas, with their numbers and terms, in case one comes back at its place.
    removed: dict[str, list[DrawnBox]] = field(default_factory=dict)

    def to_draft(self, position: int) -> dict:
        """The answer as plain data, to save while the worker is at it (see :meth:`from_draft`)."""
        return {
            "position": position,
            "boxes": {image_id: [asdict(box) for box in drawn] for image_id, drawn in self.boxes.items()},
            "removed": {image_id: [asdict(box) for box in drawn] for image_id, drawn in self.removed.items()},
            "seconds": dict(self.seconds),
            "numbers_used": dict(self.numbers_used),
        }

    @classmethod
    def from_draft(cls, image_ids: Sequence[str], draft: object) -> tuple[Answer, int]:
        """The answer a draft holds for these images, and the image the worker was on; whatever does not fit is dropped
        (a draft is read back from the database, so it is checked like any input)."""
        answer, position = cls(tuple(image_ids)), 0
        if not isinstance(draft, Mapping):
            return answer, position
        for name in ("boxes", "removed"):
            for image_id, drawn in draft[name].items() if isinstance(draft.get(name), Mapping) else ():
                if image_id in answer.image_ids and isinstance(drawn, list):
                    getattr(answer, name)[image_id] = [box for box in map(_drawn_box, drawn) if box is not None]
        for name in ("seconds", "numbers_used"):
            values = draft.get(name)
            if isinstance(values, Mapping):
                getattr(answer, name).update({key: value for key, value in values.items()
                                              if key in answer.image_ids and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0})
        if isinstance(draft.get("position"), int) and 0 <= draft["position"] < len(answer.image_ids):
            position = draft["position"]
        return answer, position

    def update_from_canvas(self, image_id: str, canvas_boxes: Sequence[Mapping]) -> list[DrawnBox]:
        """Take the canvas's boxes for ``image_id``, each keeping its number and what was typed for it.

        The canvas gives boxes no identity, so a box is recognised by its place; when the count is unchanged a box
        that moved or was resized keeps its position in the list (the canvas keeps drawing order). A box back at the
        place of one that left the canvas is that box again, number and terms (an undone delete, or a canvas that
        reported no boxes for a moment while it reloaded its drawing: its terms are never lost). Other new boxes get
        numbers never used on the image before, so a deleted box's terms never reappear elsewhere.
        """
        previous = self.boxes.get(image_id, [])
        unmatched = list(previous)
        matches: list[DrawnBox | None] = []
        for box in canvas_boxes:
            match = next((candidate for candidate in unmatched if candidate.same_place(box)), None)
            if match is not None:
                unmatched.remove(match)
            matches.append(match)
        if len(canvas_boxes) == len(previous):
            moved = iter(unmatched)
            matches = [match or next(moved) for match in matches]
        else:
            removed = self.removed.setdefault(image_id, [])
            for index, box in enumerate(canvas_boxes):
                returning = None if matches[index] else next((candidate for candidate in reversed(removed) if candidate.same_place(box)), None)
                if returning is not None:
                    removed.remove(returning)
                    matches[index] = returning
            removed.extend(unmatched)
            del removed[:-_REMEMBERED_REMOVED]
        merged = []
        for box, match in zip(canvas_boxes, matches, strict=True):
            if match is None:
                self.numbers_used[image_id] = number = self.numbers_used.get(image_id, 0) + 1
                entity_type, attributes = "", ""
            else:
                number, entity_type, attributes = match.number, match.entity_type, match.attributes
            merged.append(DrawnBox(number, float(box["left"]), float(box["top"]), float(box["width"]), float(box["height"]),
                                   entity_type, attributes))
        self.boxes[image_id] = merged
        return merged

    def missing(self) -> list[str]:
        """What still stops the submit, in words a worker acts on; empty when the answer is complete."""
        problems = []
        for number, image_id in enumerate(self.image_ids, start=1):
            drawn = self.boxes.get(image_id, [])
            if not drawn:
                problems.append(f"Image {number} has no box yet.")
            for box in drawn:
                if not box.entity_type.strip():
                    problems.append(f"Image {number}, box {box.number}: type what the box shows (one noun).")
                attributes = split_attributes(box.attributes)
                if not attributes:
                    problems.append(f"Image {number}, box {box.number}: add at least one attribute (an adjective).")
                elif len(attributes) > MAX_ATTRIBUTES_PER_BOX:
                    problems.append(f"Image {number}, box {box.number}: keep at most {MAX_ATTRIBUTES_PER_BOX} attributes.")
        return problems

    def store_boxes(self, canvas_sizes: Mapping[str, tuple[float, float]], image_sizes: Mapping[str, tuple[int, int]]) -> list[Box]:
        """The boxes in each image's own pixels, as the campaign store keeps them."""
        return [
            Box(image_id, *canvas_to_image_box(drawn.corners, canvas_sizes[image_id], image_sizes[image_id]),
                drawn.entity_type.strip(), tuple(split_attributes(drawn.attributes)))
            for image_id in self.image_ids for drawn in self.boxes.get(image_id, [])
        ]
