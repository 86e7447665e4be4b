"""The Slices page's linked views, URL state and workspace repair, driven with AppTest.

The real browser tests (tests/test_browser.py) click the table and read the
plot; these cover the logic behind each view: what a selection selects, what
the detail view shows, and what the page says about broken workspaces.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.demo import workspace_dir
from core.mosaic import build_cell_mosaics
from core.slicing import default_slice_params, find_slices, slicing_name
from core.store import AnnotationStore
from core.views import MEMBER_ORDERS, members, order_members, typical_members
from core.workspace import MANIFEST, Workspace
from tests.helpers import small_scan_config
from tests.test_workspace_status import interrupted_scan

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
CAPTION = re.compile(r"^[✓✗] label: (\w+) · prediction: (\w+) · (\d+)%$")


@pytest.fixture
def biased(tiny_demo) -> Workspace:
    return Workspace(workspace_dir(tiny_demo, "biased"))


@pytest.fixture
def slice_ids(biased) -> np.ndarray:
    return find_slices(biased, "attribution", default_slice_params(len(biased.images)))


def open_app(home: Path, monkeypatch, workspaces: Path | None = None, **query) -> AppTest:
    monkeypatch.setenv("SLICESCOPE_HOME", str(home))
    if workspaces is None:
        monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    else:
        monkeypatch.setenv("SLICESCOPE_WORKSPACES", str(workspaces))
    app = AppTest.from_file(str(MAIN), default_timeout=120)
    for name, value in query.items():
        app.query_params[name] = value
    app.run()
    assert not app.exception, app.exception
    return app


def captions(app: AppTest) -> list[tuple[str, str, float]]:
    images = app.get("image")
    if not images:
        return []
    parsed = [CAPTION.match(text) for text in images[0].captions]
    assert all(parsed), images[0].captions
    return [(m.group(1), m.group(2), int(m.group(3)) / 100) for m in parsed]


def test_nothing_selected_asks_the_user_to_pick(demo_home, monkeypatch):
    app = open_app(demo_home, monkeypatch)
    assert captions(app) == []
    assert any("Pick a slice in the Slice Table" in info.value for info in app.info)


def test_slices_in_the_url_fill_the_detail_view_with_their_members(demo_home, monkeypatch, biased, slice_ids):
    app = open_app(demo_home, monkeypatch, slices="1")
    expected = biased.images.iloc[np.flatnonzero(slice_ids == 1)]
    shown = captions(app)
    assert 0 < len(shown) <= 24
    assert len(shown) == min(24, len(expected))
    assert {(label, prediction) for label, prediction, _ in shown} <= set(zip(expected["label"], expected["prediction"]))
    confidences = [c for _, _, c in shown]
    assert confidences == sorted(confidences, reverse=True)  # most confident first by default
    assert app.query_params["slices"] in (["1"], "1")


def test_picking_slices_updates_the_url_and_survives_a_representation_switch(demo_home, monkeypatch, slice_ids):
    app = open_app(demo_home, monkeypatch)
    app.session_state["picked_slices"] = [0, 2]  # what the table's row-click callback writes
    app.run()
    assert app.query_params["slices"] in (["0,2"], "0,2")
    before = captions(app)
    app.sidebar.selectbox(key="menu_representation").select("features").run()
    assert not app.exception
    assert app.session_state["picked_slices"] == [0, 2]
    assert captions(app) == before  # same images: the layout changed, the slicing did not


def test_changing_the_slicing_forgets_slice_ids(demo_home, monkeypatch):
    app = open_app(demo_home, monkeypatch, slices="0")
    app.sidebar.selectbox(key="menu_slice_on").select("features").run()
    assert not app.exception
    assert app.session_state["picked_slices"] == []
    assert "slices" not in app.query_params


def test_points_selected_in_the_scatter_filter_the_table(demo_home, monkeypatch, slice_ids):
    app = open_app(demo_home, monkeypatch)
    points = [int(np.flatnonzero(slice_ids == 0)[0]), int(np.flatnonzero(slice_ids == 3)[0])]
    app.session_state["picked_points"] = points  # what the scatter's selection callback writes
    app.run()
    assert not app.exception
    assert sorted(app.dataframe[0].value["slice"]) == [0, 3]
    assert len(captions(app)) == 2
    app.button(key="clear_points").click().run()
    assert len(app.dataframe[0].value) == len(np.unique(slice_ids))


def test_detail_view_sorts_and_pages(demo_home, monkeypatch, biased):
    app = open_app(demo_home, monkeypatch, slices=",".join(map(str, range(10))))
    app.selectbox(key="detail_order").select("loss_desc").run()
    losses = biased.images["loss"].sort_values(ascending=False).to_numpy()
    shown = captions(app)
    assert len(shown) == 24
    app.get("pagination")[0].set_value(2).run()
    assert not app.exception
    second_page = captions(app)
    assert len(second_page) == min(24, len(losses) - 24)
    assert second_page != shown
    app.segmented_control(key="detail_mode").set_value("GradCAM heatmaps").run()
    assert not app.exception and len(captions(app)) == len(second_page)


def test_confusion_layout_splits_the_detail_view_by_cell_in_words(demo_home, monkeypatch):
    app = open_app(demo_home, monkeypatch, slices=",".join(map(str, range(10))), layout="confusion")
    cells = app.pills(key="detail_cell")  # the View control is a button group too, in this layout
    titles = cells.options
    assert titles and all(re.match(r"^label: \w+ · prediction: \w+ \(\d+\)$", title) for title in titles)
    wrong = next(i for i, title in enumerate(titles) if (m := re.match(r"label: (\w+) · prediction: (\w+)", title)) and m[1] != m[2])
    cells.set_value(wrong).run()
    assert not app.exception
    label, prediction = re.match(r"label: (\w+) · prediction: (\w+)", titles[wrong]).groups()
    assert {(l, p) for l, p, _ in captions(app)} == {(label, prediction)}


def test_a_half_built_workspace_says_so_and_resumes_with_one_click(demo_home, monkeypatch, image_folder, small_net_checkpoint, tmp_path):
    shelf = tmp_path / "shelf"
    interrupted_scan(small_scan_config(image_folder, small_net_checkpoint, shelf / "interrupted"))
    app = open_app(demo_home, monkeypatch, workspaces=shelf)
    warning = next(w.value for w in app.warning if "interrupted" in w.value)
    assert "scan was interrupted" in warning and "resume it" in warning
    app.button(key=f"repair-{shelf / 'interrupted'}").click().run()
    assert not app.exception
    assert not any("interrupted" in w.value for w in app.warning)
    assert (shelf / "interrupted" / MANIFEST).is_file()


def test_a_shared_link_to_a_missing_workspace_explains_instead_of_crashing(demo_home, monkeypatch, tmp_path):
    gone = tmp_path / "gone"
    app = open_app(demo_home, monkeypatch, workspace=str(gone))
    assert any(str(gone) in w.value and "python -m core scan" in w.value for w in app.warning)
    assert app.title[0].value.startswith("Slices · demo")  # falls back to a workspace that exists


def test_an_outdated_workspace_offers_a_rebuild(demo_home, monkeypatch, biased, tmp_path):
    shelf = tmp_path / "shelf"
    copy = shutil.copytree(biased.path, shelf / "old")
    manifest = (copy / MANIFEST).read_text().replace("format_version = 1", "format_version = 0")
    (copy / MANIFEST).write_text(manifest)
    app = open_app(demo_home, monkeypatch, workspaces=shelf)
    assert any("format 0" in w.value and "rebuild it" in w.value for w in app.warning)
    assert app.button(key=f"repair-{copy}").label == "Rebuild the workspace"


def test_a_truncated_table_is_found_and_offers_a_repair(demo_home, monkeypatch, biased, tmp_path):
    shelf = tmp_path / "shelf"
    copy = shutil.copytree(biased.path, shelf / "truncated")
    table = copy / "images.parquet"
    table.write_bytes(table.read_bytes()[:-100])
    app = open_app(demo_home, monkeypatch, workspaces=shelf)
    assert not app.exception, app.exception
    assert any("damaged: images.parquet is unreadable" in w.value for w in app.warning)
    assert app.button(key=f"repair-{copy}").label == "Repair the workspace"


def test_mosaic_view_draws_one_tile_per_slice(demo_home, monkeypatch, slice_ids):
    app = open_app(demo_home, monkeypatch)
    app.segmented_control(key="plot_view").set_value("Data Slice Mosaic").run()
    assert not app.exception, app.exception
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert len(figure["layout"]["images"]) == len(np.unique(slice_ids))
    assert all(image["source"].startswith("data:image/png;base64,") for image in figure["layout"]["images"])


def open_confusion_mosaic(home: Path, monkeypatch, **query) -> AppTest:
    app = open_app(home, monkeypatch, layout="confusion", **query)
    app.segmented_control(key="plot_view").set_value("Data Slice Mosaic").run()
    assert not app.exception, app.exception
    return app


def test_confusion_layout_offers_a_mosaic_per_cell_titled_in_words(demo_home, monkeypatch, biased, slice_ids):
    app = open_confusion_mosaic(demo_home, monkeypatch)
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    classes = biased.classes
    titles = [annotation["text"] for annotation in figure["layout"]["annotations"]]
    assert titles == [f"label: {label} · prediction: {prediction}" for label in classes for prediction in classes]

    cells = build_cell_mosaics(biased, default_slice_params(len(biased.images)))  # what the app built, read back
    assert len(figure["layout"]["images"]) == sum(len(cell.mosaic.slice_ids) for cell in cells)
    # Each cell's pictures sit in that cell's subplot (the matrix is row-major: label × prediction).
    axis = {(label, prediction): f"x{i + 1}" if i else "x" for i, (label, prediction) in enumerate((l, p) for l in classes for p in classes)}
    expected_axes = sorted(axis[(c.label, c.prediction)] for c in cells for _ in c.mosaic.slice_ids)
    assert sorted(image["xref"] for image in figure["layout"]["images"]) == expected_axes
    hover = [text for trace in figure["data"] for text in trace.get("hovertext") or []]  # one numbered marker per tile
    numbered = [re.match(r"^<b>Slice (\d+)</b> · \d+ images \((\d+) in this cell\)<br>accuracy \d+%<br>mostly \w+ → \w+$", text) for text in hover]
    assert all(numbered), hover
    assert [(int(m[1]), int(m[2])) for m in numbered] == [(s, n) for c in cells for s, n in zip(c.mosaic.slice_ids, c.counts)]
    assert any("Click a tile's number" in caption.value for caption in app.caption)


def test_picking_a_tile_shows_its_typical_images_and_queues_it_for_annotation(demo_home, monkeypatch, biased, slice_ids):
    app = open_confusion_mosaic(demo_home, monkeypatch)
    app.session_state["picked_slices"] = [1]  # what the mosaic's tile-click callback writes
    app.run()
    assert not app.exception, app.exception
    assert "#### Slice 1" in [markdown.value for markdown in app.markdown]
    size = int((slice_ids == 1).sum())
    assert any(caption.value.startswith(f"{size} images · accuracy ") for caption in app.caption)

    typical = typical_members(biased.array("attribution_features"), slice_ids, 1, 6)
    chosen = biased.images.iloc[typical]
    strip = captions(app)  # the panel's strip comes before the Slice Detail View
    assert strip == [(label, prediction, round(confidence, 2)) for label, prediction, confidence in zip(chosen["label"], chosen["prediction"], chosen["confidence"])]

    assert "annotate_slice" not in app.session_state
    app.button(key="annotate-1").click().run()
    assert not app.exception, app.exception
    assert app.session_state["annotate_slice"] == 1
    assert any("Annotating slice 1" in toast.value for toast in app.toast)
    assert any("in the annotation form" in caption.value for caption in app.caption)
    assert "**Annotate slice 1**" in [markdown.value for markdown in app.markdown]

    app.session_state["picked_slices"] = [0, 1, 2, 3]  # a box selection over several tiles
    app.run()
    assert [markdown.value for markdown in app.markdown if markdown.value.startswith("#### Slice")] == ["#### Slice 0", "#### Slice 1", "#### Slice 2"]
    assert any(caption.value.startswith("1 more picked slices") for caption in app.caption)


@pytest.fixture
def private_store(monkeypatch, tmp_path):
    """Annotations of this test go to their own SQLite file, not the shared demo's."""
    from app.store import store_for

    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'annotations.sqlite'}")
    store_for.clear()
    yield AnnotationStore(f"sqlite:///{tmp_path / 'annotations.sqlite'}")
    store_for.clear()


