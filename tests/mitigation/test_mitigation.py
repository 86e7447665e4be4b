"""Mitigation end to end on a copy of the tiny demo: CoRM retraining into a new version, resumable and safe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.cli import main as cli_main
from core.errors import SliceScopeError
from core.extract import recorded_scan_config
from core.mitigation import (
    MODEL_FILE,
    TORCHSCRIPT_FILE,
    Slicing,
    TrainingParams,
    choose_treated_slices,
    corm_preview,
    evaluate_version,
    load_pixels,
    mitigation_unfinished,
    next_version_path,
    plan_mitigation,
    read_annotations,
    read_job,
    read_metrics,
    read_object_mask,
    read_object_masks,
    read_status,
    request_cancel,
    run_mitigation,
    slice_changes,
    unfinished_jobs,
    version_board,
)
from core.slicing import default_k
from core.store import AnnotationStore
from core.versions import version_family
from core.workspace import Workspace

QUICK = TrainingParams(epochs=2, batch_size=32)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def annotate(store: AnnotationStore, workspace: Workspace, kinds: dict[int, str]):
    slicing = read_annotations(store, workspace).slicing
    for slice_id, kind in kinds.items():
        store.set_slice(workspace.fingerprint, slicing, slice_id, kind, f"{kind}: test", "tester")
    return read_annotations(store, workspace)


def test_choosing_slices_to_treat():
    scores = np.array([0.9, 0.2, 0.7, np.nan])
    assert choose_treated_slices({0: "spurious", 1: "core"}, None, "annotations") == [0]
    assert choose_treated_slices({1: "core", 2: "core"}, scores, "propagation", 0.5) == [0]  # annotated core is never treated
    with pytest.raises(SliceScopeError, match="no slice is annotated spurious"):
        choose_treated_slices({1: "core"}, None, "annotations")
    with pytest.raises(SliceScopeError, match="annotate at least one slice"):
        choose_treated_slices({}, np.full(3, np.nan), "propagation")
    with pytest.raises(SliceScopeError, match="lower the threshold"):
        choose_treated_slices({0: "spurious"}, scores, "propagation", 0.95)


def test_mitigation_makes_a_new_version_and_leaves_the_old_one_intact(line, store):
    state = annotate(store, line, {0: "spurious", 1: "core"})
    image = line.images["image_id"].iat[0]
    store.mark_mislabelled(line.dataset_fingerprint, image, "star", "tester")
    state = read_annotations(store, line)
    before = tree_digest(line.path)
    out = next_version_path(line)
    assert out.name == "workspace-v2"
    job = plan_mitigation(line, state, "propagation", out, threshold=0.5, params=QUICK)
    assert 0 in job.treated_slices and 1 not in job.treated_slices and job.relabels == {image: "star"}

    version = run_mitigation(job, state.slice_ids)
    assert tree_digest(line.path) == before
    assert version.name.endswith("· v2") and len(version.images) == len(line.images)
    status = read_status(out)
    assert status["state"] == "done" and [row["epoch"] for row in status["history"]] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(status["history"][0])
    state_dict = torch.load(job.folder / MODEL_FILE, weights_only=True)
    scripted = torch.jit.load(str(job.folder / TORCHSCRIPT_FILE))
    assert scripted(torch.zeros(1, 3, 64, 64)).shape == (1, 4) and "classifier.weight" in state_dict
    assert [member.path for member in version_family(line)] == [line.path, version.path]
    assert next_version_path(version).name == "workspace-v3"
    assert read_job(out) == job

    for member in (line, version):
        metrics = evaluate_version(member, store)
        assert set(json.loads((member.path / "metrics.json").read_text())) >= {"clean_acc", "core_acc", "spurious_acc", "rcs", "worst_group_acc"}
        assert metrics.n_images == len(line.images)
    board = version_board(version)
    assert board["version"].tolist() == [1, 2] and board["mitigation"].tolist() == ["original model", "corm (propagation)"]
    assert board[["clean_acc", "rcs"]].notna().all().all()
    changes = slice_changes(line, version)
    assert set(changes["slice"]) == {int(s) for s in read_metrics(line)["slice_acc"]}
    assert set(changes["verdict"]) <= {"improved", "regressed", "unchanged"}


def test_a_crash_mid_training_keeps_the_parent_and_resumes(line, store):
    state = annotate(store, line, {0: "spurious"})
    before = tree_digest(line.path)
    out = next_version_path(line)
    job = plan_mitigation(line, state, "annotations", out, params=QUICK)
    calls = {"n": 0}

    def crash_in_second_epoch() -> bool:
        calls["n"] += 1
        if calls["n"] > 4:  # the tiny demo has 3 batches of 32 per epoch
            raise RuntimeError("power cut")
        return False

    with pytest.raises(RuntimeError, match="power cut"):
        run_mitigation(job, state.slice_ids, should_stop=crash_in_second_epoch)
    assert tree_digest(line.path) == before and not out.exists()
    assert [row["epoch"] for row in read_status(out)["history"]] == [1]
    assert unfinished_jobs(line) == [out] and mitigation_unfinished(out)

    version = run_mitigation(job, state.slice_ids)
    assert [row["epoch"] for row in read_status(out)["history"]] == [1, 2]
    assert version.path == out and unfinished_jobs(line) == [] and not mitigation_unfinished(out)


def test_cancel_stops_at_the_next_batch_and_says_how_to_resume(line, store):
    state = annotate(store, line, {0: "spurious"})
    out = next_version_path(line)
    job = plan_mitigation(line, state, "annotations", out, params=QUICK)

    def cancel_soon() -> bool:
        request_cancel(out)
        return (job.folder / "cancel").is_file()

    with pytest.raises(SliceScopeError, match="cancelled"):
        run_mitigation(job, state.slice_ids, should_stop=cancel_soon)
    assert read_status(out)["state"] == "cancelled" and not out.exists()
    other = plan_mitigation(line, state, "annotations", out, params=TrainingParams(epochs=3))
    with pytest.raises(SliceScopeError, match="other settings"):
        run_mitigation(other, state.slice_ids)


def test_cli_annotate_mitigate_evaluate(line, capsys):
    assert cli_main(["annotate", str(line.path), "--slice", "0", "--kind", "spurious", "--note", "water"]) == 0
    out = line.path.with_name("v2")
    assert cli_main(["mitigate", str(line.path), "--from", "annotations", "--out", str(out), "--epochs", "1", "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "new version ready" in printed and "RCS" in printed
    assert cli_main(["evaluate", str(out), "--regions", "attribution", "--k", str(default_k(len(line.images)))]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"clean_acc", "core_acc", "spurious_acc", "rcs", "worst_group_acc"} <= set(metrics)
    assert "attribution masks" in metrics["regions"]
    assert cli_main(["mitigate", str(line.path), "--from", "propagation", "--out", str(out)]) == 2
    assert "already holds a workspace" in capsys.readouterr().err


def test_evaluate_without_annotations_or_masks_is_explained(line, store):
    with pytest.raises(SliceScopeError, match="annotate at least one slice"):
        evaluate_version(line, store, Slicing(), regions="attribution")


def test_noise_outside_object_masks_spares_the_object(line):
    rows = list(range(6))
    size = int(line.manifest["transforms"]["image_size"])
    original = np.rint(load_pixels(line, np.asarray(rows), size).permute(0, 2, 3, 1).numpy() * 255)
    objects = read_object_masks(line, np.asarray(rows), size)
    inside, outside = objects >= 0.999, objects == 0
    assert inside.any() and outside.any()
    noisy = np.stack(corm_preview(line, rows, sigma=1.0, noise_region="object_masks")).astype(float)
    changed = np.abs(noisy - original).max(axis=3) > 1
    assert changed[outside].mean() > 0.9 and not changed[inside].any()


def test_mitigating_with_object_masks_and_what_missing_masks_say(line, tmp_path, capsys):
    assert cli_main(["annotate", str(line.path), "--slice", "0", "--kind", "spurious"]) == 0
    out = line.path.with_name("v2")
    arguments = ["mitigate", str(line.path), "--from", "annotations", "--epochs", "1", "--batch-size", "32", "--noise-region", "object-masks"]
    assert cli_main([*arguments, "--out", str(out)]) == 0
    assert read_job(out).params.noise_region == "object_masks"
    assert version_board(line)["mitigation"].tolist() == ["original model", "corm (annotations, noise outside object masks)"]

    manifest = pd.read_csv(recorded_scan_config(line).data)
    manifest["path"] = [str(recorded_scan_config(line).data.parent / path) for path in manifest["path"]]
    manifest.drop(columns="mask_path").to_csv(tmp_path / "no-masks.csv", index=False)
    capsys.readouterr()
    assert cli_main([*arguments, "--out", str(tmp_path / "v3"), "--train-data", str(tmp_path / "no-masks.csv"), "--train-split", "train"]) == 2
    assert "no mask_path column" in capsys.readouterr().err

    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SliceScopeError, match="broken.png could not be read"):
        read_object_mask(tmp_path / "broken.png", 64)
