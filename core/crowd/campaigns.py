"""Crowd campaigns: saliency maps handed to crowd workers in small tasks, and the boxes they draw on them.

A campaign splits its images into tasks of ``images_per_task`` (ten in the
paper, §6.1.2) and gives every task to ``workers_per_task`` workers (three), one
*assignment* each. An assignment is reached only through its token, a random
``secrets.token_urlsafe(32)`` handed out once by :meth:`CampaignStore.create_campaign`;
the database keeps its SHA-256 alone, so a leaked database opens no task. A
worker's submission is one *answer* (the seconds spent per image and whether
the automatic checks rejected it) with its *boxes*, in image pixels, each with
one entity type and one or more attributes.

The tables live in the same database as the analysts' annotations
(:func:`core.store.database_url`). A submission is written in one transaction,
and ``answers.assignment_id`` is unique: a token submitted twice, even by two
requests racing, stores one answer, and both get the same completion code.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from core.concepts.annotations import ANNOTATION_COLUMNS, MAX_TERM_CHARS
from core.errors import SliceScopeError
from core.store import NAME_MAX_CHARS, DatabaseStore, as_utc, clean_text, database_errors_explained

MAX_IMAGES = 10_000
MAX_IMAGES_PER_TASK = 50
MAX_WORKERS_PER_TASK = 20
MAX_BOXES_PER_IMAGE = 50
MAX_ATTRIBUTES_PER_BOX = 10
MAX_PNG_BYTES = 5_000_000  # a display copy, not the original: a 1,024-pixel PNG is well under this
INSTRUCTIONS_MAX_CHARS = 5_000
# MTurk worker, assignment and HIT ids and Prolific ids are well under this.
PLATFORM_ID_MAX_CHARS = 64
_TOKEN_MAX_CHARS = 100  # token_urlsafe(32) is 43 characters; anything much longer is not one of ours
_SALIENCY_PARAMS_MAX_CHARS = 2_000
_FORGED = ("this task link is not valid", "open the link exactly as you received it, or ask the requester for a new one")

metadata = MetaData()
campaigns = Table(
    "crowd_campaigns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(NAME_MAX_CHARS), nullable=False, index=True),
    Column("name", String(NAME_MAX_CHARS), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
tasks = Table(
    "crowd_tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, ForeignKey("crowd_campaigns.id"), nullable=False, index=True),
    Column("image_ids", JSON, nullable=False),  # in the order the worker sees them
)
assignments = Table(
    "crowd_assignments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("crowd_tasks.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # "open" or "submitted"; an open assignment past expires_at is reported as expired without a write.
    Column("status", String(16), nullable=False),
    Column("opened_at", DateTime(timezone=True)),
    Column("submitted_at", DateTime(timezone=True)),
    Column("completion_code", String(16)),
    Column("worker_id", String(PLATFORM_ID_MAX_CHARS)),  # MTurk workerId or Prolific PID
    Column("platform_assignment_id", String(PLATFORM_ID_MAX_CHARS)),
    Column("hit_id", String(PLATFORM_ID_MAX_CHARS)),
)
answers = Table(
    "crowd_answers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Unique: this is what makes submitting idempotent, whichever of two racing requests commits first.
    Column("assignment_id", Integer, ForeignKey("crowd_assignments.id"), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("seconds", JSON, nullable=False),  # {image_id: seconds spent on it}
    Column("rejection", Text),  # why the automatic checks reject it, for the analyst's monitor; NULL when accepted
)
boxes = Table(
    "crowd_boxes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("answer_id", Integer, ForeignKey("crowd_answers.id"), nullable=False, index=True),
    Column("image_id", String(NAME_MAX_CHARS), nullable=False),
    Column("x0", Float, nullable=False),
    Column("y0", Float, nullable=False),
    Column("x1", Float, nullable=False),
    Column("y1", Float, nullable=False),
    Column("entity_type", String(MAX_TERM_CHARS), nullable=False),
    Column("attributes", JSON, nullable=False),  # one to MAX_ATTRIBUTES_PER_BOX terms
)
# The pictures a worker sees live in the database, not in a workspace folder: the worker app then needs only the
# database URL, reads nothing from disk, and a token reaches exactly its task's rows.
campaign_pictures = Table(
    "crowd_images",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, ForeignKey("crowd_campaigns.id"), nullable=False, index=True),
    Column("image_id", String(NAME_MAX_CHARS), nullable=False),
    Column("width", Integer, nullable=False),  # of the original image: boxes are stored in these pixels
    Column("height", Integer, nullable=False),
    Column("image_png", LargeBinary, nullable=False),
    Column("saliency_png", LargeBinary, nullable=False),
    UniqueConstraint("campaign_id", "image_id"),
)


# A worker's answer in progress, so a reload or a dropped connection loses nothing; replaced on every change, and
# never read by the analysis (only submitted answers count).
drafts = Table(
    "crowd_drafts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("assignment_id", Integer, ForeignKey("crowd_assignments.id"), nullable=False, unique=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("draft", JSON, nullable=False),
)
MAX_DRAFT_CHARS = 200_000  # ten images × fifty boxes × their terms fit with room to spare


@dataclass(frozen=True)
class CampaignSettings:
    images_per_task: int = 10
    workers_per_task: int = 3
    min_seconds_per_image: float = 5.0
    hours_valid: float = 72.0
    instructions: str = ""
    sampling: str = "random"
    saliency_method: str = "gradcam"
    saliency_params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskToken:
    """One worker's way into one task; the token exists only here, the database keeps its hash."""

    task_id: int
    assignment_id: int
    token: str
    expires_at: datetime  # UTC