def test_annotating_a_slice_saves_it_spreads_spuriousness_and_undoes(demo_home, monkeypatch, biased, slice_ids, private_store):
    app = open_app(demo_home, monkeypatch, slices="1")
    table = app.dataframe[0].value
    assert table["spuriousness"].isna().all() and (table["annotation"] == "").all()
    slicing = slicing_name("attribution", default_slice_params(len(biased.images)))
    hostile = "spurious: water <script>alert(1)</script>"
    app.sidebar.text_input(key="analyst").input("alice")
    app.segmented_control(key=f"annotation_kind-{slicing}").set_value("spurious")
    app.text_input(key=f"annotation_note-{slicing}").input(hostile).run()
    app.button(key="annotation_save").click().run()
    assert not app.exception, app.exception

    saved = private_store.slice_annotations(biased.fingerprint, slicing)
    assert saved[1].kind == "spurious" and saved[1].note == hostile and saved[1].analyst == "alice"
    table = app.dataframe[0].value.set_index("slice")
    assert table.at[1, "annotation"] == f"Spurious: {hostile}" and table.at[1, "spuriousness"] == 1.0
    assert table["spuriousness"].notna().all() and table["spuriousness"].between(0, 1).all()
    assert not any("<script>" in markdown.value for markdown in app.markdown)  # notes never go through Markdown

    app.button(key="annotation_undo").click().run()
    assert any("Undid marking slice 1 as spurious" in toast.value for toast in app.toast)
    assert private_store.slice_annotations(biased.fingerprint, slicing) == {}
    assert app.dataframe[0].value["spuriousness"].isna().all()


