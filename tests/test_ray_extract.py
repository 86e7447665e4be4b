"""Extraction on a Ray cluster (local mode, 2 workers) gives the workspace the local path gives, array by array, and resumes,
after the driver stops and after a worker process dies.

Needs Ray (requirements-ray.txt, which .ci/run installs); skipped without it unless ``SLICESCOPE_REQUIRE_RAY=1``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

import core.extract
from core.distributed import connect
from core.errors import SliceScopeError
from core.extract import scan
from core.workspace import ARRAY_NAMES, MANIFEST, Workspace, workspace_status
from tests.helpers import die_after_the_first_chunk, small_scan_config, train_small_net, write_chunks_then_die_once, write_image_folder

if os.environ.get("SLICESCOPE_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.data", reason="Ray is an optional extra: pip install -r requirements-ray.txt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-scan")
    data = write_image_folder(root / "images", per_class=10)
    return root, data, train_small_net(data, root / "model.pt")


@pytest.fixture(scope="module")
def local(inputs) -> Workspace:
    """The local scan every Ray scan is compared with."""
    root, data, checkpoint = inputs
    return scan(small_scan_config(data, checkpoint, root / "local"))


def ray_scan_config(inputs, name: str):
    root, data, checkpoint = inputs
    return replace(small_scan_config(data, checkpoint, root / name), ray="local", ray_workers=2)


def assert_same_workspace(local: Workspace, distributed: Workspace) -> None:
    assert local.fingerprint == distributed.fingerprint
    assert local.images.equals(distributed.images)
    for name in ARRAY_NAMES:
        np.testing.assert_allclose(np.asarray(local.array(name), dtype=np.float64), np.asarray(distributed.array(name), dtype=np.float64),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_an_address_nobody_answers_at_is_one_line(inputs, tmp_path):
    _, data, checkpoint = inputs
    config = replace(small_scan_config(data, checkpoint, tmp_path / "nowhere"), ray="127.0.0.1:9", ray_workers=2)
    with pytest.raises(SliceScopeError, match=r"^no Ray cluster answers at 127\.0\.0\.1:9 — start one there"):
        scan(config)


def test_a_process_joined_to_one_cluster_refuses_another_address(ray_local, inputs, tmp_path):
    joined = ray_local.get_runtime_context().gcs_address
    _, data, checkpoint = inputs
    config = replace(small_scan_config(data, checkpoint, tmp_path / "elsewhere"), ray="127.0.0.1:9", ray_workers=2)
    with pytest.raises(SliceScopeError, match=rf"^this process is already connected to the Ray cluster at {joined}, not 127\.0\.0\.1:9 — set `ray` to {joined}"):
        scan(config)
    assert not (tmp_path / "elsewhere" / MANIFEST).exists()
    connect(ray_local, joined, 2)  # the cluster's own address, like `local` and `auto`, is the connection already made


def test_a_ray_scan_equals_the_local_scan_array_by_array(ray_local, inputs, local):
    progress = []
    distributed = scan(ray_scan_config(inputs, "ray"), progress=lambda step, done, total: progress.append((done, total)))
    assert_same_workspace(local, distributed)
    assert progress[-1][0] == progress[-1][1] == len(local.images)
    assert "ray" not in distributed.manifest.get("scan", {})  # how it ran is not what it is


class Stopped(Exception):
    """The driver dying mid-scan."""


def test_an_interrupted_ray_scan_resumes_from_its_whole_chunks(ray_local, inputs, local):
    config = ray_scan_config(inputs, "resumed")

    def stop_after_a_chunk(step: str, done: int, total: int) -> None:
        if 0 < done < total:
            raise Stopped

    with pytest.raises(Stopped):
        scan(config, progress=stop_after_a_chunk)
    written = sorted(path.name for path in config.out.glob("**/chunks/chunk-*.npz"))
    assert written and not list(config.out.glob("**/chunks/.*"))  # whole chunk files only
    assert_same_workspace(local, scan(config))


def test_a_worker_killed_mid_scan_is_restarted_and_its_chunk_retried(ray_local, inputs, local, monkeypatch):
    sentinel = inputs[0] / "worker-killed"
    monkeypatch.setattr(core.extract, "_extract_whole_chunks", partial(write_chunks_then_die_once, sentinel))
    distributed = scan(ray_scan_config(inputs, "killed"))
    assert sentinel.is_file(), "no worker died"
    assert_same_workspace(local, distributed)


def test_a_worker_that_keeps_dying_ends_the_scan_in_one_line_and_the_rerun_resumes(ray_local, inputs, local, monkeypatch):
    config = replace(ray_scan_config(inputs, "dying"), ray_workers=1)  # one worker to restart: half the deaths to wait for
    monkeypatch.setattr(core.extract, "_extract_whole_chunks", die_after_the_first_chunk)
    with pytest.raises(SliceScopeError, match=r"^a Ray worker died again after Ray restarted it 3 times .* run the same command again") as error:
        scan(config)
    assert "\n" not in str(error.value)
    assert (config.out / "chunks" / "chunk-00000.npz").is_file() and not (config.out / MANIFEST).exists()
    assert workspace_status(config.out).state != "ready"  # never a half-written workspace that looks complete
    monkeypatch.undo()
    assert_same_workspace(local, scan(config))
