"""The annotation store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect

from core.errors import SliceScopeError
from core.store import ANALYST_MAX_CHARS, NOTE_MAX_CHARS, AnnotationStore, database_url

WS, DATASET, SLICING = "workspace-fp", "dataset-fp", "attribution:k=50:seed=0"


@pytest.fixture
def open_store(url):
    """Opens stores on ``url`` (each as a new app session would) and closes them after the test."""
    stores = []

    def open_one() -> AnnotationStore:
        stores.append(AnnotationStore(url))
        return stores[-1]

    yield open_one
    for store in stores:
        store.close()


def test_set_edit_clear_and_undo(open_store):
    store = open_store()
    first = store.set_slice(WS, SLICING, 3, "spurious", "water background", "alice")
    assert (first.slice_id, first.kind, first.note, first.analyst) == (3, "spurious", "water background", "alice")
    assert first.created_at.tzinfo is not None and abs((datetime.now(UTC) - first.created_at).total_seconds()) < 60
    store.set_slice(WS, SLICING, 7, "core", "", "bob")
    store.set_slice(WS, SLICING, 3, "wrong_labels", "stars labelled triangle", "bob")  # an edit is a new "set"
    current = store.slice_annotations(WS, SLICING)
    assert sorted(current) == [3, 7]
    assert (current[3].kind, current[3].note, current[3].analyst) == ("wrong_labels", "stars labelled triangle", "bob")
    assert store.slice_annotations(WS, "features:k=50:seed=0") == {} and store.slice_annotations("other-workspace", SLICING) == {}

    store.clear_slice(WS, SLICING, 7, "alice")
    assert sorted(store.slice_annotations(WS, SLICING)) == [3]
    with pytest.raises(SliceScopeError, match="slice 7 has no annotation to clear"):
        store.clear_slice(WS, SLICING, 7, "alice")

    # Alice's latest event is the clear: undoing it brings back Bob's annotation of slice 7.
    assert store.undo_last("alice", WS) == "undid clearing slice 7's annotation"
    assert sorted(store.slice_annotations(WS, SLICING)) == [3, 7]
    # Bob's edit of slice 3 undone: Alice's original comes back.
    assert store.undo_last("bob", WS) == "undid marking slice 3 as wrong_labels (stars labelled triangle)"
    assert store.slice_annotations(WS, SLICING)[3] == first
    assert store.undo_last("bob", WS) == "undid marking slice 7 as core"
    assert store.undo_last("bob", WS) is None
    assert store.undo_last("carol", WS) is None

    history = store.history(WS)
    assert list(history["action"]) == ["undo", "undo", "undo", "clear", "set", "set", "set"]
    assert list(history["analyst"]) == ["bob", "bob", "alice", "alice", "bob", "bob", "alice"]
    assert list(history["undone"]) == [False, False, False, True, True, True, False]
    assert history["event_id"].is_monotonic_decreasing and str(history["created_at"].dt.tz) == "UTC"
    assert len(store.history(WS, limit=2)) == 2 and store.history("nothing-here").empty


def test_annotations_survive_reopening(open_store):
    store = open_store()
    store.set_slice(WS, SLICING, 0, "core", "the main mode", "alice")
    store.mark_mislabelled(DATASET, "img-1", "star", "alice")
    store.close()
    reopened = open_store()
    assert reopened.slice_annotations(WS, SLICING)[0].note == "the main mode"
    assert reopened.slice_annotations(WS, SLICING)[0].created_at.tzinfo is UTC
    assert reopened.relabels(DATASET)["img-1"].label == "star"
    assert reopened.undo_last("alice", [WS, DATASET]) == "undid marking image img-1 as mislabelled (should be star)"


def test_relabels_and_export(open_store):
    store = open_store()
    store.mark_mislabelled(DATASET, "img-1", "star", "alice")
    store.mark_mislabelled(DATASET, "img-2", "circle", "alice")
    store.mark_mislabelled(DATASET, "img-1", "triangle", "bob")
    store.unmark_mislabelled(DATASET, "img-2", "bob")
    with pytest.raises(SliceScopeError, match="not marked as mislabelled"):
        store.unmark_mislabelled(DATASET, "img-3", "bob")
    relabels = store.relabels(DATASET)
    assert list(relabels) == ["img-1"] and (relabels["img-1"].label, relabels["img-1"].analyst) == ("triangle", "bob")
    # Relabels belong to the dataset, slices to the workspace: neither shows in the other's scope.
    assert store.relabels(WS) == {} and store.slice_annotations(DATASET, "") == {}

    store.set_slice(WS, SLICING, 4, "spurious", "red squares", "alice")
    exported = store.export(WS, SLICING, DATASET)
    assert [(row["slice_id"], row["kind"], row["note"]) for row in exported["slices"]] == [(4, "spurious", "red squares")]
    assert [(row["image_id"], row["label"]) for row in exported["relabels"]] == [("img-1", "triangle")]
    assert datetime.fromisoformat(exported["slices"][0]["created_at"]).tzinfo is not None

    # Undo spans both scopes: Bob's unmarking of img-2 is his latest event.
    assert store.undo_last("bob", [WS, DATASET]) == "undid unmarking image img-2 as mislabelled"
    assert sorted(store.relabels(DATASET)) == ["img-1", "img-2"]
    assert len(store.history([WS, DATASET])) == 6


@pytest.mark.parametrize("note", [
    "'; DROP TABLE annotation_events; --",
    "<script>alert(1)</script>",
    'Robert"); DELETE FROM annotation_events WHERE ("1"="1',
    "ünïcødé ✓ 水 🐟 مرحبا",
    "x" * NOTE_MAX_CHARS,
])
def test_hostile_text_is_stored_verbatim(open_store, url, note):
    store = open_store()
    store.set_slice(WS, SLICING, 1, "other", note, "mallory'); --")
    store.mark_mislabelled(DATASET, "img'; --", note[:200], "<b>mallory</b>")
    annotation = store.slice_annotations(WS, SLICING)[1]
    assert (annotation.note, annotation.analyst) == (note, "mallory'); --")
    assert store.relabels(DATASET)["img'; --"].label == note[:200]
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    assert inspect(engine).has_table("annotation_events")
    engine.dispose()
    assert len(store.history([WS, DATASET])) == 2


def test_control_characters_are_removed_and_text_kept_on_one_line(open_store):
    store = open_store()
    annotation = store.set_slice(WS, SLICING, 2, "spurious", "  water\x00 back\x1b[31mground\r\n\tsecond line\x7f  ", "al\x00ice\n")
    assert (annotation.note, annotation.analyst) == ("water back[31mground second line", "alice")
    assert store.slice_annotations(WS, SLICING)[2] == annotation


@pytest.mark.parametrize("change, message", [
    ({"note": "x" * (NOTE_MAX_CHARS + 1)}, f"limit of {NOTE_MAX_CHARS}"),
    ({"note": "x" * 10_000}, "has 10000 characters"),
    ({"analyst": "a" * (ANALYST_MAX_CHARS + 1)}, f"limit of {ANALYST_MAX_CHARS}"),
    ({"analyst": " \x00\n "}, "analyst name is empty"),
    ({"kind": "important"}, "unknown annotation kind 'important' — use one of: core, spurious, wrong_labels, other"),
    ({"slice_id": -1}, "slice id -1 is negative"),
    ({"slice_id": "3"}, "not a whole number"),
    ({"note": None}, "note must be text"),
])
def test_bad_input_is_refused(open_store, change, message):
    store = open_store()
    arguments = {"scope": WS, "slicing": SLICING, "slice_id": 3, "kind": "spurious", "note": "fine", "analyst": "alice"} | change
    with pytest.raises(SliceScopeError, match=message) as error:
        store.set_slice(**arguments)
    assert "\n" not in str(error.value)
    assert store.history(WS).empty


def _write_events(url: str, writer: int, count: int, barrier) -> None:
    """One app session: opens the store at the same moment as the others, then annotates ``count`` slices."""
    barrier.wait(timeout=60)
    store = AnnotationStore(url)
    for slice_id in range(count):
        store.set_slice(WS, SLICING, slice_id, "spurious", f"writer {writer}: slice {slice_id}", f"analyst-{writer}")
    store.close()


def _undo_events(url: str, count: int, barrier) -> None:
    store = AnnotationStore(url)
    barrier.wait(timeout=60)
    for _ in range(count):
        assert store.undo_last("shared", WS) is not None
    store.close()


def _run_in_parallel(target, argument_lists) -> None:
    # Forked (spawning would re-import torch in every child); each child opens its own store, so no connection is shared.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(argument_lists))
    processes = [context.Process(target=target, args=(*arguments, barrier)) for arguments in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_parallel_writers_lose_nothing(url, open_store):
    # Four sessions start together on a fresh database (racing to create the table), then write 50 events each.
    _run_in_parallel(_write_events, [(url, writer, 50) for writer in range(4)])
    store = open_store()
    history = store.history(WS, limit=1000)
    assert len(history) == 200 and history["event_id"].is_unique
    assert history.groupby("analyst").size().to_dict() == {f"analyst-{writer}": 50 for writer in range(4)}
    current = store.slice_annotations(WS, SLICING)
    assert sorted(current) == list(range(50))
    latest = history.groupby("target")["event_id"].max()
    assert all(current[slice_id].event_id == latest[str(slice_id)] for slice_id in current)


def test_parallel_undos_never_undo_an_event_twice(url, open_store):
    store = open_store()
    for slice_id in range(40):
        store.set_slice(WS, SLICING, slice_id, "core", "", "shared")
    # The same analyst in four sessions, all undoing at once: 40 undos must undo 40 different events.
    _run_in_parallel(_undo_events, [(url, 10) for _ in range(4)])
    history = store.history(WS, limit=1000)
    undos = history[history["action"] == "undo"]
    assert len(undos) == 40 and undos["undoes"].is_unique
    assert store.slice_annotations(WS, SLICING) == {}
    assert store.undo_last("shared", WS) is None


@pytest.mark.parametrize("bad_url, message", [
    ("postgresql://alice:s3cret@127.0.0.1:1/annotations", r"annotation database at postgresql\+psycopg://alice:\*\*\*@127.0.0.1:1/annotations cannot be used"),
    ("sqlite:////nonexistent/folder/annotations.sqlite", "cannot be used"),
    ("not a url", "is not a database URL"),
    ("mysql://127.0.0.1/annotations", "SQLite or PostgreSQL, not mysql"),
])
def test_unusable_database_is_explained(bad_url, message):
    with pytest.raises(SliceScopeError, match=message) as error:
        AnnotationStore(bad_url)
    assert "s3cret" not in str(error.value) and "SLICESCOPE_DATABASE_URL" in str(error.value)


def test_database_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    assert database_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'annotations.sqlite'}"
    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", "postgresql://env/db")
    assert database_url(tmp_path) == "postgresql://env/db"
    assert database_url(tmp_path, configured="postgresql://secrets/db") == "postgresql://secrets/db"
    assert database_url(tmp_path, configured="  ") == "postgresql://env/db"


def test_for_workspace_keeps_a_sqlite_file_in_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    store = AnnotationStore.for_workspace(tmp_path)
    store.set_slice(WS, SLICING, 0, "core", "", "alice")
    store.close()
    # Write-ahead logging, so that one session's write does not block the others' reads.
    with sqlite3.connect(tmp_path / "annotations.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.url == f"sqlite:///{tmp_path.resolve() / 'annotations.sqlite'}"
