"""Influence embeddings' gradient passes on a Ray cluster (local mode, 2 workers) equal the local ones and are cached alike;
``python -m core influence --ray`` runs end to end; wrong Ray settings are said before the factorisation.

Needs Ray (requirements-ray.txt, which .ci/run installs); skipped without it unless ``SLICESCOPE_REQUIRE_RAY=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import core.influence.embeddings
from core.errors import SliceScopeError
from core.influence import compute_influence, representation_source
from core.workspace import MANIFEST, Workspace, save_manifest
from tests.helpers import REPO_ROOT, SMALL_INFLUENCE, copy_workspace

if os.environ.get("SLICESCOPE_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.data", reason="Ray is an optional extra: pip install -r requirements-ray.txt")

CACHED_KINDS = ("influence_factors", "influence_train", "influence_embeddings")


@pytest.fixture(scope="module")
def local(tiny_demo, tmp_path_factory) -> Workspace:
    """The tiny demo's workspace with its training data and influence embeddings computed here, the reference."""
    workspace = copy_workspace(tiny_demo, tmp_path_factory.mktemp("influence-local"), attach=True)
    compute_influence(workspace)
    return workspace


def with_the_factors_only(workspace: Workspace, target: Path) -> Path:
    """A copy of ``workspace`` whose influence cache holds the Hessian's factors but not the passes: as a run stopped after the
    factorisation leaves it (and the passes are all that a Ray run does differently)."""
    shutil.copytree(workspace.path, target)
    for path in (target / "derived").glob("influence_*"):
        if not path.name.startswith("influence_factors"):
            path.unlink()
    return target


def cached_files(workspace: Workspace) -> list[str]:
    return sorted(path.name for path in (workspace.path / "derived").glob("influence_*"))


def assert_same_embeddings(local: Workspace, distributed: Workspace) -> None:
    """Equal arrays under equal cache keys: how the embeddings were computed does not show."""
    assert cached_files(distributed) == cached_files(local)
    for kind in CACHED_KINDS:
        expected, found = (np.load(workspace.derived_path(kind, representation_source(workspace), ".npy")) for workspace in (local, distributed))
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6, err_msg=kind)  # NaN rows (unreadable images) must match too


def test_ray_settings_are_refused_before_the_factorisation(tiny_demo, tmp_path):
    # Before any test of this module starts its cluster: a process joined to one refuses other addresses differently.
    workspace = copy_workspace(tiny_demo, tmp_path, attach=True)
    with pytest.raises(SliceScopeError, match=r"^`ray_workers` = 0 — set `ray_workers` to 1 or more$"):
        compute_influence(workspace, ray="local", ray_workers=0)
    with pytest.raises(SliceScopeError, match=r"^no Ray cluster answers at 127\.0\.0\.1:9 — start one there"):
        compute_influence(workspace, ray="127.0.0.1:9")
    assert cached_files(workspace) == []


def test_ray_passes_equal_the_local_ones_and_are_cached_alike(ray_local, local, tiny_demo, tmp_path, monkeypatch):
    distributed = copy_workspace(tiny_demo, tmp_path, attach=True)
    monkeypatch.setattr(core.influence.embeddings, "_RAY_BLOCK", 32)  # several blocks per pass, for both workers
    progress = []
    embeddings, training = compute_influence(distributed, progress=lambda step, done, total: progress.append((step, done, total)), ray="local")
    assert embeddings.shape == (len(distributed.images), SMALL_INFLUENCE.embedding_dim) and len(training) == 96
    assert_same_embeddings(local, distributed)
    for step, total in (("influence: gradients of the training images", 96), ("influence: gradients of the workspace images", len(embeddings))):
        counts = [done for name, done, _ in progress if name == step]
        assert counts[0] == 0 and counts[-1] == total and len(counts) == 1 + -(-total // 32)  # one report per block


class Stopped(Exception):
    """The driver stopped mid-run."""


def test_a_ray_run_stopped_after_the_training_pass_keeps_it(ray_local, local, tmp_path):
    target = with_the_factors_only(local, tmp_path / "ws")
    training_step = "influence: gradients of the training images"

    def stop_when_training_is_done(step: str, done: int, total: int) -> None:
        if step == training_step and done == total:
            raise Stopped

    with pytest.raises(Stopped):
        compute_influence(Workspace(target), progress=stop_when_training_is_done, ray="local")
    assert any(name.startswith("influence_train") for name in cached_files(Workspace(target)))
    progress = []
    compute_influence(Workspace(target), progress=lambda step, done, total: progress.append(step), ray="local")
    assert training_step not in progress  # only what was missing is computed (the workspace pass, unless it had finished first)
    assert_same_embeddings(local, Workspace(target))


def test_an_unreadable_workspace_image_is_one_line_on_ray_too(ray_local, local, tmp_path):
    target = with_the_factors_only(local, tmp_path / "ws")
    data = shutil.copytree(local.data_root, tmp_path / "data")  # the demo's own data is shared by the session's tests
    manifest = tomllib.loads((target / MANIFEST).read_text())
    manifest["dataset"]["root"] = str(data)
    save_manifest(target / MANIFEST, manifest)
    workspace = Workspace(target)
    broken = workspace.image_path(workspace.images["path"].iloc[-1])
    broken.write_bytes(b"not an image")
    with pytest.raises(SliceScopeError, match=rf"^the workspace image {re.escape(str(broken))} can no longer be read — restore the dataset"):
        compute_influence(workspace, ray="local")


def test_cli_influence_on_ray_after_an_interrupted_run(local, tmp_path):
    """The factorisation cached, the passes not: the command computes the passes on Ray."""
    target = with_the_factors_only(local, tmp_path / "ws")
    result = subprocess.run([sys.executable, "-m", "core", "influence", str(target), "--ray", "local", "--ray-workers", "2"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"influence embeddings of 96 training and {len(local.images)} workspace images, D = 20: computed in ")
    assert summary.endswith(f" s on Ray (local, 2 workers), in {target / 'derived'}")
    assert "influence: gradients of the workspace images" in result.stderr  # the progress bars
    for chatter in ("Starting execution", "Running Dataset", "Progress bars disabled", "execution finished"):
        assert chatter not in result.stderr  # Ray Data's own progress lines would repeat ours
    assert_same_embeddings(local, Workspace(target))
