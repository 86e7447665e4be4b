"""The crowd campaign store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, inspect, select, update

from core.concepts.annotations import ANNOTATION_COLUMNS, validate_annotations
from core.crowd import (
    Box,
    CampaignImage,
    CampaignSettings,
    CampaignStore,
    canvas_to_image_box,
)
from core.crowd.campaigns import answers, assignments, boxes  # the store's tables, which the tests count rows of
from core.errors import SliceScopeError

WS = "workspace-fp"
IMAGES = [f"img-{number}" for number in range(5)]
SETTINGS = CampaignSettings(images_per_task=2, workers_per_task=2, min_seconds_per_image=3, instructions="Draw a box around each salient region.")


def _engine(url: str):
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture
def store(url):
    opened = CampaignStore(url)
    yield opened
    opened.close()


def _answer(image_ids, entity_type="stamp", attributes=("yellow",)):
    return [Box(image_id, 1, 2, 30, 40, entity_type, tuple(attributes)) for image_id in image_ids]


def _seconds(image_ids, spent=10.0):
    return {image_id: spent for image_id in image_ids}


def _count(url: str, table) -> int:
    engine = _engine(url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return count


def test_create_open_submit_and_read_back(store, url):
    campaign = store.create_campaign(WS, "stamps", IMAGES, SETTINGS)
    # 5 images in tasks of 2 → 3 tasks, 2 workers each; only hashes are stored.
    assert (campaign.n_images, len(campaign.tokens), len({token.task_id for token in campaign.tokens})) == (5, 6, 3)
    assert store.campaigns(WS) == [store.campaign(campaign.id)] and store.campaigns("other") == []
    assert store.campaign(campaign.id).settings == SETTINGS and store.campaign(campaign.id).tokens == ()
    engine = _engine(url)
    with engine.connect() as connection:
        hashes = set(connection.execute(select(assignments.c.token_hash)).scalars())
    engine.dispose()
    assert len(hashes) == 6 and not hashes & {token.token for token in campaign.tokens}

    first, second, last = campaign.tokens[0], campaign.tokens[1], campaign.tokens[-1]
    view = store.open_task(first.token)
    assert (view.campaign_id, view.instructions, view.image_ids) == (campaign.id, SETTINGS.instructions, ("img-0", "img-1"))
    assert store.open_task(last.token).image_ids == ("img-4",)

    code = store.submit(first.token, [*_answer(view.image_ids), Box("img-0", 5, 5, 9, 9, "Grass", ("green", "short", "green"))],
                        _seconds(view.image_ids), worker_id="W1", hit_id="H1")
    assert len(code) == 10
    # Too fast: stored, with the reason, and left out of the analysis unless asked for.
    store.submit(second.token, _answer(view.image_ids, "water"), _seconds(view.image_ids, 1.5))

    progress = store.progress(campaign.id)
    assert list(progress["status"]) == ["submitted", "submitted", "open", "open", "open", "started"]
    assert list(progress["task_status"]) == ["done", "done", "open", "open", "in progress", "in progress"]
    assert list(progress["boxes"]) == [3, 2, 0, 0, 0, 0] and list(progress["seconds"][:2]) == [20.0, 3.0]
    assert progress["worker_id"][0] == "W1" and progress["rejection"][0] == ""
    assert progress["rejection"][1] == "2 of 2 images answered in under 3 s (img-0 1.5 s, img-1 1.5 s)"
    assert str(progress["submitted_at"].dt.tz) == "UTC" and progress["opened_at"][2:].isna().tolist() == [True, True, True, False]

    frame = store.annotations_frame(campaign.id)
    assert list(frame.columns) == list(ANNOTATION_COLUMNS)
    assert frame.values.tolist() == [
        ["img-0", "W1", frame["box_id"][0], "stamp", "yellow"],
        ["img-1", "W1", frame["box_id"][1], "stamp", "yellow"],
        ["img-0", "W1", frame["box_id"][2], "Grass", "green"],
        ["img-0", "W1", frame["box_id"][2], "Grass", "short"],
    ]
    validate_annotations(frame)
    with_rejected = store.annotations_frame(campaign.id, include_rejected=True)
    assert len(with_rejected) == 6 and set(with_rejected["worker_id"]) == {"W1", f"assignment-{second.assignment_id}"}

    sizes = {image_id: (64, 48) for image_id in IMAGES}
    coco = store.export_coco(campaign.id, sizes)
    assert [image["file_name"] for image in coco["images"]] == IMAGES and coco["images"][0] | {"id": 0} == {"id": 0, "file_name": "img-0", "width": 64, "height": 48}
    assert coco["categories"] == [{"id": 1, "name": "Grass"}, {"id": 2, "name": "stamp"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in coco["annotations"]] == [
        (1, 2, [1.0, 2.0, 29.0, 38.0], 29.0 * 38.0), (2, 2, [1.0, 2.0, 29.0, 38.0], 29.0 * 38.0), (1, 1, [5.0, 5.0, 4.0, 4.0], 16.0),
    ]
    assert coco["annotations"][2] | {"id": 0} == {
        "id": 0, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 4.0, 4.0], "area": 16.0, "iscrowd": 0,
        "worker_id": "W1", "seconds": 10.0, "entity_type": "Grass", "attributes": ["green", "short"],
    }
    assert len(store.export_coco(campaign.id, sizes, include_rejected=True)["annotations"]) == 5
    with pytest.raises(SliceScopeError, match="size of image 'img-1' is not known"):
        store.export_coco(campaign.id, {"img-0": (1, 1)})
    with pytest.raises(SliceScopeError, match="there is no campaign 999"):
        store.progress(999)


def test_forged_expired_and_reused_tokens_are_refused(store, url):
    campaign = store.create_campaign(WS, "stamps", IMAGES, SETTINGS)
    for forged in ["", "x" * 10_000, campaign.tokens[0].token[:-1] + "?", "' OR 1=1 --", None]:
        with pytest.raises(SliceScopeError, match="^this task link is not valid — open the link exactly as you received it"):
            store.open_task(forged)
        with pytest.raises(SliceScopeError, match="this task link is not valid"):
            store.submit(forged, [], {})

        with pytest.raises(SliceScopeError, match="this task link is not valid"):
            store.completion_code(forged)

    token = campaign.tokens[0]
    assert store.completion_code(token.token) is None
    code = store.submit(token.token, _answer(["img-0", "img-1"]), _seconds(["img-0", "img-1"]))
    with pytest.raises(SliceScopeError, match="^this task was already submitted"):
        store.open_task(token.token)
    assert store.completion_code(token.token) == code  # the worker who opens the link again gets the code again
    assert store.completion_code(campaign.tokens[1].token) is None
    # Submitting again is not an error: the worker gets the code back, and nothing new is stored.
    assert store.submit(token.token, _answer(["img-0", "img-1"], "other"), _seconds(["img-0", "img-1"])) == code
    assert (_count(url, answers), _count(url, boxes)) == (1, 2)
    # A racing second submit read the assignment before the first committed: the unique answer refuses its insert.
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(update(assignments).where(assignments.c.id == token.assignment_id).values(status="open"))
    assert store.submit(token.token, _answer(["img-0", "img-1"], "other"), _seconds(["img-0", "img-1"])) == code
    assert (_count(url, answers), _count(url, boxes)) == (1, 2)

    with engine.begin() as connection:
        connection.execute(update(assignments).where(assignments.c.id == token.assignment_id).values(status="submitted"))
        connection.execute(update(assignments).values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    engine.dispose()
    expired = campaign.tokens[1].token
    with pytest.raises(SliceScopeError, match="^this task has expired"):
        store.open_task(expired)
    with pytest.raises(SliceScopeError, match="^this task has expired"):
        store.submit(expired, _answer(["img-0", "img-1"]), _seconds(["img-0", "img-1"]))
    assert store.submit(token.token, [], {}) == code  # an answer already in stays valid after expiry
    assert list(store.progress(campaign.id)["status"]) == ["submitted"] + ["expired"] * 5


@pytest.mark.parametrize("submitted, seconds, message", [
    (_answer(["img-0"]), _seconds(["img-0", "img-1"]), "image 'img-1' has no box — draw at least one box on every image"),
    (_answer(["img-0", "img-1"], attributes=()), _seconds(["img-0", "img-1"]), "a box on image 'img-0' \\(stamp\\) has no attribute"),
    (_answer(["img-0", "img-1"], attributes=(" ", "\x00")), _seconds(["img-0", "img-1"]), "has no attribute"),
    (_answer(["img-0", "img-1"], entity_type=" \n "), _seconds(["img-0", "img-1"]), "entity type of a box on image 'img-0' is empty"),
    (_answer(["img-0", "img-1", "img-4"]), _seconds(["img-0", "img-1"]), "image 'img-4', which is not in this task"),
    (_answer(["img-0", "img-1"]) * 51, _seconds(["img-0", "img-1"]), "image 'img-0' has 51 boxes"),
    ([Box("img-0", 5, 5, 5, 9, "stamp", ("red",)), *_answer(["img-1"])], _seconds(["img-0", "img-1"]), "has no area"),
    ([Box("img-0", float("nan"), 5, 9, 9, "stamp", ("red",)), *_answer(["img-1"])], _seconds(["img-0", "img-1"]), "box coordinate must be a number"),
    ([Box("img-0", 1, 2, 3, 4, "stamp", "red"), *_answer(["img-1"])], _seconds(["img-0", "img-1"]), "must be a list"),
    ([{"image_id": "img-0"}], _seconds(["img-0", "img-1"]), "must be a Box, not dict"),
    (_answer(["img-0", "img-1"]), _seconds(["img-0"]), "no time was recorded for image 'img-1'"),
    (_answer(["img-0", "img-1"]), {"img-0": 1, "img-1": -4}, "seconds on image 'img-1' must be a number"),
])
def test_incomplete_answers_are_refused(store, url, submitted, seconds, message):
    token = store.create_campaign(WS, "stamps", IMAGES, SETTINGS).tokens[0].token
    with pytest.raises(SliceScopeError, match=message) as error:
        store.submit(token, submitted, seconds)
    assert "\n" not in str(error.value)
    assert (_count(url, answers), _count(url, boxes)) == (0, 0)
    assert store.open_task(token).image_ids == ("img-0", "img-1")  # still open for a corrected answer


HOSTILE = ["<script>alert(1)</script>", "'; DROP TABLE crowd_boxes; --", 'x") OR ("1"="1', "🐟 水 ünï ✓", "<img src=x onerror=alert(1)>"]


def test_hostile_terms_are_stored_verbatim_bounded_or_refused(store, url):
    campaign = store.create_campaign(WS, "<b>camp'; --", ["img'; --", "<i>"], CampaignSettings(images_per_task=2, workers_per_task=2))
    images = ["img'; --", "<i>"]
    first, second = (token.token for token in campaign.tokens)
    store.submit(first, [Box(images[0], 0, 0, 1, 1, term, (term, "", "  red\x00\n ")) for term in HOSTILE] + _answer(images[1:]),
                 _seconds(images), worker_id="<script>'; --", hit_id="")
    frame = store.annotations_frame(campaign.id)
    assert list(frame["entity_type"][:10:2]) == HOSTILE and list(frame["attribute"][:10]) == [item for term in HOSTILE for item in (term, "red")]
    assert set(frame["worker_id"]) == {"<script>'; --"} and frame["image_id"][0] == "img'; --"
    for term in ["x" * 10_000, "🐟" * 65]:
        with pytest.raises(SliceScopeError, match="more than the limit of 64"):
            store.submit(second, _answer(images, entity_type=term), _seconds(images))
        with pytest.raises(SliceScopeError, match="more than the limit of 64"):
            store.submit(second, _answer(images, attributes=("red", term)), _seconds(images))
    with pytest.raises(SliceScopeError, match="worker id has 10000 characters"):
        store.submit(second, _answer(images), _seconds(images), worker_id="w" * 10_000)
    engine = _engine(url)
    assert {"crowd_boxes", "crowd_answers", "crowd_assignments"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert (_count(url, answers), _count(url, boxes)) == (1, 6)
    assert store.campaigns(WS)[0].name == "<b>camp'; --"


def test_bad_campaigns_are_refused(store, url):
    for arguments, message in [
        ((WS, "c", []), "needs a list of 1 to 10000 image ids"),
        ((WS, "c", "img-0"), "needs a list"),
        ((WS, "c", ["a", "b", "a"]), "image 'a' is listed more than once"),
        ((WS, "c", ["a", ""]), "image id is empty"),
        ((WS, "", ["a"]), "campaign name is empty"),
        ((WS, "c", ["a"], CampaignSettings(images_per_task=0)), "images_per_task must be a whole number from 1 to 50"),
        ((WS, "c", ["a"], CampaignSettings(workers_per_task=2.5)), "workers_per_task must be a whole number"),
        ((WS, "c", ["a"], CampaignSettings(min_seconds_per_image=float("inf"))), "min_seconds_per_image must be a number"),
        ((WS, "c", ["a"], CampaignSettings(saliency_params={"f": object()})), "saliency parameters are not plain"),
        ((WS, "c", ["a"], CampaignSettings(instructions="x" * 6000)), "limit of 5000"),
    ]:
        with pytest.raises(SliceScopeError, match=message):
            store.create_campaign(*arguments)
    assert store.campaigns(WS) == []


@pytest.mark.parametrize("box, canvas, image, expected", [
    ((10, 20, 110, 70), (400, 300), (800, 600), (20.0, 40.0, 220.0, 140.0)),
    ((110, 70, 10, 20), (400, 300), (800, 600), (20.0, 40.0, 220.0, 140.0)),  # dragged up and left
    ((-50, -10, 500, 280), (400, 300), (200, 150), (0.0, 0.0, 200.0, 140.0)),  # clamped to the image
    ((0, 0, 224, 224), (224, 224), (32, 32), (0.0, 0.0, 32.0, 32.0)),
])
def test_canvas_boxes_become_image_pixels(box, canvas, image, expected):
    assert canvas_to_image_box(box, canvas, image) == expected


@pytest.mark.parametrize("box, canvas, message", [
    ((500, 10, 600, 20), (400, 300), "no area inside the image"),
    ((10, 10, 10, 20), (400, 300), "no area"),
    ((1, 2, 3), (400, 300), "4 coordinates"),
    ("1234", (400, 300), "4 coordinates"),
    ((1, 2, "3", 4), (400, 300), "box coordinate must be a number"),
    ((1, 2, 3, 4), (0, 300), "canvas width must be a number"),
])
def test_bad_canvas_boxes_are_refused(box, canvas, message):
    with pytest.raises(SliceScopeError, match=message):
        canvas_to_image_box(box, canvas, (800, 600))


def test_thirty_concurrent_workers_lose_and_duplicate_nothing(store, url):
    # 10 tasks × 3 workers; every third worker double-submits from two threads at once.
    images = [f"img-{number}" for number in range(20)]
    campaign = store.create_campaign(WS, "load", images, CampaignSettings(images_per_task=2, workers_per_task=3, min_seconds_per_image=0))
    submissions = [(number, token.token) for number, token in enumerate(campaign.tokens)]
    submissions += [(number, token.token) for number, token in enumerate(campaign.tokens) if number % 3 == 0]
    barrier, codes, errors = threading.Barrier(len(submissions)), {}, []
    lock = threading.Lock()

    def work(number: int, token: str) -> None:
        worker_store = CampaignStore(url)
        try:
            image_ids = worker_store.open_task(token).image_ids
            barrier.wait(timeout=60)
            code = worker_store.submit(token, _answer(image_ids, f"entity {number}"), _seconds(image_ids), worker_id=f"W{number}")
            with lock:
                codes.setdefault(token, set()).add(code)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below, with the thread's error
            errors.append(repr(error))
            barrier.abort()
        finally:
            worker_store.close()

    threads = [threading.Thread(target=work, args=submission) for submission in submissions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(submissions) == 40
    # Each token got one code, however many times it was submitted.
    assert len(codes) == 30 and all(len(token_codes) == 1 for token_codes in codes.values())
    assert (_count(url, answers), _count(url, boxes)) == (30, 60)
    frame = store.annotations_frame(campaign.id)
    assert frame.groupby("worker_id").size().to_dict() == {f"W{number}": 2 for number in range(30)}
    # Each worker's boxes carry its own entity type: no answer was written under another's assignment.
    assert all(frame["entity_type"] == "entity " + frame["worker_id"].str[1:])
    progress = store.progress(campaign.id)
    assert set(progress["status"]) == {"submitted"} and set(progress["task_status"]) == {"done"} and progress["worker_id"].is_unique


def test_for_workspace_shares_the_annotation_database(tmp_path, monkeypatch):
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    store = CampaignStore.for_workspace(tmp_path)
    store.create_campaign(WS, "c", ["a"])
    store.close()
    assert store.url == f"sqlite:///{tmp_path.resolve() / 'annotations.sqlite'}"
    with pytest.raises(SliceScopeError, match="SQLite or PostgreSQL, not mysql"):
        CampaignStore("mysql://127.0.0.1/annotations")


def _png(size: int = 8, value: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pictures_reach_only_their_task(store, url):
    pictures = {image_id: CampaignImage(64, 48, _png(value=number), _png(value=200 + number)) for number, image_id in enumerate(IMAGES)}
    settings = CampaignSettings(images_per_task=2, workers_per_task=1, instructions="Box it.\n\n- good: **stamp**\r\n- bad:\x00 thing")
    campaign = store.create_campaign(WS, "pictures", IMAGES, settings, pictures=pictures)
    first, second = campaign.tokens[0].token, campaign.tokens[1].token
    # Line breaks survive for the instructions' Markdown; control characters do not.
    assert store.preview(first) == "Box it.\n\n- good: **stamp**\n- bad: thing"
    assert store.progress(campaign.id)["status"].iloc[0] == "open"  # a preview does not start the task
    assert store.task_picture(first, "img-1") == pictures["img-1"]
    with pytest.raises(SliceScopeError, match="^this image is not part of your task"):
        store.task_picture(first, "img-2")  # img-2 is in the second task
    assert store.task_picture(second, "img-2") == pictures["img-2"]
    with pytest.raises(SliceScopeError, match="this task link is not valid"):
        store.task_picture("forged", "img-0")
    store.submit(first, _answer(["img-0", "img-1"]), _seconds(["img-0", "img-1"]))
    with pytest.raises(SliceScopeError, match="already submitted"):
        store.task_picture(first, "img-0")
    assert store.picture_sizes(campaign.id) == {image_id: (64, 48) for image_id in IMAGES}
    coco = store.export_coco(campaign.id)  # sizes come from the stored pictures
    assert {(image["width"], image["height"]) for image in coco["images"]} == {(64, 48)}

    for bad, message in [({"img-0": pictures["img-0"]}, "no picture was given for image 'img-1'"),
                         ({**pictures, "img-0": CampaignImage(64, 48, b"GIF89a", _png())}, "picture of image 'img-0' is not a PNG"),
                         ({**pictures, "img-0": CampaignImage(0, 48, _png(), _png())}, "image width must be a whole number")]:
        with pytest.raises(SliceScopeError, match=message):
            store.create_campaign(WS, "bad", IMAGES, settings, pictures=bad)
    assert len(store.campaigns(WS)) == 1


def test_drafts_keep_an_answer_in_progress_until_it_is_submitted(store, url):
    campaign = store.create_campaign(WS, "drafts", IMAGES, SETTINGS)
    token = campaign.tokens[0].token
    assert store.load_draft(token) is None
    store.save_draft(token, {"position": 1, "boxes": {"img-0": [{"number": 1, "entity_type": "<script>"}]}})
    store.save_draft(token, {"position": 0, "boxes": {}})  # replaced, not appended
    assert store.load_draft(token) == {"position": 0, "boxes": {}}
    with pytest.raises(SliceScopeError, match="more than 200,000"):
        store.save_draft(token, {"boxes": "x" * 300_000})
    with pytest.raises(SliceScopeError, match="not plain data"):
        store.save_draft(token, {"box": object()})
    with pytest.raises(SliceScopeError, match="this task link is not valid"):
        store.save_draft("forged", {})
    assert store.load_draft(campaign.tokens[1].token) is None  # another worker's draft is theirs alone
    store.submit(token, _answer(["img-0", "img-1"]), _seconds(["img-0", "img-1"]))
    store.save_draft(token, {"position": 1})  # a late save from another tab changes nothing
    assert store.load_draft(token) == {"position": 0, "boxes": {}}
    assert _count(url, answers) == 1
