"""One-pass extraction: correctness against captum, resume, bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from captum.attr import LayerGradCam

from core.errors import SliceScopeError
from core.extract import attribute_batch, scan
from core.models import AttributionModel
from core.workspace import Workspace
from tests.helpers import CLASS_COLOURS, build_small_net, small_scan_config


def test_attribution_matches_captum_gradcam_and_definitions():
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=5).eval()
    images = torch.randn(6, 3, 64, 64)
    model = AttributionModel(net, image_size=64)
    assert model.target_layer == "layer4"
    result = attribute_batch(model, images)

    with torch.no_grad():
        expected_logits = net(images)
    torch.testing.assert_close(result.logits, expected_logits, rtol=1e-4, atol=1e-4)
    predicted = expected_logits.argmax(1)

    captum_maps = LayerGradCam(net, net.layer4).attribute(images, target=predicted, relu_attributions=True)[:, 0]
    peak = captum_maps.amax(dim=(1, 2), keepdim=True)
    captum_maps = torch.where(peak > 0, captum_maps / peak, torch.zeros_like(captum_maps))
    torch.testing.assert_close(result.gradcam, captum_maps.detach(), rtol=1e-4, atol=1e-5)

    activation = {}
    net.layer4.register_forward_hook(lambda _m, _i, out: activation.setdefault("a", out.detach()))
    with torch.no_grad():
        net(images)
    a = activation["a"]
    torch.testing.assert_close(result.features, a.mean(dim=(2, 3)))
    w = result.gradcam
    for i in range(len(images)):
        if w[i].sum() > 0:
            manual = (a[i] * w[i]).sum(dim=(1, 2)) / w[i].sum()
        else:
            manual = a[i].mean(dim=(1, 2))
        torch.testing.assert_close(result.attribution_features[i], manual, rtol=1e-4, atol=1e-5)


def test_backbone_records_no_autograd_graph():
    model = AttributionModel(build_small_net().eval(), image_size=32)
    assert model.target_layer == "features"
    logits, activation = model.forward_with_activation(torch.randn(2, 3, 32, 32))
    assert activation.is_leaf and activation.requires_grad
    nodes, frontier = [], [logits.grad_fn]
    while frontier:
        node = frontier.pop()
        if node is not None:
            nodes.append(node)
            frontier.extend(next_node for next_node, _ in node.next_functions)
    names = {type(node).__name__ for node in nodes}
    # Only the head (pooling, linear) is recorded: no convolution of the trunk.
    assert not any("Convolution" in name for name in names), names
    leaves = [node.variable for node in nodes if type(node).__name__ == "AccumulateGrad"]
    assert len(leaves) == 1 and leaves[0] is activation


def test_empty_attribution_falls_back_to_plain_features():
    net = build_small_net()
    with torch.no_grad():
        net.classifier.weight.zero_()  # every class score ignores the features: zero gradient
    model = AttributionModel(net.eval(), image_size=32)
    result = attribute_batch(model, torch.rand(3, 3, 32, 32))
    assert torch.count_nonzero(result.gradcam) == 0
    torch.testing.assert_close(result.attribution_features, result.features)


def test_scan_builds_workspace_with_all_arrays(image_folder, small_net_checkpoint, tmp_path):
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    images = workspace.images
    n = len(CLASS_COLOURS) * 6
    assert len(images) == n
    assert images["image_id"].is_unique
    assert list(workspace.classes) == sorted(CLASS_COLOURS)
    assert workspace.array("logits").shape == (n, 3)
    assert workspace.array("features").shape == (n, 16)
    assert workspace.array("attribution_features").shape == (n, 16)
    assert workspace.array("gradcam").shape == (n, 16, 16)
    np.testing.assert_array_equal(images["prediction_index"], np.asarray(workspace.array("logits")).argmax(1))
    assert workspace.manifest["transforms"]["image_size"] == 32
    assert workspace.manifest["model"]["target_layer"] == "features"
    assert not (workspace.path / "chunks").exists()
    # A re-run with the same inputs reuses the workspace instead of recomputing it.
    assert scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws")).fingerprint == workspace.fingerprint


def test_interrupted_scan_resumes_from_finished_chunks(image_folder, small_net_checkpoint, tmp_path):
    out = tmp_path / "ws"
    calls = []

    def crash_after_first_chunk(step, done, total):
        calls.append(done)
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(small_scan_config(image_folder, small_net_checkpoint, out), progress=crash_after_first_chunk)
    first_chunk = out / "chunks" / "chunk-00000.npz"
    assert first_chunk.is_file() and not (out / "workspace.toml").exists()
    written_at = first_chunk.stat().st_mtime_ns

    resumed_from = []
    resumed = scan(small_scan_config(image_folder, small_net_checkpoint, out), progress=lambda s, d, t: resumed_from.append(d))
    assert resumed_from[0] == 8, "the finished chunk was not reused"
    fresh = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "fresh"))
    np.testing.assert_allclose(resumed.array("attribution_features"), fresh.array("attribution_features"), rtol=1e-5)
    pd.testing.assert_frame_equal(resumed.images, fresh.images)
    assert written_at  # the chunk existed before the resume; it is merged and removed after
    assert not first_chunk.exists()


def test_a_scan_the_disk_cannot_hold_is_refused_before_it_starts(image_folder, small_net_checkpoint, tmp_path, monkeypatch):
    import shutil

    import core.extract

    out = tmp_path / "ws"
    nearly_full = shutil.disk_usage(tmp_path)._replace(free=10_000)
    monkeypatch.setattr(core.extract.shutil, "disk_usage", lambda _path: nearly_full)
    with pytest.raises(SliceScopeError, match=r"^the scan needs about [\d.]+ MB on the disk holding .*, which has 0\.0 MB free — "
                                              r"free space there or choose an `out` folder on a larger disk$"):
        scan(small_scan_config(image_folder, small_net_checkpoint, out))
    assert not list(out.glob("chunks/*.npz")) and not (out / "workspace.toml").exists()


def test_a_disk_that_fills_up_mid_scan_is_one_line_and_the_scan_resumes(image_folder, small_net_checkpoint, tmp_path, monkeypatch):
    import errno

    import core.extract

    out = tmp_path / "ws"
    savez = np.savez
    writes = []

    def fills_up_after_one_chunk(target, **arrays):
        writes.append(target)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        savez(target, **arrays)

    monkeypatch.setattr(core.extract.np, "savez", fills_up_after_one_chunk)
    with pytest.raises(SliceScopeError, match=r"^the disk holding .* filled up during the scan — free space there and run the same scan again"):
        scan(small_scan_config(image_folder, small_net_checkpoint, out))
    assert [path.name for path in out.glob("chunks/*.npz")] == ["chunk-00000.npz"]  # whole files only, no temporary left
    assert not (out / "workspace.toml").exists()

    monkeypatch.setattr(core.extract.np, "savez", savez)
    resumed_from = []
    resumed = scan(small_scan_config(image_folder, small_net_checkpoint, out), progress=lambda s, d, t: resumed_from.append(d))
    assert resumed_from[0] == 8
    fresh = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "fresh"))
    np.testing.assert_allclose(resumed.array("attribution_features"), fresh.array("attribution_features"), rtol=1e-5)


def test_corrupt_files_are_skipped_and_reported(image_folder, small_net_checkpoint, tmp_path):
    (image_folder / "apple" / "broken.png").write_bytes(b"\x89PNG not really")
    (image_folder / "leaf" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(40))
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    skipped = {entry["path"]: entry["reason"] for entry in workspace.report["skipped"]}
    assert set(skipped) == {"apple/broken.png", "leaf/truncated.jpg"}
    assert all("image" in reason for reason in skipped.values())
    assert len(workspace.images) == 18
    assert "apple/broken.png" not in set(workspace.images["path"])


def test_zero_readable_images_is_one_line_error(tmp_path, small_net_checkpoint):
    for name in CLASS_COLOURS:
        (tmp_path / "bad" / name).mkdir(parents=True)
        (tmp_path / "bad" / name / "x.png").write_bytes(b"nothing here")
    with pytest.raises(SliceScopeError, match="none of the 3 images could be read") as raised:
        scan(small_scan_config(tmp_path / "bad", small_net_checkpoint, tmp_path / "ws"))
    assert "\n" not in str(raised.value)


def test_empty_class_folder_is_refused(image_folder, small_net_checkpoint, tmp_path):
    (image_folder / "zebra").mkdir()
    with pytest.raises(SliceScopeError, match="class folder 'zebra' is empty"):
        scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))


def test_class_missing_from_model_is_refused(image_folder, small_net_checkpoint, tmp_path):
    with pytest.raises(SliceScopeError, match="'sky' is missing from the model"):
        scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws", classes=("apple", "leaf", "tree")))
    with pytest.raises(SliceScopeError, match="model outputs 3 classes but the dataset has 4"):
        (image_folder / "tree").mkdir()
        (image_folder / "tree" / "t.png").write_bytes((image_folder / "sky" / "sky_00.png").read_bytes())
        scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws2"))


def test_changed_inputs_never_mix_with_an_old_workspace(image_folder, small_net_checkpoint, tmp_path):
    out = tmp_path / "ws"
    scan(small_scan_config(image_folder, small_net_checkpoint, out))
    with pytest.raises(SliceScopeError, match="built from other inputs"):
        scan(small_scan_config(image_folder, small_net_checkpoint, out, image_size=48))
    rebuilt = scan(small_scan_config(image_folder, small_net_checkpoint, out, image_size=48, overwrite=True))
    assert rebuilt.manifest["transforms"]["image_size"] == 48


def test_workspace_open_errors_are_friendly(tmp_path):
    with pytest.raises(SliceScopeError, match="not a SliceScope workspace"):
        Workspace(tmp_path)
