"""The Mitigate and Versions pages, driven with AppTest on a private copy of the tiny demo.

Retraining runs as a real background ``python -m core mitigate`` process, so
these tests wait for its status.json; the tiny demo retrains an epoch in about
a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.cli import build_parser, training_params
from core.errors import SliceScopeError
from core.mitigation import (
    Slicing,
    TrainingParams,
    job_folder,
    mitigate_arguments,
    plan_mitigation,
    read_annotations,
    read_job,
    read_status,
)
from core.slicing import DEFAULT_SLICING, default_k, default_slice_params, find_slices
from core.store import open_store
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"
JOB_TIMEOUT = 300  # seconds for a background retraining of the tiny demo, on a busy 2-core machine


@pytest.fixture
def home(tiny_demo, tmp_path, monkeypatch) -> Iterator[Path]:
    """A SliceScope home whose demo is a private copy of the tiny demo: new versions are written beside its workspace."""
    home = tmp_path / "home"
    shutil.copytree(tiny_demo, home / "demo", ignore=shutil.ignore_patterns("*.sqlite*", "workspace-v*"))
    monkeypatch.setenv("SLICESCOPE_HOME", str(home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    yield home
    # A failed test may leave its retraining running: stop the jobs this test started.
    for folder in (home / "demo").glob("*.training"):
        status = read_status(folder.with_name(folder.name.removesuffix(".training")))
        if status is not None and status["state"] not in ("done", "cancelled", "failed"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(status["pid"], signal.SIGKILL)


@pytest.fixture
def root(home) -> Workspace:
    return Workspace(home / "demo" / "workspace")


def annotate(workspace: Workspace, kinds: dict[int, str]) -> None:
    store = open_store(workspace)
    try:
        slicing = read_annotations(store, workspace).slicing
        for slice_id, kind in kinds.items():
            store.set_slice(workspace.fingerprint, slicing, slice_id, kind, f"{kind}: test", "tester")
    finally:
        store.close()


def open_page(page: str) -> AppTest:
    """A new session (as after a restart) on ``pages/<page>.py``."""
    app = AppTest.from_file(str(MAIN), default_timeout=120)
    app.switch_page(str(ROOT / "pages" / f"{page}.py")).run()
    assert not app.exception, app.exception
    return app


def board_text(app: AppTest) -> list[str]:
    return [markdown.value for markdown in app.markdown if markdown.value.startswith("**workspace-v")]


def wait_for(out: Path, done, what: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = read_status(out)
        if status is not None and done(status):
            return status
        time.sleep(0.2)
    log = job_folder(out) / "mitigate.log"
    raise AssertionError(f"the job never got {what}: {read_status(out)}\n{log.read_text() if log.is_file() else ''}")


def rerun_until(app: AppTest, board: str) -> None:
    """Rerun the page until the classifier board says ``board`` (what the fragment's polling would show)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while board_text(app) != [board] and time.monotonic() < deadline:
        time.sleep(0.3)
        app.run()
    assert board_text(app) == [board]


def start(app: AppTest, epochs: int, source: str = "annotations", threshold: float | None = None) -> None:
    app.radio(key="mitigate_source").set_value(source)
    if threshold is not None:
        app.run()
        app.slider(key="mitigate_threshold").set_value(threshold)
    app.number_input(key="mitigate_epochs").set_value(epochs)
    app.number_input(key="mitigate_batch_size").set_value(32)
    app.button[0].click().run()  # the form's Start retraining
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]


def test_mitigate_page_without_annotations_says_what_to_do(home):
    app = open_page("mitigate")
    assert app.title[0].value == "Mitigate · demo · biased model"
    message = next(info.value for info in app.info if "annotate them **spurious**" in info.value)
    selection = app.session_state["selection"]
    assert message.startswith(f"None of {selection.slicing_label} is annotated yet.")
    assert "attribution space (F_W)" in selection.slicing_label
    assert not app.get("image")  # no CoRM preview without slices to treat…
    assert app.multiselect(key="mitigate_methods").value == ["reweight"]  # …but methods that need no annotation are offered


def test_nothing_to_treat_is_explained_in_one_line(home, root):
    annotate(root, {1: "core"})
    app = open_page("mitigate")
    assert [error.value for error in app.error] == ["no slice is annotated spurious — annotate the slices to treat, or take them from propagation (`source`)"]
    assert "corm" not in app.multiselect(key="mitigate_methods").value  # CoRM has nothing to treat; the other methods remain


def test_an_unusable_database_is_an_error_not_a_traceback(home, monkeypatch):
    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", "mysql://nobody@localhost/db")
    app = open_page("mitigate")
    [error] = app.error
    assert error.value.startswith("SliceScope keeps annotations in SQLite or PostgreSQL, not mysql — set SLICESCOPE_DATABASE_URL")


