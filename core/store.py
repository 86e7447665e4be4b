"""The annotation store: what analysts say about slices and images, kept as an append-only event log.

Every change is one inserted row of ``annotation_events``; nothing is ever
updated or deleted. Setting, editing (a new "set") and clearing a slice's
annotation, marking an image as mislabelled and unmarking it, and undoing any
of those are all events, attributed to an analyst and timestamped in UTC. The
current state of a target is its latest "set" or "clear" event that no "undo"
event points at. Because writers only insert, several app sessions (or
processes, or machines sharing a PostgreSQL database) writing at once never
overwrite each other's work.

Slice events are scoped by the workspace's extraction fingerprint and name the
slicing their slice id belongs to (see :func:`core.slicing.slicing_name`), since
a slice id means nothing outside its slicing. Image relabels are scoped by the
dataset fingerprint: a wrong label is a property of the image, shared by every
model version scanned on that dataset.

The database is a SQLite file in the workspace unless a URL is configured
(:func:`database_url`); user text only ever reaches it as bound parameters.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import index
from pathlib import Path
from typing import Self

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError, ProgrammingError

from core.errors import SliceScopeError
from core.versions import version_root
from core.workspace import Workspace

ANNOTATION_KINDS = ("core", "spurious", "wrong_labels", "other")
NOTE_MAX_CHARS = 500
ANALYST_MAX_CHARS = 64
# Image ids, labels, scopes and slicing names come from the workspace, not from free typing; the bound keeps rows small.
NAME_MAX_CHARS = 200
DATABASE_URL_ENV = "SLICESCOPE_DATABASE_URL"
_SETUP_ATTEMPTS = 6  # waits of 0.05 … 1.6 s: enough for a few dozen sessions opening a fresh database together
SQLITE_FILE = "annotations.sqlite"
_CONFIGURE_URL = f"set {DATABASE_URL_ENV} or [database] url in .streamlit/secrets.toml to a reachable database"
_URL_FIX = f"{_CONFIGURE_URL}, e.g. postgresql://user:password@host:5432/db"
# The DB-API driver installed for each database SliceScope supports, and the drivers a copied URL may name
# instead: SliceScope connects through the installed one (psycopg 3 speaks for psycopg2 and the others).
_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg", "postgres": "psycopg"}
_INTERCHANGEABLE_DRIVERS = {"sqlite": {"", "pysqlite"}, "postgresql": {"", "psycopg", "psycopg2", "pg8000", "asyncpg", "psycopg2cffi"}}
_INTERCHANGEABLE_DRIVERS["postgres"] = _INTERCHANGEABLE_DRIVERS["postgresql"]
# user:PASSWORD@ up to the last @ (a password may hold : / @) and, where no @ follows, a "port" that is not a number:
# a password whose host was left out.
_USER_PASSWORD = re.compile(r"^((?:[^/@]*//)?+[^:/@]*:)(?:.*(?=@)|(?!\d*(?:[/?]|$))[^/?]*)", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"(?<=[?&]password=)[^&]*")

_metadata = MetaData()
events = Table(
    "annotation_events",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("analyst", String(ANALYST_MAX_CHARS), nullable=False),
    Column("scope", String(NAME_MAX_CHARS), nullable=False),
    Column("slicing", String(NAME_MAX_CHARS), nullable=False),
    Column("target_type", String(8), nullable=False),
    Column("target", String(NAME_MAX_CHARS), nullable=False),
    Column("action", String(8), nullable=False),
    Column("kind", String(32)),
    Column("note", Text, nullable=False),
    Column("label", String(NAME_MAX_CHARS)),
    # Unique: two sessions undoing the same event at once cannot both succeed.
    Column("undoes", Integer, ForeignKey("annotation_events.id"), unique=True),
    # The current state of one scope's slices or images, and the latest event per target.
    Index("ix_annotation_events_target", "scope", "target_type", "slicing", "target", "id"),
    # An analyst's latest event in a scope, for undo.
    Index("ix_annotation_events_analyst", "scope", "analyst", "id"),
)
_undo_events = events.alias("undo_events")


@dataclass(frozen=True)
class SliceAnnotation:
    slice_id: int
    kind: str
    note: str
    analyst: str
    created_at: datetime  # UTC
    event_id: int


@dataclass(frozen=True)
class Relabel:
    """An image marked as mislabelled, with the label it should have."""

    image_id: str
    label: str
    analyst: str
    created_at: datetime  # UTC
    event_id: int


def database_url(workspace_path: str | Path, configured: str | None = None) -> str:
    """The annotation database for a workspace: ``configured`` (the app's secrets), else ``$SLICESCOPE_DATABASE_URL``, else a SQLite file in it."""
    url = (configured or "").strip() or os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or f"sqlite:///{Path(workspace_path).expanduser().resolve() / SQLITE_FILE}"


def _without_password(url: str) -> str:
    """``url`` as typed with its password replaced by ***, for a URL that SQLAlchemy cannot parse (so cannot hide it in)."""
    return _QUERY_PASSWORD.sub("***", _USER_PASSWORD.sub(r"\1***", url))


def _shown(url: URL) -> str:
    # SQLAlchemy hides the password after user: but not one given as a query parameter, which psycopg accepts too.
    return _QUERY_PASSWORD.sub("***", url.render_as_string(hide_password=True))


def _engine_url(url: str) -> URL:
    """``url`` parsed and checked, with the driver SliceScope connects through; each problem is one line without the password."""
    if not url.strip():
        raise SliceScopeError("the database URL is empty", _URL_FIX)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SliceScopeError(f"'{_without_password(url)}' is not a database URL", _URL_FIX) from None
    except ValueError:
        # The port is the one part SQLAlchemy converts while parsing.
        raise SliceScopeError(f"the database URL '{_without_password(url)}' has a port that is not a number", _URL_FIX) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # psycopg would only refuse it when connecting, as if the server were down.
        raise SliceScopeError(f"the database URL '{_shown(parsed)}' has a port outside 1 to 65535", _URL_FIX)
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in _DRIVERS:
        raise SliceScopeError(f"SliceScope keeps annotations in SQLite or PostgreSQL, not {backend}", _URL_FIX)
    if driver not in _INTERCHANGEABLE_DRIVERS[backend]:
        raise SliceScopeError(f"SliceScope connects to {backend} through {_DRIVERS[backend]}, not {driver}", f"leave +{driver} out of the URL: {_URL_FIX}")
    if backend == "sqlite":
        return parsed
    # Plain postgresql:// would pick psycopg2, which is not installed; psycopg 3 is.
    return parsed.set(drivername="postgresql+psycopg")


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        # Several processes write one file: wait up to 30 s for a lock instead of failing at once.
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _write_ahead_log(connection, _record):
            # WAL lets readers go on while one session writes.
            connection.execute("PRAGMA journal_mode=WAL")

        return engine
    # A shared server may restart under a long-lived app: check pooled connections before use, and give up on connecting after 10 s.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


@contextmanager
def database_errors_explained(shown_url: str) -> Iterator[None]:
    """Turns the database being down, locked or forbidden into a SliceScopeError naming ``shown_url`` (password hidden)."""
    try:
        yield
    except (OperationalError, ProgrammingError) as error:
        # Our statements are fixed, so these come from the database's state: down, locked, or a user without rights.
        reason = str(error.orig).strip().splitlines()[0] if error.orig else "no connection"
        raise SliceScopeError(
            f"the annotation database at {shown_url} cannot be used ({reason})",
            f"check that it runs and that its user may create and write tables, or {_CONFIGURE_URL}",
        ) from None


def open_database(url: str, metadata: MetaData) -> tuple[Engine, str]:
    """An engine on ``url`` with ``metadata``'s tables created if missing, and the URL to show (password hidden)."""
    parsed = _engine_url(url)
    shown_url = _shown(parsed)
    engine = _create_engine(parsed)
    with database_errors_explained(shown_url):
        for attempt in range(_SETUP_ATTEMPTS):
            try:
                # Connect first, so that an unreachable database fails once and clearly.
                with engine.connect():
                    pass
                metadata.create_all(engine)
                break
            except DBAPIError as error:
                # Sessions starting together on a fresh database race: to create the tables (the losers' CREATE
                # fails because the winner's table now exists) and, on SQLite, to switch the new file to WAL,
                # which reports "database is locked" at once instead of waiting for the busy timeout. A short
                # wait and a second, checked pass see the finished state; other errors are real.
                racing = isinstance(error, IntegrityError | ProgrammingError) or "locked" in str(error.orig) or "exists" in str(error.orig)
                if not racing or attempt == _SETUP_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
    return engine, shown_url


def _one_line(text: str) -> str:
    # Control characters (NUL, terminal escapes) are dropped; line breaks and other whitespace runs become one space.
    return " ".join("".join(char for char in text if char.isspace() or unicodedata.category(char) != "Cc").split())


def clean_text(text: object, what: str, max_chars: int, required: bool = True, multiline: bool = False) -> str:
    """``text`` on one line (or, if ``multiline``, with its line breaks kept) without control characters, checked against its limit."""
    if not isinstance(text, str):
        raise SliceScopeError(f"the {what} must be text, not {type(text).__name__}", f"pass the {what} as a string")
    if multiline:
        cleaned = "\n".join(_one_line(line) for line in text.splitlines()).strip("\n")
    else:
        cleaned = _one_line(text)
    if required and not cleaned:
        raise SliceScopeError(f"the {what} is empty", f"give a {what}")
    if len(cleaned) > max_chars:
        raise SliceScopeError(f"the {what} has {len(cleaned)} characters, more than the limit of {max_chars}", f"shorten it to {max_chars} characters")
    return cleaned


def _slice_id(slice_id: object) -> int:
    try:
        number = index(slice_id)
    except TypeError:
        raise SliceScopeError(f"slice id {slice_id!r} is not a whole number", "pass the slice's number, e.g. 3") from None
    if number < 0:
        raise SliceScopeError(f"slice id {number} is negative", "slice ids start at 0")
    return number


def _kind(kind: object) -> str:
    if kind not in ANNOTATION_KINDS:
        raise SliceScopeError(f"unknown annotation kind {kind!r}", f"use one of: {', '.join(ANNOTATION_KINDS)}")
    return kind


def _scopes(scopes: str | Sequence[str]) -> list[str]:
    return [scopes] if isinstance(scopes, str) else list(scopes)


def as_utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone (they were written in UTC); PostgreSQL in the session's zone.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _not_undone():
    return ~exists().where(_undo_events.c.undoes == events.c.id)


def _describe(row) -> str:
    if row.target_type == "slice":
        if row.action == "clear":
            return f"clearing slice {row.target}'s annotation"
        note = f" ({row.note})" if row.note else ""
        return f"marking slice {row.target} as {row.kind}{note}"
    if row.action == "clear":
        return f"unmarking image {row.target} as mislabelled"
    return f"marking image {row.target} as mislabelled (should be {row.label})"


class DatabaseStore:
    """What every store shares: one engine on a database URL (its ``tables`` created if missing), reads, closing."""

    tables: MetaData

    def __init__(self, url: str):
        self._engine, self.url = open_database(url, self.tables)

    @classmethod
    def for_workspace(cls, workspace_path: str | Path, configured: str | None = None) -> Self:
        return cls(database_url(workspace_path, configured))

    @classmethod
    def for_version_line(cls, workspace: Workspace, configured: str | None = None) -> Self:
        """The store shared by ``workspace``'s whole line of model versions: its root version's (or ``configured``, a URL)."""
        return cls.for_workspace(version_root(workspace).path, configured)

    def close(self) -> None:
        """Close the pooled connections (the store reopens them if used again)."""
        self._engine.dispose()

    def _rows(self, statement) -> list:
        with database_errors_explained(self.url), self._engine.connect() as connection:
            return list(connection.execute(statement))


class AnnotationStore(DatabaseStore):
    """Annotations in the database at ``url`` (SQLite or PostgreSQL); creates its table if missing."""

    tables = _metadata

    def _insert(self, **values) -> tuple[int, datetime]:
        created_at = datetime.now(UTC)
        with database_errors_explained(self.url), self._engine.begin() as connection:
            result = connection.execute(insert(events).values(created_at=created_at, **values))
            return result.inserted_primary_key[0], created_at

    def _current(self, scope: str, target_type: str, slicing: str, target: str | None = None) -> list:
        """The latest not-undone set/clear event per target (of one target, if given); clears included."""
        latest = func.row_number().over(partition_by=events.c.target, order_by=events.c.id.desc()).label("latest")
        conditions = [
            events.c.scope == scope, events.c.target_type == target_type, events.c.slicing == slicing,
            events.c.action.in_(("set", "clear")), _not_undone(),
        ]
        if target is not None:
            conditions.append(events.c.target == target)
        ranked = select(events, latest).where(*conditions).subquery()
        return self._rows(select(ranked).where(ranked.c.latest == 1).order_by(ranked.c.id))

    # -- slices ------------------------------------------------------------
    def set_slice(self, scope: str, slicing: str, slice_id: int, kind: str, note: str, analyst: str) -> SliceAnnotation:
        """Annotate (or re-annotate) slice ``slice_id`` of ``slicing`` in the workspace ``scope``."""
        slice_id, kind = _slice_id(slice_id), _kind(kind)
        note, analyst = clean_text(note, "note", NOTE_MAX_CHARS, required=False), clean_text(analyst, "analyst name", ANALYST_MAX_CHARS)
        event_id, created_at = self._insert(
            scope=clean_text(scope, "scope", NAME_MAX_CHARS), slicing=clean_text(slicing, "slicing", NAME_MAX_CHARS),
            target_type="slice", target=str(slice_id), action="set", kind=kind, note=note, analyst=analyst,
        )
        return SliceAnnotation(slice_id, kind, note, analyst, created_at, event_id)

    def clear_slice(self, scope: str, slicing: str, slice_id: int, analyst: str) -> None:
        """Remove slice ``slice_id``'s annotation; refused when it has none."""
        slice_id, analyst = _slice_id(slice_id), clean_text(analyst, "analyst name", ANALYST_MAX_CHARS)
        current = self._current(scope, "slice", slicing, str(slice_id))
        if not current or current[0].action != "set":
            raise SliceScopeError(f"slice {slice_id} has no annotation to clear", "annotate it first, or pick an annotated slice")
        self._insert(scope=scope, slicing=slicing, target_type="slice", target=str(slice_id), action="clear", note="", analyst=analyst)

    def slice_annotations(self, scope: str, slicing: str) -> dict[int, SliceAnnotation]:
        """The current annotation of every annotated slice of ``slicing``, by slice id."""
        return {
            int(row.target): SliceAnnotation(int(row.target), row.kind, row.note, row.analyst, as_utc(row.created_at), row.id)
            for row in self._current(scope, "slice", slicing) if row.action == "set"
        }

    # -- images ------------------------------------------------------------
    def mark_mislabelled(self, scope: str, image_id: str, label: str, analyst: str) -> Relabel:
        """Record that image ``image_id`` of the dataset ``scope`` should be labelled ``label``."""
        image_id, label = clean_text(image_id, "image id", NAME_MAX_CHARS), clean_text(label, "label", NAME_MAX_CHARS)
        analyst = clean_text(analyst, "analyst name", ANALYST_MAX_CHARS)
        event_id, created_at = self._insert(
            scope=clean_text(scope, "scope", NAME_MAX_CHARS), slicing="", target_type="image", target=image_id,
            action="set", label=label, note="", analyst=analyst,
        )
        return Relabel(image_id, label, analyst, created_at, event_id)

    def unmark_mislabelled(self, scope: str, image_id: str, analyst: str) -> None:
        """Take back that image ``image_id`` is mislabelled; refused when it is not marked."""
        analyst = clean_text(analyst, "analyst name", ANALYST_MAX_CHARS)
        current = self._current(scope, "image", "", image_id)
        if not current or current[0].action != "set":
            raise SliceScopeError(f"image {image_id} is not marked as mislabelled", "mark it first, or pick a marked image")
        self._insert(scope=scope, slicing="", target_type="image", target=image_id, action="clear", note="", analyst=analyst)

    def relabels(self, scope: str) -> dict[str, Relabel]:
        """Every image of the dataset ``scope`` currently marked as mislabelled, by image id."""
        return {
            row.target: Relabel(row.target, row.label, row.analyst, as_utc(row.created_at), row.id)
            for row in self._current(scope, "image", "") if row.action == "set"
        }

    # -- undo, history, export -----------------------------------------------
    def undo_last(self, analyst: str, scopes: str | Sequence[str]) -> str | None:
        """Undo ``analyst``'s latest set/clear event in ``scopes`` (e.g. a workspace's and its dataset's fingerprint).

        Returns what was undone, in words, or None when there is nothing left to undo.
        """
        analyst = clean_text(analyst, "analyst name", ANALYST_MAX_CHARS)
        latest = (
            select(events)
            .where(events.c.scope.in_(_scopes(scopes)), events.c.analyst == analyst, events.c.action.in_(("set", "clear")), _not_undone())
            .order_by(events.c.id.desc())
            .limit(1)
        )
        while rows := self._rows(latest):
            row = rows[0]
            try:
                self._insert(
                    scope=row.scope, slicing=row.slicing, target_type=row.target_type, target=row.target,
                    action="undo", undoes=row.id, note="", analyst=analyst,
                )
            except IntegrityError:
                continue  # another session of this analyst undid the same event first: undo the next one
            return f"undid {_describe(row)}"
        return None

    def history(self, scopes: str | Sequence[str], limit: int = 100) -> pd.DataFrame:
        """The latest ``limit`` events in ``scopes``, newest first, with whether each was undone since."""
        undone = exists().where(_undo_events.c.undoes == events.c.id).label("undone")
        rows = self._rows(select(events, undone).where(events.c.scope.in_(_scopes(scopes))).order_by(events.c.id.desc()).limit(limit))
        frame = pd.DataFrame([tuple(row) for row in rows], columns=[*events.c.keys(), "undone"]).rename(columns={"id": "event_id"})
        frame["event_id"] = frame["event_id"].astype("int64")
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        frame["undoes"] = frame["undoes"].astype("Int64")
        frame["undone"] = frame["undone"].astype(bool)
        return frame

    def export(self, scope: str, slicing: str, dataset_scope: str) -> dict:
        """The current slice annotations of ``slicing`` and the dataset's relabels, JSON-ready."""
        return {
            "scope": scope,
            "slicing": slicing,
            "dataset_scope": dataset_scope,
            "slices": [
                {"slice_id": a.slice_id, "kind": a.kind, "note": a.note, "analyst": a.analyst, "created_at": a.created_at.isoformat()}
                for a in self.slice_annotations(scope, slicing).values()
            ],
            "relabels": [
                {"image_id": r.image_id, "label": r.label, "analyst": r.analyst, "created_at": r.created_at.isoformat()}
                for r in self.relabels(dataset_scope).values()
            ],
        }


def open_store(workspace: Workspace, configured: str | None = None) -> AnnotationStore:
    """The annotation store of ``workspace``'s whole version line (the root's, unless ``configured`` names a database URL).

    >>> store = open_store(Workspace("demo/workspace"))  # doctest: +SKIP
    """
    return AnnotationStore.for_version_line(workspace, configured)
