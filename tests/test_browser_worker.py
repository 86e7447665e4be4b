"""The crowd worker app in a real browser: ``streamlit run annotate/main.py`` driven by Playwright and Debian's Chromium.

A worker opens a task link, draws boxes by dragging the mouse on the saliency overlay, types terms and submits;
the boxes must arrive in the store in image pixels. Forged links, previews and hostile text are driven the same way.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from core.crowd import CampaignImage, CampaignSettings, CampaignStore
from tests.helpers import browser_page, running_app
from tests.test_browser import TIMEOUT_MS, expect, wait_until_idle

IMAGE_SIZE = 64  # pictures are 64 px, shown on a 320-px canvas: 5 canvas pixels per image pixel
CANVAS_PER_IMAGE_PIXEL = 320 / IMAGE_SIZE
HOSTILE = "<img src=x onerror=alert(1)>"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((320, 320), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A two-image task for four workers, with pictures, in its own SQLite database."""
    folder = tmp_path_factory.mktemp("worker-campaign")
    url = f"sqlite:///{folder / 'campaign.sqlite'}"
    rng = np.random.default_rng(0)
    pictures = {}
    for image_id in ("img-a", "img-b"):
        pixels = (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8)
        pictures[image_id] = CampaignImage(IMAGE_SIZE, IMAGE_SIZE, _png(pixels), _png(255 - pixels))
    store = CampaignStore(url)
    created = store.create_campaign("ws", "browser", list(pictures), CampaignSettings(
        images_per_task=2, workers_per_task=4, min_seconds_per_image=0, instructions="Box **each** highlighted area."), pictures=pictures)
    yield store, created, url, folder
    store.close()


@pytest.fixture(scope="module")
def worker_server(campaign):
    _, _, url, folder = campaign
    with running_app(folder, folder, script="annotate/main.py", database_url=url) as base_url:
        yield base_url


@pytest.fixture
def page(chromium_executable, chromium_browser, worker_server):
    with browser_page(chromium_browser, worker_server, TIMEOUT_MS) as fresh:
        fresh.dialogs = []
        fresh.on("dialog", lambda dialog: (fresh.dialogs.append(dialog.message), dialog.dismiss()))
        yield fresh


def mouse_drag(page, path: list[tuple[float, float]]) -> None:
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def finger_drag(page, path: list[tuple[float, float]]) -> None:
    """One finger along ``path`` (page pixels), as Chromium's touch screen reports it (DevTools protocol touch events)."""
    session = page.context.new_cdp_session(page)
    try:
        for kind, (x, y) in [("touchStart", path[0]), *(("touchMove", point) for point in path[1:])]:
            session.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y, "id": 1}]})
            page.wait_for_timeout(20)
        session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        session.detach()