@dataclass(frozen=True)
class Campaign:
    id: int
    scope: str
    name: str
    n_images: int
    settings: CampaignSettings
    created_at: datetime  # UTC
    tokens: tuple[TaskToken, ...] = ()  # only in what create_campaign returns


@dataclass(frozen=True)
class TaskView:
    """All a worker's token reveals: the campaign's instructions and the task's images, in order."""

    campaign_id: int
    instructions: str
    image_ids: tuple[str, ...]


@dataclass(frozen=True)
class CampaignImage:
    """What a worker is shown for one image: the picture and its saliency overlay (PNG, any display size), and the
    original image's size in pixels, which boxes are converted to."""

    width: int
    height: int
    image_png: bytes
    saliency_png: bytes


@dataclass(frozen=True)
class Box:
    """A box drawn on one image, in image pixels (see :func:`canvas_to_image_box`), with what the worker typed."""

    image_id: str
    x0: float
    y0: float
    x1: float
    y1: float
    entity_type: str
    attributes: tuple[str, ...]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def checked_whole(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SliceScopeError(f"{what} must be a whole number from {low} to {high}, not {str(value)[:40]!r}", f"set {what} between {low} and {high}")
    return value


def checked_number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and low <= value <= high):
        raise SliceScopeError(f"{what} must be a number from {low:g} to {high:g}, not {str(value)[:40]!r}", f"give {what} as a number")
    return float(value)


def _checked_settings(settings: CampaignSettings) -> CampaignSettings:
    if not isinstance(settings, CampaignSettings):
        raise SliceScopeError(f"campaign settings must be CampaignSettings, not {type(settings).__name__}", "build them with CampaignSettings(...)")
    try:
        params = json.dumps(settings.saliency_params, sort_keys=True)
    except (TypeError, ValueError):
        raise SliceScopeError("the saliency parameters are not plain numbers and text", "pass them as a dict of numbers and strings") from None
    if not isinstance(settings.saliency_params, dict) or len(params) > _SALIENCY_PARAMS_MAX_CHARS:
        raise SliceScopeError(f"the saliency parameters must be a dict of at most {_SALIENCY_PARAMS_MAX_CHARS} characters as JSON", "pass fewer, shorter parameters")
    return CampaignSettings(
        images_per_task=checked_whole(settings.images_per_task, "images_per_task", 1, MAX_IMAGES_PER_TASK),
        workers_per_task=checked_whole(settings.workers_per_task, "workers_per_task", 1, MAX_WORKERS_PER_TASK),
        min_seconds_per_image=checked_number(settings.min_seconds_per_image, "min_seconds_per_image", 0, 3600),
        hours_valid=checked_number(settings.hours_valid, "hours_valid", 0.01, 24 * 365),
        instructions=clean_text(settings.instructions, "instructions", INSTRUCTIONS_MAX_CHARS, required=False, multiline=True),
        sampling=clean_text(settings.sampling, "sampling", MAX_TERM_CHARS),
        saliency_method=clean_text(settings.saliency_method, "saliency method", MAX_TERM_CHARS),
        saliency_params=json.loads(params),
    )


