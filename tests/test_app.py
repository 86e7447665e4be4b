"""The analyst app, driven headless with Streamlit's AppTest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui import DEMO_PRESETS_ENV
from core.demo import BUILD_LOG, is_demo_built, workspace_dir
from core.evidence import evidence_order
from core.slicing import default_slice_params, find_slices, slice_table
from core.workspace import Workspace

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


@pytest.fixture
def app(demo_home, monkeypatch):
    monkeypatch.setenv("SLICESCOPE_HOME", str(demo_home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    return AppTest.from_file(str(MAIN), default_timeout=120)


def test_main_page_opens_on_the_demo_with_a_slice_table(app, tiny_demo):
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value.startswith("Slices · demo · biased model")
    table = app.dataframe[0].value
    workspace = Workspace(workspace_dir(tiny_demo, "biased"))
    assert {"slice", "flagged", "size", "accuracy", "interval", "gap", "description"} <= set(table.columns)
    assert table["size"].sum() == len(workspace.images)
    # Strongest evidence first: the flagged slices, then the rest, each ordered as core.evidence.evidence_order does.
    assert table["flagged"].is_monotonic_decreasing
    expected = evidence_order(slice_table(workspace.images, find_slices(workspace, "attribution", default_slice_params(len(workspace.images)))))
    assert table["slice"].tolist() == expected["slice"].tolist()
    assert "→" in table["description"].iat[0]
    assert [s.label for s in app.sidebar.selectbox] == ["Dataset", "Model version", "Representation", "Layout", "Colour encoding", "Slice on", "Slicing method", "Kernel"]


def test_switching_model_version_and_representation(app, tiny_demo):
    app.run()
    app.sidebar.selectbox(key="menu_workspace").select(str(workspace_dir(tiny_demo, "balanced"))).run()
    assert not app.exception
    assert app.title[0].value == "Slices · demo · balanced model"
    app.sidebar.selectbox(key="menu_representation").select("features").run()
    assert not app.exception
    assert app.query_params["representation"] == ["features"] or app.query_params["representation"] == "features"
    assert "Original feature space" in [h.value for h in app.subheader][1]


def test_report_page_lists_group_accuracy(app):
    app.run()
    app.switch_page(str(MAIN.parent.parent / "pages" / "report.py")).run()
    assert not app.exception
    assert app.title[0].value.startswith("Workspace report")
    groups = app.dataframe[0].value
    assert set(groups["group"]) == {"none", "background", "colour", "watermark", "flipped_label"}


def test_a_fresh_machine_opens_on_the_quick_demo_and_moves_to_the_full_one(tmp_path, monkeypatch):
    # Both stages at the tiny preset: the flow is what is tested here; benchmarks/first_start.py times the real presets.
    monkeypatch.setenv("SLICESCOPE_HOME", str(tmp_path))
    monkeypatch.setenv(DEMO_PRESETS_ENV, "tiny,tiny")
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    app = AppTest.from_file(str(MAIN), default_timeout=300)
    app.run()
    assert not app.exception, app.exception
    quick, full = tmp_path / "demo-quick", tmp_path / "demo"
    assert is_demo_built(quick) and app.session_state["selection"].workspace.is_relative_to(quick)
    assert app.title[0].value.startswith("Slices · ") and app.dataframe
    assert any("quick demo" in info.value for info in app.sidebar.info)

    deadline = time.monotonic() + 240  # the full demo is built by a process of its own, not by the page
    while not is_demo_built(full):
        assert time.monotonic() < deadline, (full / BUILD_LOG).read_text()
        time.sleep(1)
    app.run()
    assert not app.exception, app.exception
    assert app.session_state["selection"].workspace.is_relative_to(full)
    assert not any("quick demo" in info.value for info in app.sidebar.info)