def test_an_annotated_spurious_slice_is_treated_and_previewed(home, root):
    annotate(root, {0: "spurious", 1: "core"})
    app = open_page("mitigate")
    assert [header.value for header in app.subheader] == ["Annotations", "Slices to treat", "CoRM preview", "Retrain", "Export"]
    annotated, _, treated = (table.value for table in app.dataframe)
    assert annotated.set_index("slice")["annotation"].to_dict() == {0: "Spurious: spurious: test", 1: "Core: core: test"}
    assert treated["slice"].tolist() == [0] and treated["spuriousness"].tolist() == [1.0]
    originals, masks, noisy = app.get("image")
    assert len(originals.proto.imgs) == len(masks.proto.imgs) == len(noisy.proto.imgs) == 6  # the slice's most typical images
    assert originals.captions == noisy.captions and all(caption.startswith("slice 0 · ") for caption in noisy.captions)
    assert "x + m ⊙ z, σ = 1.0" in [caption.value for caption in app.caption]
    app.slider(key="mitigate_sigma").set_value(0.3).run()
    assert "x + m ⊙ z, σ = 0.3" in [caption.value for caption in app.caption]
    app.radio(key="mitigate_noise_region").set_value("object_masks").run()  # the demo has object masks
    originals, noisy = app.get("image")
    assert len(noisy.proto.imgs) == 6 and any("everything outside the object masks" in caption.value for caption in app.caption)
    assert [button.proto.label for button in app.get("download_button")] == [
        "Annotations and treated slices (JSON)", "Slices with annotations, spuriousness, treated (CSV)",
    ]

    app.radio(key="mitigate_source").set_value("propagation").run()
    app.slider(key="mitigate_threshold").set_value(0.0).run()  # every slice but the core one
    slices = find_slices(root, "attribution", default_slice_params(len(root.images)))
    assert sorted(app.dataframe[2].value["slice"]) == sorted(set(range(int(slices.max()) + 1)) - {1})


def test_retraining_in_the_background_then_comparing_versions(home, root):
    annotate(root, {0: "spurious", 1: "core"})
    app = open_page("mitigate")
    start(app, epochs=1)
    out = root.path.with_name("workspace-v2")
    assert board_text(app)[0].startswith("**workspace-v2** · ")
    command = (job_folder(out) / "mitigate.log").read_text().splitlines()[0]
    assert f"-m core mitigate {root.path} --from annotations --out {out} " in command and " --epochs 1 " in command
    wait_for(out, lambda status: status["state"] == "done", "done")
    rerun_until(app, "**workspace-v2** · done")  # once the CLI has evaluated both versions and exited
    assert not app.exception and not app.error
    changes = app.dataframe[0].value
    assert changes["metric"].tolist() == ["Clean accuracy", "Core accuracy", "Spurious accuracy", "RCS", "Worst-group accuracy"]
    assert [button.proto.label for button in app.get("download_button")][:2] == ["Model (state_dict)", "Model (TorchScript)"]
    assert len(app.get("plotly_chart")) == 1  # the classifier board's loss/accuracy chart

    app.switch_page(str(ROOT / "pages" / "versions.py")).run()
    assert not app.exception, app.exception
    board = app.dataframe[0].value
    assert board["version"].tolist() == [1, 2] and board["mitigation"].tolist() == ["original model", "corm (annotations)"]
    assert board[["clean_acc", "core_acc", "spurious_acc", "rcs"]].notna().all().all()
    assert set(board["regions"]) == {"ground-truth object masks of 64 images"}  # the demo has object masks
    app.selectbox(key=f"version_pick-{root.path}").set_value(str(out)).run()
    assert not app.exception, app.exception
    counts = {metric.label: int(metric.value) for metric in app.metric}
    assert set(counts) == {"Slices improved", "Slices regressed", "Slices unchanged"}
    assert sum(counts.values()) == len(set(read_annotations(open_store(root), root).slice_ids))
    assert len(app.get("plotly_chart")) == 3  # versions compared, slice changes, training history

    app.button(key="switch_version").click().run()
    assert not app.exception, app.exception
    assert app.sidebar.selectbox(key="menu_workspace").value == str(out)
    assert app.title[0].value == "Versions · demo · biased model"
    assert app.dataframe[0].value["current"].tolist() == ["", "▶"]


def test_cancel_stops_the_retraining(home, root):
    annotate(root, {0: "spurious"})
    app = open_page("mitigate")
    start(app, epochs=50)
    out = root.path.with_name("workspace-v2")
    wait_for(out, lambda status: len(status["history"]) >= 1, "through an epoch")
    app.run()
    app.button(key="cancel-workspace-v2").click().run()
    status = wait_for(out, lambda status: status["state"] == "cancelled", "cancelled")
    assert len(status["history"]) < 50
    rerun_until(app, "**workspace-v2** · cancelled — Resume continues from the last finished epoch")
    assert f"Log: {job_folder(out) / 'mitigate.log'}" in [caption.value for caption in app.caption]

    # Annotations changed since do not change the job: Resume continues the same slices from the kept epochs.
    annotate(root, {2: "spurious"})
    kept = status["history"]
    app.button(key="resume-workspace-v2").click().run()
    assert not app.exception, app.exception
    resumed = wait_for(out, lambda status: status["state"] == "training" and len(status["history"]) > len(kept), "a resumed epoch")
    assert resumed["history"][: len(kept)] == kept
    assert read_job(out).treated_slices == (0,)
    app.run()
    app.button(key="cancel-workspace-v2").click().run()
    wait_for(out, lambda status: status["state"] == "cancelled", "cancelled again")