def canvas_to_image_box(
    box: Sequence[float], canvas_size: tuple[float, float], image_size: tuple[float, float]
) -> tuple[float, float, float, float]:
    """A box drawn on a canvas of ``canvas_size`` (width, height) in the pixels of an image of ``image_size``.

    The corners may come in any order (a box dragged up or left); the result has x0 < x1 and y0 < y1 within the image.
    """
    (canvas_w, canvas_h), (image_w, image_h) = canvas_size, image_size
    for what, value in (("canvas width", canvas_w), ("canvas height", canvas_h), ("image width", image_w), ("image height", image_h)):
        checked_number(value, what, 1, 1e6)
    if isinstance(box, str) or not isinstance(box, Sequence) or len(box) != 4:
        raise SliceScopeError("a box has 4 coordinates (x0, y0, x1, y1)", "send the two corners of each box")
    x0, y0, x1, y1 = (checked_number(value, "a box coordinate", -1e6, 1e6) for value in box)
    scale_x, scale_y = image_w / canvas_w, image_h / canvas_h

    def pixels(a: float, b: float, scale: float, limit: float) -> tuple[float, float]:
        low, high = sorted((a * scale, b * scale))
        return min(max(low, 0.0), limit), min(max(high, 0.0), limit)

    (x0, x1), (y0, y1) = pixels(x0, x1, scale_x, image_w), pixels(y0, y1, scale_y, image_h)
    if x0 >= x1 or y0 >= y1:
        raise SliceScopeError("a box has no area inside the image", "drag a box over the part of the image it names")
    return x0, y0, x1, y1


def _checked_boxes(submitted: object, image_ids: Sequence[str]) -> list[dict]:
    """The paper's automatic checks: every image has a box, every box an entity type and an attribute; terms bounded."""
    if isinstance(submitted, str | bytes) or not isinstance(submitted, Sequence):
        raise SliceScopeError("the boxes must be a list", "send one entry per drawn box")
    rows = []
    for box in submitted:
        if not isinstance(box, Box):
            raise SliceScopeError(f"a box must be a Box, not {type(box).__name__}", "build each box with Box(...)")
        if box.image_id not in image_ids:
            raise SliceScopeError(f"a box is on image {str(box.image_id)[:40]!r}, which is not in this task", "draw boxes only on this task's images")
        coordinates = [checked_number(value, "a box coordinate", 0, 1e6) for value in (box.x0, box.y0, box.x1, box.y1)]
        if coordinates[0] >= coordinates[2] or coordinates[1] >= coordinates[3]:
            raise SliceScopeError(f"a box on image {box.image_id!r} has no area", "convert it with canvas_to_image_box")
        entity_type = clean_text(box.entity_type, f"entity type of a box on image {box.image_id!r}", MAX_TERM_CHARS)
        if isinstance(box.attributes, str) or not isinstance(box.attributes, Sequence):
            raise SliceScopeError(f"the attributes of a box on image {box.image_id!r} must be a list", "send each attribute as its own string")
        attributes = [clean_text(term, f"attribute of a box on image {box.image_id!r}", MAX_TERM_CHARS, required=False) for term in box.attributes]
        attributes = list(dict.fromkeys(term for term in attributes if term))
        if not attributes:
            raise SliceScopeError(f"a box on image {box.image_id!r} ({entity_type}) has no attribute", "describe every box with at least one attribute")
        if len(attributes) > MAX_ATTRIBUTES_PER_BOX:
            raise SliceScopeError(f"a box on image {box.image_id!r} has {len(attributes)} attributes", f"keep at most {MAX_ATTRIBUTES_PER_BOX}")
        rows.append({"image_id": box.image_id, "x0": coordinates[0], "y0": coordinates[1], "x1": coordinates[2], "y1": coordinates[3],
                     "entity_type": entity_type, "attributes": attributes})
    counts = Counter(row["image_id"] for row in rows)
    for image_id in image_ids:
        if not counts[image_id]:
            raise SliceScopeError(f"image {image_id!r} has no box", "draw at least one box on every image")
        if counts[image_id] > MAX_BOXES_PER_IMAGE:
            raise SliceScopeError(f"image {image_id!r} has {counts[image_id]} boxes", f"keep at most {MAX_BOXES_PER_IMAGE} boxes per image")
    return rows