def drag_box(page, corners: tuple[float, float, float, float], label: str, drag=mouse_drag) -> None:
    """Drag (``mouse_drag`` or ``finger_drag``) from one corner to the other on the canvas (canvas pixels) until the
    box's fields appear.

    A canvas just mounted ignores the mouse until its drawing tool is set up (it draws nothing then, so a worker
    simply drags again); the test does what the worker does, a bounded number of times. While the page reruns, the
    last image's canvas can still be shown beside the new one: the drag waits for a single canvas.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    field = page.get_by_label(f"Box {label}: what is it? (one noun)")
    for _ in range(5):
        wait_until_idle(page)
        canvas = page.locator("canvas.upper-canvas")
        expect(canvas).to_have_count(1)
        try:
            origin = canvas.bounding_box()
        except PlaywrightError:  # a second canvas came in between
            continue
        x0, y0, x1, y1 = corners
        drag(page, [(origin["x"] + x0 + (x1 - x0) * step / 8, origin["y"] + y0 + (y1 - y0) * step / 8) for step in range(9)])
        try:
            field.wait_for(timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    expect(field).to_be_visible()


def wait_for_field(page, label: str, value: str) -> None:
    """Wait until exactly one field has ``label`` and it holds ``value``: while the page reruns, the previous image's
    field is still shown (faded) beside the new one, so neither a count nor a value alone says the page is there."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """([label, value]) => {
                const fields = [...document.querySelectorAll("input")].filter((field) => field.getAttribute("aria-label") === label);
                return fields.length === 1 && fields[0].value === value;
            }""",
            arg=[label, value], timeout=TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        shown = page.evaluate("() => [...document.querySelectorAll('input')].map((field) => [field.getAttribute('aria-label'), field.value])")
        raise AssertionError(f"no single field {label!r} holding {value!r}; the page's fields: {shown}") from None


def name_box(page, label: str, entity_type: str, attributes: str) -> None:
    for field, text in ((f"Box {label}: what is it? (one noun)", entity_type),
                        (f"Box {label}: what is it like? (adjectives, comma-separated)", attributes)):
        box = page.get_by_label(field)
        box.fill(text)
        box.press("Enter")
        wait_until_idle(page)


def test_worker_draws_names_and_submits_boxes_stored_in_image_pixels(page, campaign):
    store, created, _, _ = campaign
    token = created.tokens[0]
    page.goto(f"{page.app_url}?token={token.token}&workerId=W-17&assignmentId=A-1&hitId=H-9"
              "&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com")
    expect(page.get_by_text("highlighted area")).to_be_visible()  # the instructions come first
    page.get_by_role("button", name="Start the task").click()
    expect(page.get_by_text("Image 1 of 2")).to_be_visible()
    expect(page.get_by_text("0 of 2 images have boxes")).to_be_visible()
    submit = page.get_by_role("button", name="Submit my answer")
    expect(submit).to_be_disabled()

    drag_box(page, (50, 60, 150, 160), "1")
    name_box(page, "1", HOSTILE, "white, square")
    page.get_by_role("button", name="Next image →").click()
    expect(page.get_by_text("Image 2 of 2")).to_be_visible()
    expect(page.get_by_text("1 of 2 images have boxes")).to_be_visible()
    expect(page.get_by_text("Image 2 has no box yet.")).to_be_visible()
    drag_box(page, (300, 20, 200, 100), "1")  # dragged up and left
    name_box(page, "1", "stamp", "grey")
    # Back and forth keeps the first image's box and its terms.
    for button, shown, entity_type in (("← Previous image", "Image 1 of 2", HOSTILE), ("Next image →", "Image 2 of 2", "stamp")):
        page.get_by_role("button", name=button).click()
        expect(page.get_by_text(shown)).to_be_visible()
        wait_for_field(page, "Box 1: what is it? (one noun)", entity_type)

    expect(submit).to_be_enabled()
    submit.click()
    expect(page.get_by_text("Thank you: your answer is saved.")).to_be_visible()
    code = page.locator('[data-testid="stCode"]').inner_text().strip()
    form = page.locator("form#mturk_form")
    expect(form).to_have_attribute("method", "post")
    expect(form).to_have_attribute("action", "https://workersandbox.mturk.com/mturk/externalSubmit")
    fields = {field.get_attribute("name"): field.get_attribute("value") for field in form.locator("input[type=hidden]").all()}
    assert fields == {"assignmentId": "A-1", "completion_code": code}
    expect(form.get_by_role("button", name="Send your answer to Mechanical Turk")).to_be_visible()
    assert not page.dialogs and not page.js_errors  # the hostile term was never run as HTML

    frame = store.annotations_frame(created.id)
    progress = store.progress(created.id).set_index("assignment_id").loc[token.assignment_id]
    assert (progress["status"], progress["worker_id"], progress["boxes"]) == ("submitted", "W-17", 2)
    assert progress["seconds"] > 1  # the time on each image was counted, over several page runs
    coco = store.export_coco(created.id)
    by_image = {image["id"]: image["file_name"] for image in coco["images"]}
    boxes = {by_image[annotation["image_id"]]: annotation for annotation in coco["annotations"]}
    # Canvas (50, 60)-(150, 160) on a 320-px canvas of a 64-px image → image pixels (10, 12)-(30, 32).
    expected = {"img-a": (50, 60, 150, 160), "img-b": (200, 20, 300, 100)}
    for image_id, (x0, y0, x1, y1) in expected.items():
        x, y, width, height = boxes[image_id]["bbox"]
        assert np.allclose((x, y, x + width, y + height), np.divide((x0, y0, x1, y1), CANVAS_PER_IMAGE_PIXEL), atol=0.75), boxes[image_id]
    assert boxes["img-a"]["entity_type"] == HOSTILE and boxes["img-a"]["attributes"] == ["white", "square"]
    assert set(frame["attribute"]) == {"white", "square", "grey"}

    # The same link again: the answer stands, the task is not shown again, and the worker gets the code again
    # (as a thank-you, not an error), with the form that sends it back to MTurk.
    page.goto(f"{page.app_url}?token={token.token}&workerId=W-17&assignmentId=A-1&hitId=H-9"
              "&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com")
    expect(page.get_by_text("You have already submitted this task: your answer is saved.")).to_be_visible()
    expect(page.locator('[data-testid="stCode"]')).to_have_text(code)
    expect(page.locator('[data-testid="stAlertContentError"]')).to_have_count(0)
    expect(page.locator("form#mturk_form")).to_have_attribute("action", "https://workersandbox.mturk.com/mturk/externalSubmit")
    expect(page.locator("canvas")).to_have_count(0)


def test_a_reload_restores_the_answer_in_progress(page, campaign):
    store, created, _, _ = campaign
    link = f"{page.app_url}?token={created.tokens[2].token}"
    page.goto(link)
    page.get_by_role("button", name="Start the task").click()
    drag_box(page, (40, 40, 200, 120), "1")
    name_box(page, "1", "water", "blue, wavy")
    page.get_by_role("button", name="Next image →").click()
    expect(page.get_by_text("Image 2 of 2")).to_be_visible()
    token = created.tokens[2].token
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while (store.load_draft(token) or {}).get("position") != 1:  # the run that shows image 2 saves the move
        assert time.monotonic() < deadline, store.load_draft(token)
        time.sleep(0.2)

    page.reload()  # a new session: only the saved draft knows the answer
    expect(page.get_by_text("Image 2 of 2")).to_be_visible()  # straight back to where the worker was
    page.get_by_role("button", name="← Previous image").click()
    wait_for_field(page, "Box 1: what is it? (one noun)", "water")
    expect(page.get_by_label("Box 1: what is it like? (adjectives, comma-separated)")).to_have_value("blue, wavy")
    expect(page.get_by_text("1 of 2 images have boxes")).to_be_visible()
    assert store.progress(created.id).set_index("assignment_id").loc[created.tokens[2].assignment_id, "status"] == "started"


def test_a_worker_on_a_phone_draws_a_box_and_nothing_overflows_the_screen(chromium_browser, worker_server, campaign):
    """Hosted, the worker app is opened on phones: at 390×844 (a touch screen) the page fits the width, the canvas
    included, and a box a finger draws on it is counted (the canvas's box tool ignores touches: annotate.touch
    hands them to it as the mouse)."""
    _, created, _, _ = campaign
    context = chromium_browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=3)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(f"{worker_server}?token={created.tokens[3].token}")
        page.get_by_role("button", name="Start the task").click()
        expect(page.get_by_text("0 of 2 images have boxes")).to_be_visible()
        page.locator("canvas.upper-canvas").scroll_into_view_if_needed()
        drag_box(page, (40, 40, 200, 160), "1", drag=finger_drag)
        expect(page.get_by_text("1 of 2 images have boxes")).to_be_visible()
        # Streamlit's main block clips or scrolls what is too wide instead of widening the page, so the page's width
        # alone proves little: every element is scrolled back to its left edge, and then nothing may reach past 390 px
        # (the canvas lives in a shadow root, which Playwright's locator reaches and querySelectorAll does not).
        widths = page.evaluate("""() => {
            const elements = [...document.querySelectorAll("*")];
            elements.forEach((element) => { element.scrollLeft = 0; });
            const shown = elements.filter((element) => element.matches("img, input, button, p"));
            return {body: document.body.scrollWidth, page: document.documentElement.scrollWidth,
                    right: Math.max(...shown.map((element) => element.getBoundingClientRect().right))};
        }""")
        canvas = page.locator("canvas.upper-canvas").bounding_box()
        widths["canvas"] = canvas["x"] + canvas["width"]
        assert max(widths.values()) <= 390, widths
        assert page.get_by_test_id("stSidebarNav").count() == 0  # one page: no analyst page is listed
    finally:
        context.close()


@pytest.mark.parametrize("query, message", [
    ("?token=forged-token-that-is-not-ours", "this task link is not valid"),
    ("?token=%27%20OR%201%3D1%20--", "this task link is not valid"),
    ("", "Open this page with the task link you were given"),
])
def test_forged_or_missing_links_see_no_task(page, query, message):
    page.goto(page.app_url + query)
    expect(page.get_by_text(message)).to_be_visible()
    wait_until_idle(page)
    assert page.locator("canvas").count() == 0 and page.locator("img").count() == 0


def test_platform_preview_shows_instructions_not_the_task(page, campaign):
    store, created, _, _ = campaign
    token = created.tokens[1]
    page.goto(f"{page.app_url}?token={token.token}&assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H-9")
    expect(page.get_by_text("This is a preview: accept the task to start annotating.")).to_be_visible()
    expect(page.get_by_text("highlighted area")).to_be_visible()
    wait_until_idle(page)
    assert page.locator("canvas").count() == 0
    assert store.progress(created.id).set_index("assignment_id").loc[token.assignment_id, "status"] == "open"
