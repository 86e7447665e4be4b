"""The analyst app in a real browser: Playwright driving Debian's Chromium against ``streamlit run app/main.py``.

The server runs on the tiny demo (``streamlit_server`` in conftest); each test opens its own fresh page.
Skipped where /usr/bin/chromium is missing, unless ``SLICESCOPE_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from core.demo import workspace_dir
from core.workspace import Workspace
from tests.helpers import browser_page

TIMEOUT_MS = 60_000  # per wait: generous for a slow CI machine, but bounded
MOSAIC_BUILD_TIMEOUT_MS = 300_000  # a mosaic's first request runs 256 inversion steps; minutes on a busy 2-core machine
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
TABLE = '[data-testid="stDataFrame"]'
HEADER_HEIGHT = ROW_HEIGHT = 35  # glide-data-grid, as st.dataframe draws it
CELL_TITLE = re.compile(r"^label: (\S+) · prediction: (\S+)$")


@pytest.fixture
def page(chromium_executable, chromium_browser, streamlit_server):
    """A fresh browser context and page; uncaught JavaScript errors are collected in ``page.js_errors``."""
    with browser_page(chromium_browser, streamlit_server, TIMEOUT_MS) as fresh:
        yield fresh


def expect(*args, **kwargs):
    """Playwright's ``expect``, imported late so that this module loads (and skips) without Playwright."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(*args, **kwargs)


def wait_until_idle(page) -> None:
    """Streamlit has finished the script run: its "Running…" status widget is gone and no element of the previous run
    is left. Until a run ends, an element it has not yet re-sent stays on the page marked stale, beside its new copy
    when the copy moved (two "Images per model" inputs once failed a CI run), so both are waited for."""
    expect(page.get_by_test_id("stStatusWidget")).to_be_hidden(timeout=TIMEOUT_MS)
    expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=TIMEOUT_MS)


def open_slices_page(page, query: str = "") -> None:
    """Open the app and wait until the Slice Table and the scatter are drawn and the run is over."""
    page.goto(page.app_url + query)
    expect(page.locator(TABLE)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)


def open_dropdown(page, label: str):
    """Open the selectbox or multiselect ``label`` and return its options. A rerun (a fragment's timer, a busy
    machine) can close or re-render the list right after the click, so the click is tried again."""
    for _ in range(3):
        page.get_by_role("combobox", name=label, exact=True).click()
        try:
            page.get_by_role("option").first.wait_for(timeout=15_000)
            return page.get_by_role("option")
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError(f"the {label!r} list never opened")


def choose_option(page, label: str, option) -> None:
    """Pick ``option`` (a name or pattern) in the selectbox ``label``, trying again if a rerun detaches the list mid-click."""
    for _ in range(3):
        open_dropdown(page, label)
        try:
            page.get_by_role("option", name=option, exact=isinstance(option, str)).click(timeout=15_000)
            return
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not pick {option!r} in the {label!r} selectbox")


def assert_no_errors(page) -> None:
    errors = page.locator(ERRORS)
    assert errors.count() == 0, errors.all_inner_texts()
    assert not page.js_errors, f"uncaught JavaScript errors: {page.js_errors}"


def detail_heading(page):
    return page.get_by_role("heading", name="Slice Detail View")