def test_marking_an_image_mislabelled_flags_it_in_the_detail_view(demo_home, monkeypatch, biased, slice_ids, private_store):
    app = open_app(demo_home, monkeypatch, slices="0")
    app.sidebar.text_input(key="analyst").input("bob")
    shown = order_members(biased.images, members(slice_ids, [0]), next(iter(MEMBER_ORDERS)))[0]
    app.multiselect(key="relabel_rows").select(int(shown))
    app.selectbox(key="relabel_label").select("star").run()
    app.button(key="relabel_mark").click().run()
    assert not app.exception, app.exception
    relabels = private_store.relabels(biased.dataset_fingerprint)
    assert {image: relabel.label for image, relabel in relabels.items()} == {biased.images["image_id"].iat[shown]: "star"}
    detail_captions = app.get("image")[-1].captions
    assert detail_captions[0].endswith("⚑ should be star") and not any("⚑" in caption for caption in detail_captions[1:])


def test_an_image_cannot_be_marked_mislabelled_as_its_own_label(demo_home, monkeypatch, biased, slice_ids, private_store):
    app = open_app(demo_home, monkeypatch, slices="0")
    app.sidebar.text_input(key="analyst").input("bob")
    shown = order_members(biased.images, members(slice_ids, [0]), next(iter(MEMBER_ORDERS)))[0]
    own_label = biased.images["label"].iat[shown]
    app.multiselect(key="relabel_rows").select(int(shown))
    app.selectbox(key="relabel_label").select(own_label).run()
    app.button(key="relabel_mark").click().run()
    assert not app.exception, app.exception
    assert any(f"the chosen image is already labelled {own_label}" in error.value for error in app.error)
    assert private_store.relabels(biased.dataset_fingerprint) == {}


