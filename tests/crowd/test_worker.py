"""The worker app's decisions without a browser: who is visiting, what is still missing, boxes from canvas to pixels."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate.worker import (
    MTURK_PREVIEW,
    Answer,
    DrawnBox,
    mturk_submit_action,
    mturk_submit_form,
    prolific_completion_url,
    read_visit,
    split_attributes,
    worker_database_url,
)
from core.crowd import Box


def test_platform_parameters_are_read_and_untrusted_ones_dropped():
    mturk = read_visit({"token": "t", "workerId": "A1B2", "assignmentId": "3XYZ", "hitId": "H-1", "turkSubmitTo": "https://workersandbox.mturk.com"})
    assert (mturk.worker_id, mturk.assignment_id, mturk.hit_id, mturk.platform, mturk.preview) == ("A1B2", "3XYZ", "H-1", "mturk", False)
    assert mturk_submit_action(mturk) == "https://workersandbox.mturk.com/mturk/externalSubmit"
    # A crafted link cannot send the completion code elsewhere, and ids that are not ids are not stored.
    crafted = read_visit({"token": "t", "workerId": "<script>", "assignmentId": "A", "turkSubmitTo": "https://evil.example/mturk"})
    assert crafted.worker_id is None and mturk_submit_action(crafted) is None
    assert mturk_submit_action(read_visit({"token": "t", "assignmentId": "A", "turkSubmitTo": "http://www.mturk.com"})) is None
    preview = read_visit({"token": "t", "assignmentId": MTURK_PREVIEW, "hitId": "H"})
    assert preview.preview and mturk_submit_action(preview) is None
    prolific = read_visit({"token": "t", "PROLIFIC_PID": "5f0c", "STUDY_ID": "s"})
    assert (prolific.platform, prolific.worker_id) == ("prolific", "5f0c")
    assert prolific_completion_url("AB12 &x") == "https://app.prolific.com/submissions/complete?cc=AB12+%26x"
    assert read_visit({}).token is None and read_visit({"token": "  "}).token is None
    assert read_visit({"token": "t", "workerId": "w" * 65, "assignmentId": "a"}).worker_id is None


def test_the_database_is_the_deployments_or_the_demos(monkeypatch, tmp_path):
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    assert worker_database_url(None, tmp_path) == f"sqlite:///{tmp_path / 'annotations.sqlite'}"
    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", "postgresql://crowd@db/slicescope")
    assert worker_database_url(None, tmp_path) == "postgresql://crowd@db/slicescope"
    assert worker_database_url("sqlite:////srv/crowd.sqlite", Path("/unused")) == "sqlite:////srv/crowd.sqlite"


def test_attributes_are_split_and_deduplicated():
    assert split_attributes(" white, square;white ,, ") == ["white", "square"]
    assert split_attributes("") == []


def _canvas(left, top, width, height):
    return {"label": "", "left": left, "top": top, "width": width, "height": height}


def test_boxes_keep_their_number_and_terms_through_moves_deletes_and_new_boxes():
    answer = Answer(("a", "b"))
    first, second = answer.update_from_canvas("a", [_canvas(10, 10, 50, 50), _canvas(100, 100, 40, 40)])
    first.entity_type, first.attributes, second.entity_type = "stamp", "white", "water"
    # Box 1 moved: same count, so it keeps its place, number and terms.
    moved = answer.update_from_canvas("a", [_canvas(20, 15, 50, 50), _canvas(100, 100, 40, 40)])
    assert [(box.number, box.entity_type, box.left) for box in moved] == [(1, "stamp", 20.0), (2, "water", 100.0)]
    # Box 1 deleted, then a new box drawn elsewhere: the new one is box 3 with empty terms, never box 1's.
    answer.update_from_canvas("a", [_canvas(100, 100, 40, 40)])
    redrawn = answer.update_from_canvas("a", [_canvas(100, 100, 40, 40), _canvas(200, 150, 50, 50)])
    assert [(box.number, box.entity_type) for box in redrawn] == [(2, "water"), (3, "")]


def test_a_box_back_at_its_place_is_the_same_box_with_its_terms():
    answer = Answer(("a",))
    first, second = answer.update_from_canvas("a", [_canvas(10, 10, 50, 50), _canvas(100, 100, 40, 40)])
    first.entity_type, first.attributes, second.entity_type = "stamp", "white", "water"
    # A canvas reloading its drawing reports no boxes for a moment, then all of them again: nothing typed is lost.
    assert answer.update_from_canvas("a", []) == []
    back = answer.update_from_canvas("a", [_canvas(10, 10, 50, 50), _canvas(100, 100, 40, 40)])
    assert [(box.number, box.entity_type, box.attributes) for box in back] == [(1, "stamp", "white"), (2, "water", "")]
    # A deleted box brought back by the canvas's undo gets its terms back too; a box elsewhere is a new one.
    answer.update_from_canvas("a", [_canvas(100, 100, 40, 40)])
    undone = answer.update_from_canvas("a", [_canvas(100, 100, 40, 40), _canvas(10, 10, 50, 50), _canvas(200, 10, 30, 30)])
    assert [(box.number, box.entity_type) for box in undone] == [(2, "water"), (1, "stamp"), (3, "")]
    # Only the last few boxes that left are remembered, and they travel with the draft.
    for step in range(40):
        answer.update_from_canvas("a", [_canvas(step, 300, 10, 10)])
        answer.update_from_canvas("a", [])
    assert len(answer.removed["a"]) == 20
    restored, _ = Answer.from_draft(("a",), answer.to_draft(0))
    assert restored.update_from_canvas("a", [_canvas(39, 300, 10, 10)])[0].number == answer.numbers_used["a"]


def test_missing_work_is_named_and_complete_answers_become_image_pixels():
    answer = Answer(("a", "b"))
    assert answer.missing() == ["Image 1 has no box yet.", "Image 2 has no box yet."]
    answer.boxes["a"] = [DrawnBox(1, 40, 40, 80, 120, "stamp", ""), DrawnBox(2, 0, 0, 400, 400, " ", "big")]
    answer.boxes["b"] = [DrawnBox(1, 200, 0, 200, 200, "water", "blue, wavy")]
    assert answer.missing() == ["Image 1, box 1: add at least one attribute (an adjective).",
                                "Image 1, box 2: type what the box shows (one noun)."]
    answer.boxes["a"][0].attributes = "white"
    answer.boxes["a"][1].entity_type = "picture"
    assert answer.missing() == []
    boxes = answer.store_boxes({"a": (400, 400), "b": (400, 200)}, {"a": (64, 64), "b": (128, 64)})
    assert boxes == [Box("a", 6.4, 6.4, 19.2, 25.6, "stamp", ("white",)), Box("a", 0.0, 0.0, 64.0, 64.0, "picture", ("big",)),
                     Box("b", 64.0, 0.0, 128.0, 64.0, "water", ("blue", "wavy"))]


@pytest.mark.parametrize("attributes", [",".join(f"a{number}" for number in range(11))])
def test_too_many_attributes_are_named(attributes):
    answer = Answer(("a",), boxes={"a": [DrawnBox(1, 0, 0, 10, 10, "stamp", attributes)]})
    assert answer.missing() == ["Image 1, box 1: keep at most 10 attributes."]


def test_the_mturk_form_escapes_every_value():
    form = mturk_submit_form("https://www.mturk.com/mturk/externalSubmit", 'A"><script>alert(1)</script>', "C0DE")
    assert "<script>" not in form and 'value="A&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in form
    assert form.startswith('<form method="post" action="https://www.mturk.com/mturk/externalSubmit"') and 'value="C0DE"' in form


def test_a_draft_round_trips_and_a_malformed_one_is_dropped_not_trusted():
    answer = Answer(("a", "b"))
    answer.update_from_canvas("a", [_canvas(10, 10, 50, 50)])[0].entity_type = "stamp"
    answer.seconds.update(a=12.5, b=3.0)
    restored, position = Answer.from_draft(("a", "b"), answer.to_draft(1))
    assert (restored, position) == (answer, 1)
    hostile = {"position": 99, "boxes": {"a": [{"number": "1"}, {"number": 2, "left": 1, "top": 1, "width": 5, "height": 5,
                                                 "entity_type": "x", "attributes": "y", "extra": 1}, "box"],
                                          "zzz": [{"number": 1}]},
               "seconds": {"a": -4, "b": "7", "c": 3.0}, "numbers_used": {"a": True}}
    restored, position = Answer.from_draft(("a", "b"), hostile)
    assert (restored, position) == (Answer(("a", "b"), boxes={"a": []}), 0)
    assert Answer.from_draft(("a",), ["not", "a", "draft"]) == (Answer(("a",)), 0)
