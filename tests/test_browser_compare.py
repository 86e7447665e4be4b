"""The Compare page in a real browser: A/B choice → Mosaic View cell → Trace View dot → the IMACS clusters → a tile in its image.

Runs its own server on a private copy of the tiny demo, so the comparison's caches stay out of the other tests'
demo. Skipped where /usr/bin/chromium is missing, unless ``SLICESCOPE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import re
import shutil

import pytest

from core.compare import confusion_mosaic, version_outcomes
from core.demo import workspace_dir
from tests.helpers import browser_page, running_app
from tests.test_browser import TIMEOUT_MS, assert_no_errors, choose_option, expect, wait_until_idle

COMPARE_TIMEOUT_MS = 300_000  # the comparison itself: Shapley values, the third model's training and the clustering


@pytest.fixture(scope="module")
def compare_home(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("compare-home")
    shutil.copytree(demo_home / "demo", home / "demo")
    return home


@pytest.fixture(scope="module")
def compare_server(compare_home, tmp_path_factory):
    with running_app(compare_home, tmp_path_factory.mktemp("compare-streamlit")) as base_url:
        yield base_url


@pytest.fixture
def page(chromium_executable, chromium_browser, compare_server):
    with browser_page(chromium_browser, compare_server, TIMEOUT_MS) as fresh:
        yield fresh


def chart_titled(page, title: str):
    return page.locator(".js-plotly-plot").filter(has=page.locator("text.gtitle", has_text=title))


def click_point(chart, index: int = 0) -> None:
    """Click a marker of the chart's last scatter trace (the one carrying the selectable ids); the drag layer above it receives the click, as for a user."""
    marker = chart.locator(".scatterlayer .trace").last.locator("path.point").nth(index)
    marker.scroll_into_view_if_needed()
    marker.click(force=True)


def test_choose_versions_select_cells_and_trace_lines_compare_and_open_a_tile(page, compare_home):
    demo = compare_home / "demo"
    outcomes = version_outcomes([workspace_dir(demo, "biased"), workspace_dir(demo, "balanced")])
    cells = confusion_mosaic(outcomes)

    page.goto(page.app_url + "compare")
    expect(page.locator("h1")).to_have_text(re.compile(r"^Compare · demo · biased model"))
    wait_until_idle(page)
    # Version B defaults to the other scan of the same images; choosing it again keeps the page as it is.
    choose_option(page, "Version B", "demo · balanced model")
    wait_until_idle(page)
    expect(page.get_by_text(re.compile(rf"^{len(outcomes.images)} images · accuracy"))).to_be_visible()

    mosaic = chart_titled(page, "Mosaic View")
    expect(mosaic).to_be_visible()
    assert mosaic.locator(".barlayer .point path").count() == len(cells)  # one rectangle per non-empty cell
    click_point(mosaic, 0)
    first = cells.iloc[0]
    in_cell = int(((outcomes.images["label"] == first["label"]) & ((outcomes.predictions[:, 0] == first["prediction"])
                                                                  | (outcomes.predictions[:, 1] == first["prediction"]))).sum())
    expect(page.get_by_text(re.compile(rf"^{in_cell} images? selected · 1 mosaic cell$"))).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    expect(page.get_by_test_id("stImage").first).to_be_visible()

    # The Trace View now shows the cell's images only; a dot selects the images of its line.
    trace = chart_titled(page, "Trace View")
    expect(trace.locator("text.gtitle")).to_contain_text(f"Trace View · {in_cell} image")
    click_point(trace, 0)
    expect(page.get_by_text(re.compile(r"^\d+ images? selected · (correct|incorrect) under demo · biased model → (correct|incorrect) under"))
           ).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    assert_no_errors(page)
    page.get_by_role("button", name="Clear selection").click()
    expect(page.get_by_text("Click mosaic cells (shift-click for several)")).to_be_visible()
    wait_until_idle(page)  # after the new run's first element: the run has started, so the wait cannot pass before it

    # IMACS: a small comparison (the tiny demo has 64 images), started by the button under its time estimate.
    page.get_by_role("spinbutton", name="Images per model").fill("16")
    page.get_by_role("spinbutton", name="Images per model").press("Enter")
    wait_until_idle(page)
    page.get_by_role("spinbutton", name="Clusters (K)").fill("3")
    page.get_by_role("spinbutton", name="Clusters (K)").press("Enter")
    wait_until_idle(page)
    expect(page.get_by_text(re.compile(r"^About [\d,]+ s on this machine"))).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Compare", exact=True).click()
    tiles = chart_titled(page, "Concept Cluster")
    expect(tiles).to_be_visible(timeout=COMPARE_TIMEOUT_MS)
    wait_until_idle(page)
    expect(tiles.locator("image")).to_have_count(1)  # the tiles, drawn as one picture
    expect(chart_titled(page, "Cluster Histogram")).to_be_visible()
    expect(chart_titled(page, "Cluster Confusion Matrix")).to_be_visible()
    click_point(tiles, 0)
    expect(page.get_by_text(re.compile(r"^Segment \d+ in its image · model A's sample"))).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    assert_no_errors(page)
