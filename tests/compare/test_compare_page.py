"""The Compare page driven with AppTest on private copies of the tiny demo: its views, its selection, and what it says on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.compare import confusion_mosaic, mosaic_members, version_outcomes
from core.demo import workspace_dir

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"


@pytest.fixture
def home(tiny_demo, tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(tiny_demo, home / "demo", ignore=shutil.ignore_patterns("*.sqlite*", "workspace-v*"))
    monkeypatch.setenv("SLICESCOPE_HOME", str(home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    return home


def open_compare() -> AppTest:
    app = AppTest.from_file(str(MAIN), default_timeout=180)
    app.run()
    app.switch_page(str(ROOT / "pages" / "compare.py")).run()
    assert not app.exception, [error.value for error in app.exception]
    return app


def test_the_page_draws_both_views_and_lists_a_cells_images(home):
    app = open_compare()
    assert [box.value for box in app.selectbox if box.key in ("compare_a", "compare_b")] == [
        str(workspace_dir(home / "demo", "biased").resolve()), str(workspace_dir(home / "demo", "balanced").resolve())]
    titles = " ".join(chart.proto.spec for chart in app.get("plotly_chart"))
    assert "Mosaic View" in titles and "Trace View" in titles
    outcomes = version_outcomes([workspace_dir(home / "demo", "biased"), workspace_dir(home / "demo", "balanced")])
    cells = confusion_mosaic(outcomes)
    members = mosaic_members(outcomes, cells, [0])
    # What the mosaic's click callback writes.
    app.session_state["compare_cells"] = [0]
    app.session_state["compare_cell_ids"] = outcomes.images["image_id"].to_numpy()[members].tolist()
    app.run()
    assert not app.exception
    assert any(f"**{len(members)} image" in text.value for text in app.markdown)
    assert app.get("image")  # the selected images are drawn
    # Another pair of versions numbers its cells anew: the selection is cleared rather than carried over.
    app.selectbox(key="compare_a").select(str(workspace_dir(home / "demo", "balanced").resolve())).run()
    assert not app.exception and app.session_state["compare_cells"] == [] and app.session_state["compare_cell_ids"] == []


def test_a_single_version_is_told_how_to_get_a_second(home):
    shutil.rmtree(workspace_dir(home / "demo", "balanced"))
    app = open_compare()
    assert any("Comparing needs two scans of the same images" in info.value for info in app.info)
    assert not app.get("plotly_chart")


def test_a_comparison_that_cannot_run_says_why_in_one_line(home):
    app = open_compare()
    # More clusters than a small sample has segments: the form allows it, the library refuses it.
    app.number_input(key="compare_k").set_value(40).run()
    app.number_input(key="compare_per_model").set_value(8).run()
    app.number_input(key="compare_grid").set_value(2).run()
    app.button(key="compare_start").click().run()
    assert not app.exception
    errors = [error.value for error in app.error]
    assert errors and all("\n" not in error for error in errors), errors
    assert any(error.startswith("`k` = 40 clusters for only") for error in errors), errors
    assert app.session_state["compare_request"] is False  # a refused comparison does not start again on every click