def test_thumbnail_view_carries_an_image_per_point(demo_home, monkeypatch, biased):
    app = open_app(demo_home, monkeypatch, layout="confusion")
    app.segmented_control(key="plot_view").set_value("Thumbnails on hover").run()
    assert not app.exception, app.exception
    assert any("Thumbnails are drawn in the combined layout" in caption.value for caption in app.caption)
    spec = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["tooltip"][0]["field"] == "image"


def plotly_array(value) -> np.ndarray:
    """An array from a figure's JSON: a list, or Plotly's typed-array encoding of a numpy array."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def test_a_sampled_scatter_zooms_to_a_boxed_area_and_back(demo_home, monkeypatch):
    monkeypatch.setenv("SLICESCOPE_SCATTER_MAX_POINTS", "40")
    app = open_app(demo_home, monkeypatch)
    whole = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert "points drawn" in whole["layout"]["title"]["text"]
    assert any("Box-select an area to zoom in" in caption.value for caption in app.caption)
    density = next(trace for trace in whole["data"] if trace["type"] == "heatmap")
    xs, ys = (plotly_array(density[axis]).tolist() for axis in ("x", "y"))
    app.session_state["scatter_box"] = (xs[0], xs[len(xs) // 2], ys[0], ys[-1])  # what a box selection over the left half leaves
    app.run()
    zoom = next(button for button in app.button if button.label.startswith("Zoom to the box"))
    in_box = int(re.search(r"\(([\d,]+) points\)", zoom.label).group(1).replace(",", ""))
    zoom.click().run()
    assert not app.exception, app.exception
    zoomed = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert f"of the {in_box:,} points in view drawn" in zoomed["layout"]["title"]["text"] or f"all {in_box:,} points in view" in zoomed["layout"]["title"]["text"]
    assert zoomed["layout"]["xaxis"]["range"] == [xs[0], xs[len(xs) // 2]]
    next(button for button in app.button if button.label == "Whole map").click().run()
    assert "zoomed" not in json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]



def test_the_page_speed_benchmark_cycles_only_through_what_the_menus_offer(demo_home, monkeypatch):
    """The benchmark behind the 300 ms click target clicks the System Menu: it must pick only options the page offers
    (influence embeddings appear once computed; cycling into them stopped the benchmark with a ValueError)."""
    from app.ui import COLOUR_LABELS, LAYOUT_LABELS, REPRESENTATION_LABELS
    from benchmarks.page_speed import next_menu_option

    app = open_app(demo_home, monkeypatch)
    for key, labels in (("menu_representation", REPRESENTATION_LABELS), ("menu_colour", COLOUR_LABELS), ("menu_layout", LAYOUT_LABELS)):
        offered = app.sidebar.selectbox(key=key).options
        seen = [app.sidebar.selectbox(key=key).value]
        for _ in offered:
            next_menu_option(key, labels)(app)
            app.run()
            assert not app.exception, app.exception
            seen.append(app.sidebar.selectbox(key=key).value)
        # Every offered option once, then back to the first.
        assert sorted(labels[value] for value in seen[:-1]) == sorted(offered) and seen[-1] == seen[0]