def test_main_page_renders_without_errors(page):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    open_slices_page(page)
    expect(page.locator("h1")).to_have_text(re.compile(r"^Slices · demo · biased model"))
    assert_no_errors(page)
    # Everything, the tab's icon included, comes from the app itself: the page works offline.
    outside = [url for url in requested if not url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:"))]
    assert outside == []


def test_clicking_a_table_row_fills_the_detail_view(page):
    open_slices_page(page)
    # Nothing picked yet: a hint instead of the detail view.
    expect(page.get_by_text("Pick a slice in the Slice Table")).to_be_visible()
    expect(detail_heading(page)).to_have_count(0)
    expect(page.get_by_test_id("stImage")).to_have_count(0)

    table = page.locator(TABLE)
    # The grid is a canvas; glide-data-grid mirrors it in an accessibility table, which names the first row's slice.
    first_slice = table.get_by_test_id("glide-cell-1-0").text_content().strip()
    assert first_slice.isdigit(), first_slice
    # Click the row-selection checkbox of the first data row, inside the canvas.
    table.click(position={"x": 15, "y": HEADER_HEIGHT + ROW_HEIGHT // 2})

    expect(detail_heading(page)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("stImage").locator("img").first).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)

    summary = page.get_by_text(re.compile(rf"^slice {first_slice} · \d+ images$"))
    expect(summary).to_be_visible()
    n_members = int(re.search(r"· (\d+) images", summary.inner_text()).group(1))
    captions = page.get_by_test_id("stImageCaption").all_inner_texts()
    assert 0 < len(captions) == min(n_members, 24) == page.get_by_test_id("stImage").locator("img").count()
    assert all("label: " in text and " · prediction: " in text for text in captions), captions
    expect(page.get_by_text("Pick a slice in the Slice Table")).to_have_count(0)
    assert re.search(rf"[?&]slices={first_slice}(&|$)", page.url), page.url

    # The CSV is written when the button is clicked (not on every rerun) and holds the slice's images.
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.get_by_role("button", name="Export CSV").click()
    exported = pd.read_csv(download.value.path())
    assert download.value.suggested_filename == "slicescope-selection.csv"
    assert len(exported) == n_members and set(exported["slice"]) == {int(first_slice)}
    assert_no_errors(page)


def test_changing_the_detail_view_s_order_goes_back_to_its_first_page(page):
    open_slices_page(page, "?slices=0,1,2")
    pages = page.get_by_test_id("stPagination")
    expect(pages).to_be_visible()
    pages.get_by_role("button", name="Page 2").click()
    expect(pages.get_by_role("button", name="Page 2")).to_have_attribute("aria-current", "page")
    wait_until_idle(page)
    page.get_by_role("combobox", name="Sort", exact=True).click()
    page.get_by_role("option").nth(1).click()
    wait_until_idle(page)
    expect(pages.get_by_role("button", name="Page 1")).to_have_attribute("aria-current", "page")
    assert_no_errors(page)


def test_confusion_layout_titles_cells_in_words(page, tiny_demo):
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    classes = set(workspace.classes)
    present = {f"label: {label} · prediction: {prediction}" for label, prediction in zip(workspace.images["label"], workspace.images["prediction"])}

    open_slices_page(page, "?layout=confusion&slices=0")
    expect(page.get_by_text("UMAP layout · split by confusion-matrix cell")).to_be_visible()

    # The scatter's subplot titles (SVG text) name every confusion cell in words.
    titles_locator = page.locator(".js-plotly-plot text.annotation-text")
    expect(titles_locator.first).to_be_attached(timeout=TIMEOUT_MS)
    titles = [text.strip() for text in titles_locator.all_text_contents()]
    assert all(CELL_TITLE.match(title) for title in titles), titles
    assert {name for title in titles for name in CELL_TITLE.match(title).groups()} <= classes, titles
    assert present <= set(titles), sorted(present - set(titles))

    # The detail view of the preselected slice offers its cells as pills, in the same words.
    expect(detail_heading(page)).to_be_visible(timeout=TIMEOUT_MS)
    pills = page.get_by_test_id("stButtonGroup").filter(has_text="Confusion-matrix cell").locator("button")
    expect(pills.first).to_be_visible(timeout=TIMEOUT_MS)
    pill_texts = [text.strip() for text in pills.all_inner_texts()]
    parsed = [re.match(r"^(label: \S+ · prediction: \S+) \((\d+)\)$", text) for text in pill_texts]
    assert all(parsed), pill_texts
    assert {match.group(1) for match in parsed} <= present, pill_texts

    # The first cell is picked by default: every image shown belongs to it.
    expect(page.get_by_test_id("stImage").locator("img").first).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    label, prediction = CELL_TITLE.match(parsed[0].group(1)).groups()
    captions = page.get_by_test_id("stImageCaption").all_inner_texts()
    assert len(captions) == min(int(parsed[0].group(2)), 24), (captions, pill_texts)
    assert all(f"label: {label} · prediction: {prediction} · " in text for text in captions), captions
    assert_no_errors(page)


def test_clicking_a_mosaic_tile_shows_the_slice_with_its_typical_images(page):
    open_slices_page(page, "?layout=confusion")
    page.get_by_role("radiogroup", name="View").get_by_role("radio", name="Data Slice Mosaic").click()

    # The per-cell mosaic replaces the scatter once its first build is over: subplots titled in words,
    # each tile's inversion drawn as an SVG <image>.
    plot = page.locator(".js-plotly-plot").filter(has=page.locator("text.gtitle", has_text="Data Slice Mosaic per confusion-matrix cell"))
    expect(plot).to_be_visible(timeout=MOSAIC_BUILD_TIMEOUT_MS)
    wait_until_idle(page)
    assert all(CELL_TITLE.match(title.strip()) for title in plot.locator("text.annotation-text").all_text_contents())
    pictures = plot.locator("image")
    assert pictures.count() > 1
    assert all(source.startswith("data:image/png;base64,") for source in (pictures.nth(i).get_attribute("href") for i in range(pictures.count())))
    expect(page.get_by_text("Click a tile's number to see its slice")).to_be_visible()
    # Every tile's number can be read: drawn inside the plot, and no two overlapping.
    numbers = [box for box in (text.bounding_box() for text in plot.locator(".scatterlayer .trace text").all()) if box]
    frame = plot.bounding_box()
    assert len(numbers) >= pictures.count()
    assert all(frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"] for box in numbers)
    overlapping = [(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1:]
                   if a["x"] + 1 < b["x"] + b["width"] and b["x"] + 1 < a["x"] + a["width"] and a["y"] + 1 < b["y"] + b["height"] and b["y"] + 1 < a["y"] + a["height"]]
    assert not overlapping, overlapping

    # Click the first tile's numbered marker; the drag layer above it receives the click, as it does for a user.
    marker = plot.locator(".scatterlayer .trace path.point").first
    marker.scroll_into_view_if_needed()
    number = marker.locator("xpath=../..").locator("text").first.text_content().strip()
    marker.click(force=True)

    panel = page.locator(f".st-key-tile-panel-{number}")
    expect(panel.get_by_role("heading", name=f"Slice {number}")).to_be_visible(timeout=TIMEOUT_MS)
    expect(panel.get_by_test_id("stImage").locator("img").first).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    captions = panel.get_by_test_id("stImageCaption").all_inner_texts()
    assert 0 < len(captions) <= 6 and all(" · prediction: " in text for text in captions), captions
    expect(panel.get_by_text(re.compile(r"^\d+ images · accuracy \d+% · mostly \S+ → \S+"))).to_be_visible()
    expect(panel.get_by_role("button", name=f"Annotate slice {number}")).to_be_visible()
    assert re.search(rf"[?&]slices={number}(&|$)", page.url), page.url
    assert_no_errors(page)


def test_versions_page_lists_the_model_versions(page):
    page.goto(page.app_url + "versions")
    expect(page.locator("h1")).to_have_text(re.compile(r"^Versions · demo · biased model"))
    table = page.locator(TABLE).first
    expect(table).to_be_visible()
    wait_until_idle(page)
    expect(page.get_by_role("button", name=re.compile(r"^Evaluate \d+ version"))).to_be_visible()
    assert_no_errors(page)


def rest_on_a_point(page, chart, hover_label, columns: int = 30, rows: int = 20) -> None:
    """Sweep the pointer over ``chart``, row by row, until ``hover_label`` appears: the pointer then rests on a point."""
    box = chart.bounding_box()
    for step in range(columns * rows):
        page.mouse.move(box["x"] + 30 + (step % columns) * (box["width"] - 60) / columns,
                        box["y"] + 60 + (step // columns) * (box["height"] - 120) / rows)
        if hover_label.count():
            return


def test_hovering_a_point_shows_its_thumbnail(page):
    open_slices_page(page)
    page.get_by_role("radiogroup", name="View").get_by_role("radio", name="Thumbnails on hover").click()
    chart = page.get_by_test_id("stVegaLiteChart")
    expect(chart).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    tooltip = page.locator("#vg-tooltip-element.visible")
    rest_on_a_point(page, chart, tooltip)
    expect(tooltip.locator("img")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    expect(tooltip).to_contain_text(re.compile(r"label: \S+ · prediction: \S+"))
    page.mouse.down()  # a click on the point selects it, as in the Plotly scatter
    page.mouse.up()
    expect(page.get_by_text(re.compile(r"^1 point selected in the scatter"))).to_be_visible(timeout=TIMEOUT_MS)
    assert_no_errors(page)


def test_clicking_a_point_in_the_scatter_selects_it(page):
    open_slices_page(page)
    chart = page.locator(".js-plotly-plot").first
    hover = page.locator(".hoverlayer .hovertext")
    rest_on_a_point(page, chart, hover)
    expect(hover.first).to_contain_text("confidence")
    page.mouse.down()
    page.mouse.up()
    expect(page.get_by_text(re.compile(r"^1 point selected in the scatter"))).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"^Filtered to the 1 slice of the 1 point selected"))).to_be_visible()
    assert_no_errors(page)


def test_marking_mislabelled_images_offers_no_select_all_and_refuses_their_own_label(page):
    open_slices_page(page, "?slices=0")
    expect(detail_heading(page)).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_test_id("stExpander").filter(has_text="Mark mislabelled images").locator("summary").first.click()
    wait_until_idle(page)
    options = open_dropdown(page, "Images on this page")
    texts = options.all_inner_texts()
    assert texts and not any("select all" in text.lower() for text in texts), texts  # one click never marks a whole page
    own_label = re.search(r"label: (\w+)", texts[0]).group(1)
    options.first.click()
    page.keyboard.press("Escape")
    wait_until_idle(page)
    choose_option(page, "They should be labelled", own_label)
    wait_until_idle(page)
    page.get_by_role("button", name="Mark as mislabelled").click()
    wait_until_idle(page)
    # Marking an image with the label it already has is refused in one line that says what to do; nothing is marked.
    expect(page.get_by_text(re.compile(rf"already labelled {own_label}.*pick the label the images should have"))).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"→ should be "))).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)  # the refusal is the page's only error, and no traceback