def _checked_seconds(seconds_per_image: object, image_ids: Sequence[str]) -> dict[str, float]:
    if not isinstance(seconds_per_image, Mapping):
        raise SliceScopeError("the seconds per image must be a mapping from image id to seconds", "send the time spent on each image")
    missing = [image_id for image_id in image_ids if image_id not in seconds_per_image]
    if missing:
        raise SliceScopeError(f"no time was recorded for image {missing[0]!r}", "send the seconds spent on every image of the task")
    return {image_id: checked_number(seconds_per_image[image_id], f"the seconds on image {image_id!r}", 0, 7 * 24 * 3600) for image_id in image_ids}


def _rejection(seconds: Mapping[str, float], minimum: float) -> str | None:
    """Why the answer is rejected, or None: images answered faster than the campaign allows are not refused but flagged."""
    hasty = [f"{image_id} {spent:.1f} s" for image_id, spent in seconds.items() if spent < minimum]
    if not hasty:
        return None
    shown = ", ".join(hasty[:5]) + (", …" if len(hasty) > 5 else "")
    return f"{len(hasty)} of {len(seconds)} images answered in under {minimum:g} s ({shown})"


def _checked_pictures(pictures: Mapping[str, CampaignImage] | None, image_ids: Sequence[str]) -> list[dict]:
    if pictures is None:
        return []
    missing = [image_id for image_id in image_ids if image_id not in pictures]
    if missing:
        raise SliceScopeError(f"no picture was given for image {missing[0]!r}", "render every campaign image (core.crowd.pipeline does)")
    rows = []
    for image_id in image_ids:
        picture = pictures[image_id]
        if not isinstance(picture, CampaignImage):
            raise SliceScopeError(f"the picture of image {image_id!r} must be a CampaignImage, not {type(picture).__name__}", "build it with CampaignImage(...)")
        for what, png in (("picture", picture.image_png), ("saliency overlay", picture.saliency_png)):
            if not isinstance(png, bytes) or not png.startswith(b"\x89PNG") or len(png) > MAX_PNG_BYTES:
                raise SliceScopeError(f"the {what} of image {image_id!r} is not a PNG under {MAX_PNG_BYTES // 1_000_000} MB", "render it as a display-sized PNG")
        rows.append({"image_id": image_id, "width": checked_whole(picture.width, "image width", 1, 100_000),
                     "height": checked_whole(picture.height, "image height", 1, 100_000),
                     "image_png": picture.image_png, "saliency_png": picture.saliency_png})
    return rows


def _platform_id(value: object, what: str) -> str | None:
    if value is None:
        return None
    return clean_text(value, what, PLATFORM_ID_MAX_CHARS, required=False) or None


