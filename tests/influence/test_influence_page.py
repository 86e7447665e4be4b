"""The Influence page, driven with AppTest: attach the training data, compute the embeddings, slice, compare."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.influence import is_computed
from core.training import training_data
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"


def open_influence(workspace: Workspace) -> AppTest:
    app = AppTest.from_file(str(MAIN), default_timeout=300)
    app.query_params["workspace"] = str(workspace.path)
    app.switch_page(str(ROOT / "pages" / "influence.py")).run()
    assert not app.exception, app.exception
    return app


def test_attach_compute_slice_and_compare(trained_workspace, image_folder):
    app = open_influence(trained_workspace)
    # Without training data the page says what it needs and how to give it.
    assert any("need the images the model was trained on" in info.value and "attach-train" in info.value for info in app.info)
    assert "Influence embeddings (InfEmbed)" not in app.sidebar.selectbox(key="menu_representation").options
    app.text_input[0].input(str(image_folder))
    app.button[0].click().run()
    assert not app.exception, app.exception
    workspace = Workspace(trained_workspace.path)
    assert training_data(workspace).num_images == 18 and not is_computed(workspace)
    # Not computed yet: an estimate and a button, never a silent multi-minute run.
    assert any("not computed yet" in info.value and re.search(r"about \d+ (s|min) on this machine", info.value) for info in app.info)
    app.button[[button.label for button in app.button].index("Compute influence embeddings")].click().run()
    assert not app.exception, app.exception
    assert is_computed(Workspace(trained_workspace.path))

    table = next(frame.value for frame in app.dataframe if "mean_coherence" in frame.value.columns)
    assert table["size"].sum() == len(trained_workspace.images) and (table["mean_coherence"] >= 0).all()
    assert table["flagged"].is_monotonic_decreasing and table.columns[-1] == "confusion"  # problems first, long text last
    assert any("Pick a slice in the table" in info.value for info in app.info)
    comparison = next(frame.value for frame in app.dataframe if "representation" in frame.value.columns)
    assert list(comparison["representation"]) == ["Attribution space (F_W)", "Original feature space (F)", "Influence embeddings (InfEmbed)"]
    assert "coherence" not in comparison.columns  # a raw sum of squares; its share of the total is shown
    app.toggle(key="compare_layouts").set_value(True).run()
    assert not app.exception, app.exception
    assert any('"Influence embeddings (InfEmbed)"' in chart.proto.spec and 'slice accuracy' in chart.proto.spec for chart in app.get("plotly_chart"))
    # Once computed, the System Menu offers the embeddings as a layout and as what to slice on.
    assert "Influence embeddings (InfEmbed)" in app.sidebar.selectbox(key="menu_representation").options

    app.radio(key="influence_method").set_value("rule").run()
    app.number_input(key="rule_size").set_value(3).run()
    assert not app.exception, app.exception
    rule = next(frame.value for frame in app.dataframe if "path" in frame.value.columns)
    assert rule["size"].sum() == len(trained_workspace.images) and (rule["size"] >= 3).all()
    assert all(path == "" or set(path) <= set("0123456789/") for path in rule["path"])
    assert (rule.loc[rule["rule_holds"], "accuracy"] <= 0.4).all()
    assert app.get("plotly_chart"), "the split tree is drawn"

    # The Slices page offers a picked slice's opponents too, whatever it was sliced on.
    app.query_params["slices"] = "0"
    app.switch_page(str(ROOT / "pages" / "slices.py")).run()
    assert not app.exception, app.exception
    assert any(expander.label.startswith("Opponents of slice 0 in the training data") for expander in app.expander)
    opponents = [caption for image in app.get("image") for caption in image.captions if caption.startswith("label: ") and caption.count("·") == 1]
    assert len(opponents) == 10