def test_an_interrupted_job_is_found_after_a_restart_and_resumes(home, root):
    annotate(root, {0: "spurious", 1: "core"})
    app = open_page("mitigate")
    start(app, epochs=6, source="propagation", threshold=0.2)
    out = root.path.with_name("workspace-v2")
    status = wait_for(out, lambda status: len(status["history"]) >= 1, "through an epoch")
    first_epoch = status["history"][0]
    os.kill(status["pid"], signal.SIGKILL)  # a crash, or the machine going down
    rerun_until(app, "**workspace-v2** · interrupted — its process stopped; Resume continues from the last finished epoch")

    restarted = open_page("mitigate")  # a new session: it does not know the job, the folder does
    assert "Unfinished retrainings" in [header.value for header in restarted.subheader]
    restarted.button(key="resume-workspace-v2").click().run()
    assert not restarted.exception and not restarted.error, restarted.error
    status = wait_for(out, lambda status: status["state"] == "done", "done")
    assert [row["epoch"] for row in status["history"]] == [1, 2, 3, 4, 5, 6]
    assert status["history"][0] == first_epoch  # continued from the checkpoint, not retrained from scratch
    log = (job_folder(out) / "mitigate.log").read_text()
    assert log.count("=== launched") == 2 and "error:" not in log
    assert Workspace(out).name == "demo · biased model · v2"


def test_the_cli_arguments_plan_the_same_job_again(root):
    annotate(root, {0: "spurious", 1: "core"})
    store = open_store(root)
    state = read_annotations(store, root)
    store.close()
    params = TrainingParams(epochs=3, learning_rate=0.01, batch_size=16, sigma=0.7, noise_region="object_masks")
    job = plan_mitigation(root, state, "propagation", root.path.with_name("workspace-v2"), threshold=0.2, params=params)
    arguments = mitigate_arguments(job)
    assert training_params(build_parser().parse_args(arguments)) == params
    treated = [int(s) for s in arguments[arguments.index("--slices") + 1].split(",")]
    assert tuple(treated) == job.treated_slices
    assert plan_mitigation(root, state, "propagation", job.out, threshold=0.9, params=params, treated=treated) == job  # the named slices win
    assert Slicing.from_name(job.slicing) == Slicing("attribution", default_slice_params(len(root.images)))
    assert arguments[arguments.index("--k") + 1] == str(default_k(len(root.images)))
    assert arguments[arguments.index("--slicing-method") + 1] == DEFAULT_SLICING.method
    with pytest.raises(SliceScopeError, match="are not all in"):
        plan_mitigation(root, state, "propagation", job.out, treated=[999])


def test_versions_page_evaluates_with_the_chosen_regions(home, root):
    app = open_page("versions")
    assert app.dataframe[0].value["clean_acc"].isna().all()
    app.selectbox(key="evaluate_regions").set_value("attribution")
    app.button(key="evaluate").click().run()
    assert not app.exception, app.exception
    assert any("annotate at least one slice" in error.value for error in app.error)  # nothing annotated: no attribution regions
    app.selectbox(key="evaluate_regions").set_value("ground_truth")
    app.button(key="evaluate").click().run()
    assert not app.exception and not app.error, [error.value for error in app.error]
    board = app.dataframe[0].value
    assert board["clean_acc"].notna().all() and board["regions"].tolist() == ["ground-truth object masks of 64 images"]
    assert not app.warning

    # Marking an image mislabelled changes what clean accuracy counts: the evaluated version is said to be out of date,
    # and evaluating again (the default choice now) counts the image with its new label.
    image = root.images.iloc[0]
    store = open_store(root)
    store.mark_mislabelled(root.dataset_fingerprint, image["image_id"], next(c for c in root.classes if c != image["label"]), "ada")
    store.close()
    app.run()
    assert any("evaluated before the latest images were marked mislabelled" in warning.value for warning in app.warning)
    assert any("counts the 1 image marked mislabelled" in caption.value for caption in app.caption)
    app.button(key="evaluate").click().run()
    assert not app.exception and not app.warning, [warning.value for warning in app.warning]
    assert app.dataframe[0].value["relabelled"].tolist() == [1]


def test_store_helpers_read_the_secrets_and_the_login_name(monkeypatch, tmp_path):
    def script():
        import streamlit as st

        from app.store import analyst_name, configured_database_url

        st.text(f"url={configured_database_url()} analyst={analyst_name()}")

    monkeypatch.setenv("LOGNAME", "ada")
    app = AppTest.from_function(script)
    app.run()
    assert app.text[0].value == "url=None analyst=ada"
    app.secrets["database"] = {"url": f"sqlite:///{tmp_path / 'shared.sqlite'}"}
    app.sidebar.text_input(key="analyst").input("Grace Hopper").run()
    assert app.text[0].value == f"url=sqlite:///{tmp_path / 'shared.sqlite'} analyst=Grace Hopper"
