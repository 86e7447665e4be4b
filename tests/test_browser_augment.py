"""DASH's workflow in a real browser: Cluster View → pick a style → preview a batch → accept → retrain (1 epoch) → Versions.

Runs its own server on a private copy of the tiny demo, so the batch and the version it makes stay out of the other
tests' demo. Skipped where /usr/bin/chromium is missing, unless ``SLICESCOPE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from core.demo import workspace_dir
from core.mitigation import list_batches, load_training_view, read_annotations, style_clusters
from core.store import open_store
from core.training import default_training_data
from core.versions import read_version
from core.workspace import Workspace
from tests.helpers import browser_page, running_app
from tests.test_browser import TABLE, TIMEOUT_MS, assert_no_errors, expect, wait_until_idle
from tests.test_browser_loop import RETRAIN_TIMEOUT_MS

DEFAULT_K = 8  # the Cluster View's default


@pytest.fixture(scope="module")
def augment_home(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("augment-home")
    shutil.copytree(demo_home / "demo", home / "demo")
    return home


@pytest.fixture(scope="module")
def augment_server(augment_home, tmp_path_factory):
    with running_app(augment_home, tmp_path_factory.mktemp("augment-streamlit")) as base_url:
        yield base_url


@pytest.fixture
def page(chromium_executable, chromium_browser, augment_server):
    with browser_page(chromium_browser, augment_server, TIMEOUT_MS) as fresh:
        yield fresh


def mixed_cluster(root: Workspace) -> int:
    """A style cluster (as the page clusters, K = 8) holding every class, so any source finds donors of another class there."""
    state = read_annotations(open_store(root), root)
    view = load_training_view(root, state.slice_ids, {}, default_training_data(root))
    labels, _ = style_clusters(view.features, DEFAULT_K)
    counts = [len(np.unique(view.labels[labels == cluster])) for cluster in range(DEFAULT_K)]
    return int(np.argmax(counts))


def test_pick_a_style_preview_accept_retrain_and_see_the_history(page, augment_home):
    root = Workspace(workspace_dir(augment_home / "demo", "biased"))
    style = mixed_cluster(root)

    page.goto(page.app_url + "augment")
    expect(page.locator("h1")).to_have_text(re.compile(r"^Augment · demo · biased model"))
    wait_until_idle(page)
    pick = page.get_by_role("button", name="Pick", exact=True).nth(style)
    expect(pick).to_be_visible(timeout=TIMEOUT_MS)  # the training images are read and clustered
    pick.click()
    wait_until_idle(page)
    expect(page.get_by_role("button", name="Style ✓")).to_be_visible()
    expect(page.get_by_text(f"Style: cluster {style}")).to_be_visible()
    page.get_by_role("radiogroup", name="Sources").get_by_text("The rest of the training set").click()
    wait_until_idle(page)
    page.get_by_role("button", name="Make batch and preview").click()
    expect(page.get_by_role("heading", name="Preview · batch-001")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("source").first).to_be_visible()  # sources beside their counterfactuals
    assert_no_errors(page)
    page.get_by_role("button", name="Accept").click()
    wait_until_idle(page)
    expect(page.get_by_text("This batch is accepted.")).to_be_visible()
    assert [record.state for record in list_batches(root)] == ["accepted"]
    expect(page.get_by_text(re.compile(r"^Accepted: \d+ images in 1 batch$"))).to_be_visible()

    # Mitigate: with an accepted batch and no annotation, augmentation + slice balance is what the form proposes.
    page.goto(page.app_url + "mitigate")
    wait_until_idle(page)
    expect(page.get_by_text("Augmentation: accepted counterfactual batches (Augment page)")).to_be_visible()
    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("1")
    epochs.press("Enter")
    page.get_by_role("button", name="Start retraining").click()
    expect(page.get_by_role("button", name="Switch the app to this version")).to_be_visible(timeout=RETRAIN_TIMEOUT_MS)
    version = Workspace(root.path.with_name("workspace-v2"))
    assert read_version(version)["job"]["batches"] == ["batch-001"]
    assert_no_errors(page)

    # Versions: the board says what v2 was trained with; the history says which version used the batch.
    page.goto(page.app_url + "versions")
    wait_until_idle(page)
    expect(page.locator(TABLE).first).to_be_visible()
    page.get_by_role("combobox", name="Version", exact=True).click()
    page.get_by_role("option", name=re.compile(r"^v2 · ")).click()
    expect(page.get_by_text(re.compile(r"trained with augment \+ reweight · \d+ counterfactuals from batch-001"))).to_be_visible()
    assert_no_errors(page)
    page.goto(page.app_url + "augment")
    wait_until_idle(page)
    expect(page.get_by_text("Augmentation history")).to_be_visible()
    history = page.get_by_test_id("stDataFrame").last
    expect(history).to_be_visible()
    assert_no_errors(page)