class CampaignStore(DatabaseStore):
    """Crowd campaigns in the database at ``url`` (SQLite or PostgreSQL), beside the annotations; creates its tables if missing."""

    tables = metadata

    # -- the analyst's side ----------------------------------------------------
    def create_campaign(self, scope: str, name: str, image_ids: Sequence[str], settings: CampaignSettings = CampaignSettings(),
                        pictures: Mapping[str, CampaignImage] | None = None) -> Campaign:
        """A campaign over ``image_ids`` (in task order), with its tasks and assignments; the only time the tokens are returned.

        ``pictures`` gives what workers see for each image (:func:`core.crowd.pipeline.create_workspace_campaign` renders them);
        without it the campaign is only a record of tasks, for answers collected elsewhere.
        """
        scope, name = clean_text(scope, "scope", NAME_MAX_CHARS), clean_text(name, "campaign name", NAME_MAX_CHARS)
        settings = _checked_settings(settings)
        if isinstance(image_ids, str) or not isinstance(image_ids, Sequence) or not 1 <= len(image_ids) <= MAX_IMAGES:
            raise SliceScopeError(f"a campaign needs a list of 1 to {MAX_IMAGES} image ids", "pick the images to annotate")
        images = [clean_text(image_id, "image id", NAME_MAX_CHARS) for image_id in image_ids]
        repeated = [image_id for image_id, count in Counter(images).items() if count > 1]
        if repeated:
            raise SliceScopeError(f"image {repeated[0]!r} is listed more than once", "list every image once")
        picture_rows = _checked_pictures(pictures, images)
        created_at = datetime.now(UTC)
        expires_at = created_at + timedelta(hours=settings.hours_valid)
        size = settings.images_per_task
        tokens = []
        with database_errors_explained(self.url), self._engine.begin() as connection:
            campaign_id = connection.execute(insert(campaigns).values(
                scope=scope, name=name, settings={**asdict(settings), "n_images": len(images)}, created_at=created_at,
            )).inserted_primary_key[0]
            if picture_rows:
                connection.execute(insert(campaign_pictures), [{"campaign_id": campaign_id, **row} for row in picture_rows])
            for start in range(0, len(images), size):
                task_id = connection.execute(insert(tasks).values(campaign_id=campaign_id, image_ids=images[start:start + size])).inserted_primary_key[0]
                for _ in range(settings.workers_per_task):
                    token = secrets.token_urlsafe(32)
                    assignment_id = connection.execute(insert(assignments).values(
                        task_id=task_id, token_hash=_token_hash(token), expires_at=expires_at, status="open",
                    )).inserted_primary_key[0]
                    tokens.append(TaskToken(task_id, assignment_id, token, expires_at))
        return Campaign(campaign_id, scope, name, len(images), settings, created_at, tuple(tokens))

    def campaigns(self, scope: str) -> list[Campaign]:
        """The campaigns of workspace ``scope``, oldest first (without tokens: those were handed out at creation)."""
        return [self._campaign(row) for row in self._rows(select(campaigns).where(campaigns.c.scope == scope).order_by(campaigns.c.id))]

    @staticmethod
    def _campaign(row) -> Campaign:
        stored = dict(row.settings)
        n_images = stored.pop("n_images")
        return Campaign(row.id, row.scope, row.name, n_images, CampaignSettings(**stored), as_utc(row.created_at))

    def campaign(self, campaign_id: int) -> Campaign:
        rows = self._rows(select(campaigns).where(campaigns.c.id == campaign_id))
        if not rows:
            raise SliceScopeError(f"there is no campaign {campaign_id!r}", "pick one of the workspace's campaigns")
        return self._campaign(rows[0])

    # -- the worker's side -------------------------------------------------------
    def _assignment(self, token: object):
        """The token's assignment with its task's images and campaign's settings; a forged token is refused."""
        if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_MAX_CHARS:
            raise SliceScopeError(*_FORGED)
        statement = (
            select(assignments, tasks.c.image_ids, tasks.c.campaign_id, campaigns.c.settings)
            .join(tasks, tasks.c.id == assignments.c.task_id)
            .join(campaigns, campaigns.c.id == tasks.c.campaign_id)
            .where(assignments.c.token_hash == _token_hash(token))
        )
        rows = self._rows(statement)
        if not rows:
            raise SliceScopeError(*_FORGED)
        return rows[0]

    @staticmethod
    def _refuse_expired(row) -> None:
        if as_utc(row.expires_at) <= datetime.now(UTC):
            raise SliceScopeError("this task has expired", "ask the requester for a new task")

    def preview(self, token: str) -> str:
        """The campaign's instructions, for a platform's preview of the task: the assignment is not marked as opened."""
        row = self._assignment(token)
        self._refuse_expired(row)
        return row.settings["instructions"]

    def completion_code(self, token: str) -> str | None:
        """The completion code of the task ``token`` opens once it is submitted (None before): a worker who opens the
        link again needs it to get paid. Refused, like every call, for a forged token."""
        row = self._assignment(token)
        return row.completion_code if row.status == "submitted" else None

    def open_task(self, token: str) -> TaskView:
        """What the worker holding ``token`` may see; refused for a forged, expired or already submitted token."""
        row = self._assignment(token)
        if row.status == "submitted":
            raise SliceScopeError("this task was already submitted", "thank you: there is nothing more to do on it")
        self._refuse_expired(row)
        if row.opened_at is None:
            # The monitor shows the task as started; the condition keeps the first opening when two tabs race.
            with database_errors_explained(self.url), self._engine.begin() as connection:
                connection.execute(update(assignments).where(assignments.c.id == row.id, assignments.c.opened_at.is_(None))
                                   .values(opened_at=datetime.now(UTC)))
        return TaskView(row.campaign_id, row.settings["instructions"], tuple(row.image_ids))

    def submit(
        self, token: str, submitted_boxes: Sequence[Box], seconds_per_image: Mapping[str, float], *,
        worker_id: str | None = None, platform_assignment_id: str | None = None, hit_id: str | None = None,
    ) -> str:
        """Store the worker's answer and return its completion code; submitting the same token again returns the same code.

        Incomplete answers are refused with what to fix; answers faster than the campaign's minimum per image are
        stored with a rejection reason, for the analyst to see, since refusing would only teach workers to wait.
        """
        row = self._assignment(token)
        if row.status == "submitted":
            return row.completion_code
        self._refuse_expired(row)
        image_ids = list(row.image_ids)
        box_rows = _checked_boxes(submitted_boxes, image_ids)
        seconds = _checked_seconds(seconds_per_image, image_ids)
        platform = {
            "worker_id": _platform_id(worker_id, "worker id"),
            "platform_assignment_id": _platform_id(platform_assignment_id, "assignment id"),
            "hit_id": _platform_id(hit_id, "HIT id"),
        }
        code, now = secrets.token_hex(5).upper(), datetime.now(UTC)
        try:
            with database_errors_explained(self.url), self._engine.begin() as connection:
                # The answer first: its unique assignment_id claims the assignment before anything else is written.
                answer_id = connection.execute(insert(answers).values(
                    assignment_id=row.id, created_at=now, seconds=seconds,
                    rejection=_rejection(seconds, row.settings["min_seconds_per_image"]),
                )).inserted_primary_key[0]
                connection.execute(insert(boxes), [{"answer_id": answer_id, **box} for box in box_rows])
                connection.execute(update(assignments).where(assignments.c.id == row.id)
                                   .values(status="submitted", submitted_at=now, completion_code=code, **platform))
        except IntegrityError:
            # A concurrent submit of this token committed first; its answer stands and this one is dropped.
            return self._assignment(token).completion_code
        return code

    def task_picture(self, token: str, image_id: str) -> CampaignImage:
        """What the worker holding ``token`` is shown for ``image_id``, which must be one of their task's images."""
        row = self._assignment(token)
        if row.status == "submitted":
            raise SliceScopeError("this task was already submitted", "thank you: there is nothing more to do on it")
        self._refuse_expired(row)
        if image_id not in row.image_ids:
            raise SliceScopeError("this image is not part of your task", "use the task's own pages")
        return self.picture(row.campaign_id, image_id)

    def save_draft(self, token: str, draft: dict) -> None:
        """Keep the worker's answer in progress (plain JSON data, bounded), replacing the previous draft of the token."""
        row = self._assignment(token)
        if row.status == "submitted":
            return  # the answer is in; a late save from another tab must not resurrect a draft
        self._refuse_expired(row)
        try:
            text = json.dumps(draft)
        except (TypeError, ValueError):
            raise SliceScopeError("the draft is not plain data", "save numbers, text, lists and dicts only") from None
        if len(text) > MAX_DRAFT_CHARS:
            raise SliceScopeError(f"the answer in progress is {len(text):,} characters, more than {MAX_DRAFT_CHARS:,}", "use fewer boxes or shorter terms")
        now = datetime.now(UTC)
        with database_errors_explained(self.url), self._engine.begin() as connection:
            updated = connection.execute(update(drafts).where(drafts.c.assignment_id == row.id).values(updated_at=now, draft=json.loads(text)))
            if updated.rowcount == 0:
                try:
                    with connection.begin_nested():
                        connection.execute(insert(drafts).values(assignment_id=row.id, updated_at=now, draft=json.loads(text)))
                except IntegrityError:
                    # Another tab inserted the first draft a moment ago: this one replaces it.
                    connection.execute(update(drafts).where(drafts.c.assignment_id == row.id).values(updated_at=now, draft=json.loads(text)))

    def load_draft(self, token: str) -> dict | None:
        """The worker's saved answer in progress, or None."""
        row = self._assignment(token)
        rows = self._rows(select(drafts.c.draft).where(drafts.c.assignment_id == row.id))
        return rows[0].draft if rows else None

    # -- results -------------------------------------------------------------------
    def progress(self, campaign_id: int) -> pd.DataFrame:
        """One row per assignment: its status (open, started, submitted, expired) and its task's (open, in progress, done),
        the worker, seconds and boxes of its answer, and why the automatic checks rejected it ("" when they did not)."""
        self.campaign(campaign_id)
        box_counts = select(boxes.c.answer_id, func.count().label("n_boxes")).group_by(boxes.c.answer_id).subquery()
        statement = (
            select(assignments, answers.c.seconds, answers.c.rejection, box_counts.c.n_boxes)
            .join(tasks, tasks.c.id == assignments.c.task_id)
            .outerjoin(answers, answers.c.assignment_id == assignments.c.id)
            .outerjoin(box_counts, box_counts.c.answer_id == answers.c.id)
            .where(tasks.c.campaign_id == campaign_id)
            .order_by(assignments.c.id)
        )
        now = datetime.now(UTC)

        def status(row) -> str:
            if row.status == "submitted":
                return "submitted"
            if as_utc(row.expires_at) <= now:
                return "expired"
            return "open" if row.opened_at is None else "started"

        frame = pd.DataFrame([{
            "task_id": row.task_id, "assignment_id": row.id, "status": status(row), "worker_id": row.worker_id or "",
            "opened_at": row.opened_at and as_utc(row.opened_at), "submitted_at": row.submitted_at and as_utc(row.submitted_at),
            "seconds": float(sum(row.seconds.values())) if row.seconds else 0.0, "boxes": int(row.n_boxes or 0),
            "rejection": row.rejection or "",
        } for row in self._rows(statement)])
        statuses = frame.groupby("task_id")["status"]
        done = statuses.transform(lambda values: (values == "submitted").all())
        started = statuses.transform(lambda values: values.isin(("started", "submitted")).any())
        frame.insert(3, "task_status", ["done" if d else "in progress" if s else "open" for d, s in zip(done, started, strict=True)])
        for column in ("opened_at", "submitted_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def image_ids(self, campaign_id: int) -> list[str]:
        """The campaign's images in task order."""
        self.campaign(campaign_id)
        statement = select(tasks.c.image_ids).where(tasks.c.campaign_id == campaign_id).order_by(tasks.c.id)
        return [image_id for row in self._rows(statement) for image_id in row.image_ids]

    def picture(self, campaign_id: int, image_id: str) -> CampaignImage:
        """The picture and overlay workers were shown for ``image_id`` in the campaign."""
        rows = self._rows(select(campaign_pictures).where(campaign_pictures.c.campaign_id == campaign_id, campaign_pictures.c.image_id == image_id))
        if not rows:
            raise SliceScopeError(f"campaign {campaign_id} holds no picture of image {str(image_id)[:40]!r}",
                                  "create campaigns with core.crowd.pipeline.create_workspace_campaign, which stores them")
        row = rows[0]
        return CampaignImage(row.width, row.height, row.image_png, row.saliency_png)

    def picture_sizes(self, campaign_id: int) -> dict[str, tuple[int, int]]:
        """Each stored picture's original (width, height), by image id."""
        statement = select(campaign_pictures.c.image_id, campaign_pictures.c.width, campaign_pictures.c.height).where(
            campaign_pictures.c.campaign_id == campaign_id)
        return {row.image_id: (row.width, row.height) for row in self._rows(statement)}

    def _boxes(self, campaign_id: int, include_rejected: bool) -> list:
        self.campaign(campaign_id)
        statement = (
            select(boxes, answers.c.seconds, assignments.c.worker_id, assignments.c.id.label("assignment_id"))
            .join(answers, answers.c.id == boxes.c.answer_id)
            .join(assignments, assignments.c.id == answers.c.assignment_id)
            .join(tasks, tasks.c.id == assignments.c.task_id)
            .where(tasks.c.campaign_id == campaign_id, *(() if include_rejected else (answers.c.rejection.is_(None),)))
            .order_by(boxes.c.id)
        )
        return self._rows(statement)

    @staticmethod
    def _worker(row) -> str:
        # Without a platform id the assignment stands in for the worker, so distinct workers still count apart.
        return row.worker_id or f"assignment-{row.assignment_id}"

    def boxes_frame(self, campaign_id: int, include_rejected: bool = False) -> pd.DataFrame:
        """The campaign's boxes, one row each: image, worker, term and corners in image pixels."""
        records = [(row.image_id, self._worker(row), row.entity_type, row.x0, row.y0, row.x1, row.y1) for row in self._boxes(campaign_id, include_rejected)]
        return pd.DataFrame(records, columns=["image_id", "worker_id", "entity_type", "x0", "y0", "x1", "y1"])

    def annotations_frame(self, campaign_id: int, include_rejected: bool = False) -> pd.DataFrame:
        """The campaign's boxes as core.concepts reads them: one row per box attribute, every value a string."""
        records = [
            (row.image_id, self._worker(row), str(row.id), row.entity_type, attribute)
            for row in self._boxes(campaign_id, include_rejected) for attribute in row.attributes
        ]
        return pd.DataFrame(records, columns=list(ANNOTATION_COLUMNS), dtype=object)

    def export_coco(self, campaign_id: int, image_sizes: Mapping[str, tuple[int, int]] | None = None, include_rejected: bool = False) -> dict:
        """The campaign as COCO detection JSON: ``image_sizes`` gives each image's (width, height) (default: the stored
        pictures' sizes); categories are entity types.

        Each annotation also carries the worker, the seconds spent on its image and the typed terms.
        """
        campaign = self.campaign(campaign_id)
        image_sizes = self.picture_sizes(campaign_id) if image_sizes is None else image_sizes
        image_ids = self.image_ids(campaign_id)
        missing = [image_id for image_id in image_ids if image_id not in image_sizes]
        if missing:
            raise SliceScopeError(f"the size of image {missing[0]!r} is not known", "pass every campaign image's (width, height)")
        numbers = {image_id: number for number, image_id in enumerate(image_ids, start=1)}
        rows = self._boxes(campaign_id, include_rejected)
        categories = {name: number for number, name in enumerate(sorted({row.entity_type for row in rows}), start=1)}
        return {
            "info": {"description": f"SliceScope crowd campaign {campaign.name}", "date_created": campaign.created_at.isoformat()},
            "images": [{"id": numbers[image_id], "file_name": image_id, "width": int(image_sizes[image_id][0]), "height": int(image_sizes[image_id][1])}
                       for image_id in image_ids],
            "annotations": [{
                "id": row.id, "image_id": numbers[row.image_id], "category_id": categories[row.entity_type],
                "bbox": [row.x0, row.y0, row.x1 - row.x0, row.y1 - row.y0], "area": (row.x1 - row.x0) * (row.y1 - row.y0), "iscrowd": 0,
                "worker_id": self._worker(row), "seconds": row.seconds[row.image_id],
                "entity_type": row.entity_type, "attributes": list(row.attributes),
            } for row in rows],
            "categories": [{"id": number, "name": name} for name, number in categories.items()],
        }
