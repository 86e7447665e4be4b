"""Creating a crowd campaign on the Concepts page, in a real browser: the new campaign is shown at once, with its links.

Runs its own server on a private copy of the tiny demo, so the campaign it creates stays out of the other tests'
demo. Skipped where /usr/bin/chromium is missing, unless ``SLICESCOPE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import re
import shutil

import pytest

from core.crowd import CampaignStore
from core.demo import workspace_dir
from core.workspace import Workspace
from tests.helpers import browser_page, running_app
from tests.test_browser import TIMEOUT_MS, assert_no_errors, choose_option, expect, wait_until_idle

CAMPAIGN_TIMEOUT_MS = 180_000  # sampling, GradCAM pictures and the store: seconds on the tiny demo, more on a busy machine


@pytest.fixture(scope="module")
def campaign_home(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("campaign-home")
    shutil.copytree(demo_home / "demo", home / "demo")
    return home


@pytest.fixture
def page(chromium_executable, chromium_browser, campaign_home, tmp_path_factory):
    with running_app(campaign_home, tmp_path_factory.mktemp("campaign-streamlit")) as base_url, \
            browser_page(chromium_browser, base_url, TIMEOUT_MS) as fresh:
        yield fresh


def test_a_created_campaign_is_picked_with_its_links_and_the_form_is_cleared(page, campaign_home):
    workspace = Workspace(workspace_dir(campaign_home / "demo", "biased"))
    store = CampaignStore.for_workspace(workspace.path)
    before = [campaign.id for campaign in store.campaigns(workspace.fingerprint)]
    page.goto(page.app_url + "concepts")
    expect(page.locator("h1")).to_have_text(re.compile(r"^Concepts · "))
    wait_until_idle(page)
    picker = page.get_by_role("combobox", name="Campaign", exact=True)
    expect(picker).to_be_visible()

    page.get_by_test_id("stExpander").filter(has_text="New campaign").locator("summary").first.click()
    images = page.get_by_role("spinbutton", name="Images to annotate")
    images.fill("4")
    choose_option(page, "Saliency", re.compile(r"^GradCAM"))
    name = page.get_by_role("textbox", name="Campaign name")
    name.fill("Boxes in the browser")
    page.get_by_role("button", name="Create campaign").click()

    new_id = max(before) + 1
    expect(page.get_by_text(f"Campaign #{new_id} “Boxes in the browser” is created: 4 images")).to_be_visible(timeout=CAMPAIGN_TIMEOUT_MS)
    wait_until_idle(page)
    # The picker follows the new campaign, so its one-time links are in view without a search.
    expect(page.get_by_role("combobox", name="Campaign", exact=True)).to_have_value(re.compile(rf"^#{new_id} · Boxes in the browser"))
    expect(page.get_by_role("button", name="Download the task links (CSV)")).to_be_visible()
    # The form starts afresh, so a second click cannot make a copy of the campaign by accident.
    expect(page.get_by_role("textbox", name="Campaign name")).to_have_value(re.compile(r"^Campaign on "))
    assert_no_errors(page)
    assert [campaign.id for campaign in store.campaigns(workspace.fingerprint)] == [*before, new_id]
