"""The built-in demo: a generated benchmark with known failure modes, end to end.

``build_demo(out)`` makes, in stages that each resume if interrupted:

1. ``out/data``: procedurally drawn objects with injected problems and their
   ground truth (``metadata.csv``, masks), see :mod:`core.demo.dataset`;
2. ``out/models``: two small CNNs, ``biased`` (trained on the biased split) and
   ``balanced`` (trained with the problem groups balanced);
3. ``out/workspace`` (the biased model) and ``out/workspace-balanced``: scans of
   the held-out split, with the default slices and layouts precomputed and
   the model's training split attached (for influence embeddings);
4. one finished crowd campaign on the biased workspace, answered by the
   *simulated* crowd (:mod:`core.crowd_sim`), named "Simulated crowd (demo)".

A file lock makes concurrent builders (two browser tabs, the CLI and the app)
wait for one another instead of racing.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace, is_workspace, save_json

MODEL_NAMES = ("biased", "balanced")
TRAINING_SPLITS = {"biased": "train", "balanced": "balanced_train"}
FACTORY = "core.demo.model:build_demo_cnn"
COMPLETE_MARKER = "demo.json"


def default_demo_dir() -> Path:
    """Where the app keeps its demo: ``$SLICESCOPE_HOME/demo`` (default ~/.cache/slicescope)."""
    home = os.environ.get("SLICESCOPE_HOME") or Path.home() / ".cache" / "slicescope"
    return Path(home).expanduser() / "demo"


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


@contextmanager
def _exclusive(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
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
    report = progress or silent
    with _exclusive(out):
        marker = out / COMPLETE_MARKER
        if marker.is_file():
            recorded = json.loads(marker.read_text())
            if recorded.get("config") == asdict(config):
                return DemoResult(out, pd.DataFrame(recorded["group_accuracy"]))
            raise SliceScopeError(f"{out} holds a demo built with other settings", "choose another --out folder")
        metadata = _build_data(out / "data", config, report)
        for name in MODEL_NAMES:
            _train_model(out, name, metadata, config, report)
        rows = []
        for name in MODEL_NAMES:
            workspace = _scan_held_out(out, name, report)
            _attach_training_data(out, name, workspace)
            _precompute_views(workspace, report)
            for group, stats in workspace.report.get("group_accuracy", {}).items():
                rows.append({"model": name, "group": group, "n": stats["n"], "accuracy": stats["accuracy"]})
        _simulate_crowd(out, config, report)
        group_accuracy = pd.DataFrame(rows)
        group_accuracy.to_csv(out / "models" / "group_accuracy.csv", index=False)
        save_json(marker, {"config": asdict(config), "preset": preset, "group_accuracy": rows})
    return DemoResult(out, group_accuracy)


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
    from core.crowd_sim import ensure_demo_campaign

    ensure_demo_campaign(Workspace(workspace_dir(out, "biased")), n_images=min(300, config.n_test), samples=25 if config.n_test >= 300 else 10,
                         state_path=out / "simulated-crowd-tokens.json", progress=report)


def _attach_training_data(out: Path, name: str, workspace: Workspace) -> None:
    """Record the split the model was trained on, so influence embeddings need no question (cheap: no image is read)."""
    from core.influence import attach_training_data, training_data

    if training_data(workspace) is None:
        attach_training_data(workspace, out / "data" / "metadata.csv", TRAINING_SPLITS[name])


def _precompute_views(workspace: Workspace, report: ProgressFn) -> None:
    """Compute the app's default slices and layouts so the app opens without waiting."""
    from core.slicing import default_slice_params, find_slices, project

    for representation in ("attribution", "features"):
        find_slices(workspace, representation, default_slice_params(len(workspace.images)), progress=report)
        project(workspace, representation, progress=report)
