"""Workspace status (ready, missing, half-built, outdated, damaged) and rebuilding from recorded inputs."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import tomli_w

from core.errors import SliceScopeError
from core.extract import ScanConfig, rebuild_workspace, scan
from core.workspace import MANIFEST, SCAN_STATE, Workspace, is_workspace, looks_like_workspace, workspace_status
from tests.helpers import small_scan_config


def interrupt_after_first_chunk(step: str, done: int, total: int) -> None:
    if done >= 8:
        raise KeyboardInterrupt


def interrupted_scan(config: ScanConfig) -> Path:
    with pytest.raises(KeyboardInterrupt):
        scan(config, progress=interrupt_after_first_chunk)
    return config.out


def rewrite_manifest(workspace: Path, **changes) -> None:
    manifest = tomllib.loads((workspace / MANIFEST).read_text())
    (workspace / MANIFEST).write_text(tomli_w.dumps({**manifest, **changes}))


@pytest.fixture
def ready_workspace(image_folder, small_net_checkpoint, tmp_path) -> Workspace:
    return scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))


def test_scan_records_its_inputs_in_the_manifest(ready_workspace, image_folder, small_net_checkpoint):
    status = workspace_status(ready_workspace.path)
    assert (status.state, status.can_rebuild) == ("ready", True)
    recorded = ready_workspace.manifest["scan"]
    assert recorded["data"] == str(image_folder.resolve())
    assert recorded["model"]["checkpoint"] == str(small_net_checkpoint.resolve())
    assert not {"out", "overwrite", "workers", "target_layer", "classes"} & set(recorded)  # run options and Nones
    config = small_scan_config(image_folder, small_net_checkpoint, ready_workspace.path)
    assert ScanConfig.from_dict(recorded, ready_workspace.path, workers=0) == config


def test_missing_folder(tmp_path):
    status = workspace_status(tmp_path / "nowhere")
    assert (status.state, status.can_rebuild) == ("missing", False)
    assert str(tmp_path / "nowhere") in status.message and "python -m core scan" in status.message
    assert not looks_like_workspace(tmp_path / "nowhere")


def test_interrupted_scan_is_half_built_and_resumes_to_an_uninterrupted_result(image_folder, small_net_checkpoint, tmp_path):
    out = interrupted_scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    status = workspace_status(out)
    assert (status.state, status.can_rebuild) == ("half-built", True)
    assert status.message == "This workspace's scan was interrupted at 1 of 3 chunks — resume it to finish."
    assert looks_like_workspace(out) and not is_workspace(out)

    resumed_from = []
    resumed = rebuild_workspace(out, progress=lambda step, done, total: resumed_from.append(done))
    assert resumed_from[0] == 8, "the finished chunk was not reused"
    assert workspace_status(out).state == "ready"
    fresh = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "fresh"))
    pd.testing.assert_frame_equal(resumed.images, fresh.images)


def test_interrupted_scan_without_recorded_inputs_says_how_to_resume(image_folder, small_net_checkpoint, tmp_path):
    out = interrupted_scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    (out / SCAN_STATE).write_text(json.dumps({"fingerprint": "from an older SliceScope"}))
    status = workspace_status(out)
    assert (status.state, status.can_rebuild) == ("half-built", False)
    assert "re-run the same python -m core scan command" in status.message


def test_older_format_is_outdated_and_rebuilds(ready_workspace):
    rewrite_manifest(ready_workspace.path, format_version=0)
    status = workspace_status(ready_workspace.path)
    assert (status.state, status.can_rebuild) == ("outdated", True)
    assert status.message == "This workspace was written by SliceScope format 0; this version reads format 1 — rebuild it."
    rebuilt = rebuild_workspace(ready_workspace.path)
    assert rebuilt.manifest["format_version"] == 1
    assert workspace_status(ready_workspace.path).state == "ready"
    pd.testing.assert_frame_equal(rebuilt.images, ready_workspace.images)


def test_unreadable_manifest_is_damaged_and_cannot_be_rebuilt(ready_workspace):
    (ready_workspace.path / MANIFEST).write_text("format_version = [[[ garbage")
    status = workspace_status(ready_workspace.path)
    assert (status.state, status.can_rebuild) == ("damaged", False)
    assert f"--out {ready_workspace.path} --overwrite" in status.message
    with pytest.raises(SliceScopeError, match="has no record of how it was built"):
        rebuild_workspace(ready_workspace.path)


def test_missing_array_is_damaged_and_rebuilds(ready_workspace):
    (ready_workspace.path / "arrays" / "gradcam.npy").unlink()
    status = workspace_status(ready_workspace.path)
    assert (status.state, status.can_rebuild) == ("damaged", True)
    assert status.message == "This workspace is damaged: arrays/gradcam.npy is missing — rebuild it."
    assert rebuild_workspace(ready_workspace.path).array("gradcam").shape[0] == len(ready_workspace.images)


def test_rebuild_names_the_recorded_path_that_is_gone(image_folder, small_net_checkpoint, tmp_path):
    out = interrupted_scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    shutil.rmtree(image_folder)
    with pytest.raises(SliceScopeError, match=re.escape(f"dataset this workspace was built from no longer exists: {image_folder.resolve()}")):
        rebuild_workspace(out)
    small_net_checkpoint.unlink()
    image_folder.mkdir()
    with pytest.raises(SliceScopeError, match=re.escape(f"no longer exists: {small_net_checkpoint.resolve()}")):
        rebuild_workspace(out)
