"""The command line, end to end, as a user runs it (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.extract import scan
from core.store import AnnotationStore
from core.workspace import Workspace
from tests.helpers import small_scan_config

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_demo_then_slices(tmp_path):
    demo = run_cli("demo", "--out", str(tmp_path / "demo"), "--preset", "tiny")
    assert demo.returncode == 0, demo.stderr
    data = tmp_path / "demo" / "data"
    metadata = pd.read_csv(data / "metadata.csv")
    assert {"path", "split", "label", "colour", "background", "watermark", "label_flipped", "group"} <= set(metadata.columns)
    assert (tmp_path / "demo" / "models" / "biased.pt").is_file() and (tmp_path / "demo" / "models" / "balanced.pt").is_file()
    workspace = Workspace(tmp_path / "demo" / "workspace")
    assert len(workspace.images) == (metadata["split"] == "test").sum()

    for method in ("attribution", "features"):
        out = tmp_path / f"slices-{method}.csv"
        result = run_cli("slices", str(workspace.path), "--method", method, "--k", "5", "--out", str(out))
        assert result.returncode == 0, result.stderr
        slices = pd.read_csv(out)
        assert list(slices.columns) == ["path", "label", "prediction", "confidence", "slice", "flagged", "slice_accuracy", "rest_accuracy",
                                       "slice_accuracy_low", "slice_accuracy_high", "q_value", "slice_description", "slice_metadata", "x", "y"]
        assert len(slices) == len(workspace.images)
        assert set(slices["slice"]) == set(range(5))
        assert slices["confidence"].between(0, 1).all()
        assert set(slices["path"]) == set(workspace.images["path"])
        assert "slices flagged as problems" in result.stdout

    default = run_cli("slices", str(workspace.path), "--k", "8", "--out", str(tmp_path / "default.csv"))
    assert default.returncode == 0, default.stderr
    slices = pd.read_csv(tmp_path / "default.csv")
    assert {"slice", "flagged", "slice_accuracy", "q_value", "slice_description", "slice_metadata"} <= set(slices.columns)
    # Only flagged slices are named by the demo's metadata columns (colour, background, group ...).
    assert slices.loc[~slices["flagged"], "slice_metadata"].isna().all()
    # The default is the error-aware mixture, which picks its own number of slices by BIC (at most --k).
    assert 2 <= slices["slice"].nunique() <= 8


def test_scan_cli_on_a_manifest_split_reproduces_the_demo_workspace(tiny_demo, tmp_path):
    out = tmp_path / "ws"
    result = run_cli(
        "scan", "--data", str(tiny_demo / "data" / "metadata.csv"), "--split", "test",
        "--model", str(tiny_demo / "models" / "biased.pt"), "--factory", "core.demo.model:build_demo_cnn",
        "--num-classes", "4", "--classes", "circle,square,triangle,star",
        "--image-size", "64", "--normalize", "none", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "workspace ready" in result.stdout
    ours, demo = Workspace(out), Workspace(tiny_demo / "workspace")
    pd.testing.assert_series_equal(ours.images["prediction"], demo.images["prediction"])
    np.testing.assert_allclose(ours.array("attribution_features"), demo.array("attribution_features"), rtol=1e-4, atol=1e-5)


def test_scan_cli_accepts_torchscript(tiny_demo, tmp_path):
    from core.demo.model import build_demo_cnn

    model = build_demo_cnn()
    model.load_state_dict(torch.load(tiny_demo / "models" / "biased.pt", weights_only=True))
    torch.jit.save(torch.jit.script(model.eval()), str(tmp_path / "biased.ts"))
    result = run_cli(
        "scan", "--data", str(tiny_demo / "data" / "metadata.csv"), "--split", "test", "--model", str(tmp_path / "biased.ts"),
        "--classes", "circle,square,triangle,star", "--image-size", "64", "--normalize", "none", "--out", str(tmp_path / "ws"),
    )
    assert result.returncode == 0, result.stderr
    demo = Workspace(tiny_demo / "workspace")
    np.testing.assert_allclose(Workspace(tmp_path / "ws").array("gradcam"), demo.array("gradcam"), atol=2e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "resnet18", "--num-classes", "3"], "does not fit resnet18"),
        (["--arch", "resnet18"], "needs --num-classes"),
        ([], "is a state_dict, not a TorchScript model — pass --arch and --num-classes (torchvision) or a --factory"),
    ],
)
def test_scan_cli_errors_are_one_line_without_traceback(image_folder, small_net_checkpoint, tmp_path, args, message):
    result = run_cli("scan", "--data", str(image_folder), "--model", str(small_net_checkpoint), *args, "--out", str(tmp_path / "ws"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line and "warnings.warn" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_library_errors_name_parameters_and_the_cli_says_flags():
    from core.cli import build_parser, in_flags, parameter_flags
    from core.errors import SliceScopeError
    from core.slicing import SliceParams

    with pytest.raises(SliceScopeError) as raised:
        SliceParams(k=0)
    assert "set `k` to 1 or more" in str(raised.value)  # what a notebook and the app show
    flags = parameter_flags(build_parser())
    assert in_flags(str(raised.value), flags).endswith("set --k to 1 or more (50 is the paper's choice)")
    # Names differ where the flag is shorter than the parameter; a parameter without a flag keeps its name.
    assert in_flags("`checkpoint` `learning_rate` `max_accuracy` `source` `noise_region` `damping`", flags) == "--model --lr --accuracy --from --noise-region `damping`"


def test_annotate_list_clear_and_undo(image_folder, small_net_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    ws = str(workspace.path)
    # 18 images: the default k is 2, so the slicing is attribution:domino:k=2:seed=0 and slices are 0 and 1.
    marked = run_cli("annotate", ws, "--slice", "1", "--kind", "spurious", "--note", "<b>sky</b>'; --", "--analyst", "alice")
    assert marked.returncode == 0, marked.stderr
    assert marked.stdout.strip() == "slice 1 (attribution:domino:k=2:seed=0) marked spurious by alice: <b>sky</b>'; --"
    assert run_cli("annotate", ws, "--slice", "0", "--kind", "core", "--analyst", "bob").returncode == 0

    listed = run_cli("annotate", ws, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "2 annotated slices" in listed.stdout and f"sqlite:///{workspace.path / 'annotations.sqlite'}" in listed.stdout
    assert "slice 0: core (bob," in listed.stdout and "slice 1: spurious — <b>sky</b>'; -- (alice," in listed.stdout

    undone = run_cli("annotate", ws, "--undo", "--analyst", "bob")
    assert undone.returncode == 0 and undone.stdout.strip() == "undid marking slice 0 as core", undone.stderr
    cleared = run_cli("annotate", ws, "--slice", "1", "--clear", "--analyst", "bob")
    assert cleared.returncode == 0, cleared.stderr
    store = AnnotationStore.for_workspace(workspace.path)
    assert store.slice_annotations(workspace.fingerprint, "attribution:domino:k=2:seed=0") == {}
    assert list(store.history(workspace.fingerprint)["action"]) == ["clear", "undo", "set", "set"]
    store.close()


@pytest.mark.parametrize("args, database, message", [
    (["--slice", "2", "--kind", "core"], None, "slice 2 does not exist: attribution:domino:k=2:seed=0 has slices 0 to 1"),
    (["--slice", "0"], None, "annotate needs the kind of slice"),
    (["--slice", "0", "--clear"], None, "slice 0 has no annotation to clear"),
    (["--list"], "postgresql://alice:s3cret@127.0.0.1:1/db", "annotation database at postgresql+psycopg://alice:***@127.0.0.1:1/db cannot be used"),
])
def test_annotate_errors_are_one_line(image_folder, small_net_checkpoint, tmp_path, monkeypatch, args, database, message):
    if database:
        monkeypatch.setenv("SLICESCOPE_DATABASE_URL", database)
    else:
        monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    result = run_cli("annotate", str(workspace.path), *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ") and message in result.stderr


def test_help_is_quick_and_every_option_says_what_it_does():
    from core.cli import build_parser

    # --help must not wait for torch (seconds): the parser is built from torch-free modules.
    probe = "import sys; from core.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    silent = [f"{name} {action.dest}" for name, command in commands.items() for action in command._actions
              if action.dest != "help" and not action.help]
    assert silent == []


def test_mitigate_needs_slices_from_somewhere(tiny_demo, tmp_path):
    result = run_cli("mitigate", str(tiny_demo / "workspace"), "--out", str(tmp_path / "v2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: CoRM needs the slices to treat — pass --from annotations, --from propagation, or --slices 1,2,3")
