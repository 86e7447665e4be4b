"""The built-in demo: a generated benchmark with known failure modes, end to end.

``build_demo(out)`` makes, in stages that each resume if interrupted:

1. ``out/data``: procedurally drawn objects with injected problems and their
   ground truth (``metadata.csv``, masks), see :mod:`core.demo.dataset`;
2. ``out/models``: two small CNNs, ``biased`` (trained on the biased split) and
   ``balanced`` (trained with the problem groups balanced; not in the quick preset);
3. ``out/workspace`` (the biased model) and ``out/workspace-balanced``: scans of
   the held-out split, with the default slices and layouts precomputed and
   the model's training split attached (for influence embeddings);
4. one finished crowd campaign on the biased workspace, answered by the
   *simulated* crowd (:mod:`core.demo.crowd`), named "Simulated crowd (demo)".

A file lock makes concurrent builders (two browser tabs, the CLI and the app)
wait for one another instead of racing; every builder records where it stands
in ``out/progress.json``, so whoever waits can show the same progress.

The app opens within a minute on a fresh machine by building the ``quick``
preset first (:func:`quick_demo_dir`) and the full demo behind it in a process
of its own (:func:`start_background_build`), which outlives the browser tab.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace, is_workspace, save_json

MODEL_NAMES = ("biased", "balanced")
TRAINING_SPLITS = {"biased": "train", "balanced": "balanced_train"}
FACTORY = "core.demo.model:build_demo_cnn"
COMPLETE_MARKER = "demo.json"
PROGRESS_FILE = "progress.json"
BUILD_LOG = "build.log"
QUICK_PRESET = "quick"
_LOCK_FILE = ".build.lock"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent  # where ``python -m core`` finds the package


def default_demo_dir() -> Path:
    """Where the app keeps its demo: ``$SLICESCOPE_HOME/demo`` (default ~/.cache/slicescope)."""
    home = os.environ.get("SLICESCOPE_HOME") or Path.home() / ".cache" / "slicescope"
    return Path(home).expanduser() / "demo"


def quick_demo_dir() -> Path:
    """Where the app keeps the quick demo it opens on while the full one is built: ``$SLICESCOPE_HOME/demo-quick``."""
    return default_demo_dir().with_name("demo-quick")


def workspace_dir(out: Path, model_name: str) -> Path:
    return Path(out) / ("workspace" if model_name == "biased" else f"workspace-{model_name}")


@dataclass
class DemoResult:
    out: Path
    group_accuracy: pd.DataFrame  # model, group, n, accuracy on the held-out split

    @property
    def workspace(self) -> Path:
        return workspace_dir(self.out, "biased")

    def summary(self) -> str:
        pivot = self.group_accuracy.pivot(index="group", columns="model", values="accuracy")
        return "held-out accuracy per injected group:\n" + pivot.to_string(float_format=lambda v: f"{v:.1%}")


def is_demo_built(out: Path) -> bool:
    return (Path(out) / COMPLETE_MARKER).is_file()


@dataclass(frozen=True)
class BuildProgress:
    """Where a demo build stands, as its builder last recorded it."""

    step: str
    done: int
    total: int
    running: bool  # a builder holds the folder's lock now

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


def build_progress(out: Path) -> BuildProgress | None:
    """The last progress a builder of ``out`` recorded, and whether one is building it now; None before any build."""
    out = Path(out)
    try:
        recorded = json.loads((out / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        recorded = None
    running = _locked(out)
    if recorded is None:
        return BuildProgress("starting", 0, 1, True) if running else None
    return BuildProgress(str(recorded.get("step", "")), int(recorded.get("done", 0)), int(recorded.get("total", 1)), running)


def _locked(out: Path) -> bool:
    try:
        with open(out / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _recording(out: Path, report: ProgressFn) -> ProgressFn:
    """``report`` that also writes the step to ``out/progress.json`` (on a new step, at its end, and at most twice a second)."""
    last = {"step": None, "time": 0.0}

    def record(step: str, done: int, total: int) -> None:
        report(step, done, total)
        now = time.monotonic()
        if step != last["step"] or done >= total or now - last["time"] >= 0.5:
            last.update(step=step, time=now)
            save_json(out / PROGRESS_FILE, {"step": step, "done": done, "total": total})

    return record


def start_background_build(out: Path, preset: str = "full") -> subprocess.Popen:
    """Build the demo in ``out`` with ``python -m core demo`` in a session of its own, its output in ``out/build.log``.

    The process outlives the app that starts it; :func:`build_progress` tells how far it got.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "core", "demo", "--out", str(out), "--preset", preset]
    with open(out / BUILD_LOG, "a") as log:
        return subprocess.Popen(command, cwd=_PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


@contextmanager
def _exclusive(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / _LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_demo(out: str | Path, preset: str = "full", progress: ProgressFn | None = None) -> DemoResult:
    """Build the demo in ``out`` (or finish an interrupted build) and return it."""
    from core.demo.config import PRESETS

    if preset not in PRESETS:
        raise SliceScopeError(f"unknown demo preset '{preset}'", f"use one of: {', '.join(PRESETS)}")
    config = PRESETS[preset]
    out = Path(out).expanduser().resolve()
    with _exclusive(out):
        report = _recording(out, progress or silent)
        marker = out / COMPLETE_MARKER
        if marker.is_file():
            recorded = json.loads(marker.read_text())
            if _built_with(recorded.get("config"), config):
                return DemoResult(out, pd.DataFrame(recorded["group_accuracy"]))
            raise SliceScopeError(f"{out} holds a demo built with other settings", "choose another `out` folder")
        metadata = _build_data(out / "data", config, report)
        models = MODEL_NAMES if config.balanced_model else MODEL_NAMES[:1]
        for name in models:
            _train_model(out, name, metadata, config, report)
        rows = []
        for name in models:
            workspace = _scan_held_out(out, name, report)
            _attach_training_data(out, name, workspace)
            _precompute_views(workspace, report)
            for group, stats in workspace.report.get("group_accuracy", {}).items():
                rows.append({"model": name, "group": group, "n": stats["n"], "accuracy": stats["accuracy"]})
        if config.crowd_images:
            _simulate_crowd(out, config, report)
        group_accuracy = pd.DataFrame(rows)
        group_accuracy.to_csv(out / "models" / "group_accuracy.csv", index=False)
        save_json(marker, {"config": asdict(config), "preset": preset, "group_accuracy": rows})
    return DemoResult(out, group_accuracy)


def _built_with(recorded: dict | None, config) -> bool:
    """Whether the config recorded in ``demo.json`` is ``config``.

    Both are compared as JSON, where tuples are lists. A setting missing from the
    record was added after the demo was built and counts at its default, since
    defaults draw what was drawn before the setting existed.
    """
    if recorded is None:
        return False
    defaults = {field.name: field.default for field in fields(config) if field.default is not MISSING}
    return json.loads(json.dumps({**defaults, **recorded})) == json.loads(json.dumps(asdict(config)))


def _build_data(data_dir: Path, config, report: ProgressFn) -> pd.DataFrame:
    from core.demo.dataset import generate_dataset

    done_marker = data_dir / ".complete"
    if done_marker.is_file():
        return pd.read_csv(data_dir / "metadata.csv", keep_default_na=False)
    metadata = generate_dataset(data_dir, config, progress=report)
    done_marker.write_text("generated\n")
    return metadata


def _train_model(out: Path, name: str, metadata: pd.DataFrame, config, report: ProgressFn) -> None:
    import torch

    from core.demo.train import train_classifier

    checkpoint = out / "models" / f"{name}.pt"
    if checkpoint.is_file():
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    step = f"training the {name} model"

    def epoch_progress(_step: str, done: int, total: int) -> None:
        report(step, done, total)

    model, history = train_classifier(metadata, out / "data", TRAINING_SPLITS[name], config, progress=epoch_progress)
    save_json(out / "models" / f"{name}-history.json", history)
    temporary = checkpoint.with_suffix(".tmp")
    torch.save(model.state_dict(), temporary)
    temporary.replace(checkpoint)


def _scan_held_out(out: Path, name: str, report: ProgressFn) -> Workspace:
    from core.demo.dataset import CLASSES
    from core.extract import ScanConfig, scan
    from core.models import ModelSpec

    target = workspace_dir(out, name)
    if is_workspace(target):
        return Workspace(target)
    spec = ModelSpec(checkpoint=out / "models" / f"{name}.pt", factory=FACTORY, num_classes=len(CLASSES))
    config = ScanConfig(
        data=out / "data" / "metadata.csv", model=spec, out=target, image_size=64, normalize="none",
        classes=CLASSES, split="test", batch_size=128, name=f"demo · {name} model",
    )

    def scan_progress(_step: str, done: int, total: int) -> None:
        report(f"scanning held-out images with the {name} model", done, total)

    return scan(config, progress=scan_progress)


def _simulate_crowd(out: Path, config, report: ProgressFn) -> None:
    """A stratified SmoothGrad campaign of up to 300 held-out images on the biased model, answered by the simulated crowd.

    SmoothGrad averages the library's default 25 noisy copies per image (the paper used 10); the test-sized demo,
    whose model is barely trained, gets 10.
    """
    from core.demo.crowd import ensure_demo_campaign

    ensure_demo_campaign(Workspace(workspace_dir(out, "biased")), n_images=min(config.crowd_images, config.n_test),
                         samples=25 if config.n_test >= 300 else 10,
                         state_path=out / "simulated-crowd-tokens.json", progress=report)


def _attach_training_data(out: Path, name: str, workspace: Workspace) -> None:
    """Record the split the model was trained on, so influence embeddings need no question (cheap: no image is read)."""
    from core.training import attach_training_data, training_data

    if training_data(workspace) is None:
        attach_training_data(workspace, out / "data" / "metadata.csv", TRAINING_SPLITS[name])


def _precompute_views(workspace: Workspace, report: ProgressFn) -> None:
    """Compute the app's default slices and layouts so the app opens without waiting."""
    from core.slicing import default_slice_params, find_slices, project

    for representation in ("attribution", "features"):
        find_slices(workspace, representation, default_slice_params(len(workspace.images)), progress=report)
        project(workspace, representation, progress=report)
