"""Extraction on a Ray cluster (local mode, 2 workers) gives the workspace the local path gives, array by array, and resumes.

Needs Ray (requirements-ray.txt, which .ci/run installs); skipped without it unless ``SLICESCOPE_REQUIRE_RAY=1``.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace

import numpy as np
import pytest

from core.errors import SliceScopeError
from core.extract import scan
from core.workspace import ARRAY_NAMES, Workspace
from tests.helpers import small_scan_config, train_small_net, write_image_folder

if os.environ.get("SLICESCOPE_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.data", reason="Ray is an optional extra: pip install -r requirements-ray.txt")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from core.distributed import connect

    connect(ray, "local", 2)
    yield ray
    gc.collect()  # no Ray Data iterator of these tests outlives the cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-scan")
    data = write_image_folder(root / "images", per_class=10)
    return root, data, train_small_net(data, root / "model.pt")


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


def test_a_ray_scan_equals_the_local_scan_array_by_array(ray_local, inputs):
    root, data, checkpoint = inputs
    local = scan(small_scan_config(data, checkpoint, root / "local"))
    config = replace(small_scan_config(data, checkpoint, root / "ray"), ray="local", ray_workers=2)
    progress = []
    distributed = scan(config, progress=lambda step, done, total: progress.append((done, total)))
    assert_same_workspace(local, distributed)
    assert progress[-1][0] == progress[-1][1] == len(local.images)
    assert "ray" not in distributed.manifest.get("scan", {})  # how it ran is not what it is


class Stopped(Exception):
    """The driver dying mid-scan."""


def test_an_interrupted_ray_scan_resumes_from_its_whole_chunks(ray_local, inputs):
    root, data, checkpoint = inputs
    local = Workspace(root / "local") if (root / "local").exists() else scan(small_scan_config(data, checkpoint, root / "local"))
    config = replace(small_scan_config(data, checkpoint, root / "resumed"), ray="local", ray_workers=2)

    def stop_after_a_chunk(step: str, done: int, total: int) -> None:
        if 0 < done < total:
            raise Stopped

    with pytest.raises(Stopped):
        scan(config, progress=stop_after_a_chunk)
    written = sorted(path.name for path in (root / "resumed").glob("**/chunks/chunk-*.npz"))
    assert written and not list((root / "resumed").glob("**/chunks/.*"))  # whole chunk files only
    assert_same_workspace(local, scan(config))
