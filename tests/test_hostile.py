"""Hostile input (issue 14): nothing the user made is lost, nothing untrusted is run, every bad file gets one line.

Each test stands for one numbered finding of the issue; the last walks a folder of
nasty images, generated here, through ``scan`` and checks the outcome for each file.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import load_index, read_image
from core.errors import SliceScopeError
from core.extract import accept_model_checkpoint, load_workspace_model, rebuild_workspace, repair_workspace, scan
from core.store import SQLITE_FILE, AnnotationStore
from core.workspace import MANIFEST, RESCAN_FOLDER, SCAN_OUTPUTS, Workspace, workspace_status
from tests.helpers import REPO_ROOT, build_small_net, small_scan_config, train_small_net

SLICING = "attribution:k=3:seed=0"


def annotated_workspace(image_folder: Path, checkpoint: Path, out: Path) -> Workspace:
    """A scanned workspace with what a user makes in it: slice notes, a relabel and a saved vocabulary."""
    workspace = scan(small_scan_config(image_folder, checkpoint, out))
    store = AnnotationStore.for_workspace(workspace.path)
    store.set_slice(workspace.name, SLICING, 0, "spurious", "water background", "alice")
    store.set_slice(workspace.name, SLICING, 1, "core", "the object", "bob")
    store.mark_mislabelled(workspace.name, workspace.images["image_id"].iat[0], "leaf", "alice")
    store.close()
    (workspace.path / "concepts").mkdir()
    (workspace.path / "concepts" / "campaign-1-vocabulary.csv").write_text("term,concept\nwatr,water\n")
    return workspace


def database_digest(workspace_path: Path) -> str:
    """A hash of every row of every table in the workspace's annotation database."""
    connection = sqlite3.connect(workspace_path / SQLITE_FILE)
    try:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
    finally:
        connection.close()


def other_checkpoint(tmp_path: Path, image_folder: Path) -> Path:
    return train_small_net(image_folder, tmp_path / "retrained.pt", steps=5)


# --- 1. rebuild, repair and overwrite keep the annotation database ---------------------------------


def test_rebuilding_a_damaged_workspace_keeps_annotations_and_user_files(image_folder, small_net_checkpoint, tmp_path):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    (workspace.path / "report.json").unlink()
    assert workspace_status(workspace.path).state == "damaged"

    rebuilt = rebuild_workspace(workspace.path)

    assert workspace_status(rebuilt.path).state == "ready"
    assert database_digest(rebuilt.path) == before
    assert (rebuilt.path / "concepts" / "campaign-1-vocabulary.csv").read_text().startswith("term,concept")
    assert not (rebuilt.path / RESCAN_FOLDER).exists()


def test_overwrite_with_another_model_keeps_annotations(image_folder, small_net_checkpoint, tmp_path):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    old_fingerprint = workspace.fingerprint

    replaced = scan(small_scan_config(image_folder, other_checkpoint(tmp_path, image_folder), workspace.path, overwrite=True))

    assert replaced.fingerprint != old_fingerprint and replaced.name == "ws"
    assert database_digest(replaced.path) == before
    assert AnnotationStore.for_workspace(replaced.path).slice_annotations(replaced.name, SLICING)[0].note == "water background"


def test_an_interrupted_overwrite_leaves_the_old_workspace_usable_and_resumes(image_folder, small_net_checkpoint, tmp_path):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    old_predictions = workspace.images["prediction"].tolist()
    config = small_scan_config(image_folder, other_checkpoint(tmp_path, image_folder), workspace.path, overwrite=True)

    def interrupt(step, done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(config, progress=interrupt)

    assert workspace_status(workspace.path).state == "ready"
    reopened = Workspace(workspace.path)
    assert reopened.fingerprint == workspace.fingerprint and reopened.images["prediction"].tolist() == old_predictions
    assert reopened.array("attribution_features").shape[0] == len(old_predictions)
    assert database_digest(workspace.path) == before

    resumed_from = []
    finished = scan(config, progress=lambda step, done, total: resumed_from.append(done))
    assert resumed_from[0] >= 8  # the rescan's finished chunks were kept
    assert finished.fingerprint != workspace.fingerprint
    assert database_digest(finished.path) == before


def test_a_crash_while_swapping_in_the_rescan_is_finished_by_the_next_scan(image_folder, small_net_checkpoint, tmp_path, monkeypatch):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    config = small_scan_config(image_folder, other_checkpoint(tmp_path, image_folder), workspace.path, overwrite=True)
    real_replace = os.replace

    def crash_on_arrays(source, target):
        if Path(target) == workspace.path / "arrays":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_arrays)
    with pytest.raises(KeyboardInterrupt):
        scan(config)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (workspace.path / MANIFEST).exists() and (workspace.path / RESCAN_FOLDER / MANIFEST).exists()

    finished = scan(config)
    assert workspace_status(finished.path).state == "ready" and finished.fingerprint != workspace.fingerprint
    assert not (finished.path / RESCAN_FOLDER).exists()


def test_overwrite_into_a_folder_keeps_files_that_are_not_the_scans(image_folder, small_net_checkpoint, tmp_path):
    out = tmp_path / "ws"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SliceScopeError, match="exists and is not empty"):
        scan(small_scan_config(image_folder, small_net_checkpoint, out))
    scan(small_scan_config(image_folder, small_net_checkpoint, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
    assert {path.name for path in out.iterdir()} - set(SCAN_OUTPUTS) == {"notes.txt", "arrays"} - set(SCAN_OUTPUTS)


# --- 2. checkpoints are verified, and trust is never remembered --------------------------------------


class _Payload:
    """A pickle that creates a file when loaded: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_replaced_checkpoint_is_refused_before_it_is_loaded(image_folder, tmp_path):
    pickled = tmp_path / "whole_model.pt"
    torch.save(build_small_net(), pickled)
    workspace = _scan_trusted(image_folder, pickled, tmp_path / "ws")
    assert "trust_checkpoint" not in tomllib.loads((workspace.path / MANIFEST).read_text())["scan"]["model"]

    with pytest.raises(SliceScopeError, match="pickled Python objects"):
        load_workspace_model(workspace)  # trust was for the scan's run only
    assert load_workspace_model(workspace, trust_checkpoint=True).num_classes == 3

    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), pickled)
    with pytest.raises(SliceScopeError, match="has changed since workspace ws was scanned") as raised:
        load_workspace_model(workspace, trust_checkpoint=True)
    assert not marker.exists()
    assert "accept-model" in str(raised.value) and "--repair" in str(raised.value) and "\n" not in str(raised.value)


def _scan_trusted(image_folder: Path, checkpoint: Path, out: Path) -> Workspace:
    from dataclasses import replace

    config = small_scan_config(image_folder, checkpoint, out)
    return scan(replace(config, model=replace(config.model, trust_checkpoint=True)))


def test_a_changed_state_dict_is_refused_until_rescanned_or_accepted(image_folder, small_net_checkpoint, tmp_path):
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    other = other_checkpoint(tmp_path, image_folder)
    original = small_net_checkpoint.read_bytes()
    small_net_checkpoint.write_bytes(other.read_bytes())
    with pytest.raises(SliceScopeError, match="has changed"):
        load_workspace_model(workspace)

    accept_model_checkpoint(workspace)
    assert load_workspace_model(Workspace(workspace.path)).num_classes == 3

    small_net_checkpoint.write_bytes(original)  # changed again
    with pytest.raises(SliceScopeError, match="has changed"):
        load_workspace_model(Workspace(workspace.path))


def test_repair_rescans_a_workspace_whose_model_changed(image_folder, small_net_checkpoint, tmp_path):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    small_net_checkpoint.write_bytes(other_checkpoint(tmp_path, image_folder).read_bytes())
    repaired, done = repair_workspace(workspace.path)
    assert done == ["rescanned with the changed model checkpoint"]
    assert repaired.fingerprint != workspace.fingerprint
    assert load_workspace_model(repaired).num_classes == 3
    assert database_digest(repaired.path) == before


# --- 3. high-bit-depth images are scaled, not clipped -----------------------------------------------


def write_16_bit_png(path: Path, size: int = 32) -> np.ndarray:
    ramp = np.linspace(0, 65535, size * size).reshape(size, size).astype(np.uint16)
    Image.fromarray(ramp).save(path)  # PIL stores a uint16 array as mode I;16
    return ramp


def test_16_bit_images_are_scaled_into_8_bits(tmp_path):
    ramp = write_16_bit_png(tmp_path / "deep.png")
    decoded = read_image(tmp_path / "deep.png")
    pixels = np.asarray(decoded.image)[..., 0].astype(int)
    assert decoded.conversion == "16-bit grayscale scaled to 8 bits"
    assert (pixels == 255).mean() < 0.01  # clipping made 99.6% of them 255
    np.testing.assert_allclose(pixels, ramp / 257, atol=1)


# --- 4. damaged files are found by checking them, and repaired ------------------------------------


@pytest.mark.parametrize("damaged", ["images.parquet", "arrays/features.npy", "arrays/gradcam.npy"])
def test_a_truncated_file_is_damaged_and_rescanning_repairs_it(image_folder, small_net_checkpoint, tmp_path, damaged):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    target = workspace.path / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])

    status = workspace_status(workspace.path)
    assert status.state == "damaged" and damaged in status.message and "\n" not in status.message
    with pytest.raises(SliceScopeError, match=f"workspace ws is damaged: {damaged} is unreadable .* --repair"):
        reopened = Workspace(workspace.path)
        reopened.images if damaged.endswith(".parquet") else reopened.array(Path(damaged).stem)

    repaired = scan(small_scan_config(image_folder, small_net_checkpoint, workspace.path))  # the same command again
    assert workspace_status(repaired.path).state == "ready"
    assert repaired.array("features").shape[0] == len(repaired.images) == 18
    assert database_digest(repaired.path) == before


def test_a_damaged_cached_result_is_computed_again(image_folder, small_net_checkpoint, tmp_path):
    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    first = workspace.cached_array("answer", {"n": 1}, lambda: np.arange(1000.0))
    cached = workspace.derived_path("answer", {"n": 1}, ".npy")
    cached.write_bytes(cached.read_bytes()[:100])
    again = workspace.cached_array("answer", {"n": 1}, lambda: np.arange(1000.0))
    np.testing.assert_array_equal(first, again)
    assert np.load(cached).shape == (1000,)


def test_status_command_reports_damage_and_repairs(image_folder, small_net_checkpoint, tmp_path):
    workspace = annotated_workspace(image_folder, small_net_checkpoint, tmp_path / "ws")
    before = database_digest(workspace.path)
    logits = workspace.path / "arrays" / "logits.npy"
    logits.write_bytes(logits.read_bytes()[:-40])

    def status(*extra):
        return subprocess.run([sys.executable, "-m", "core", "status", str(workspace.path), *extra],
                              check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    checked = status()
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert checked.stdout.startswith("damaged: This workspace is damaged: arrays/logits.npy is truncated")
    repaired = status("--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "workspace ready" in repaired.stdout
    assert workspace_status(workspace.path).state == "ready" and database_digest(workspace.path) == before


# --- 5. and 6. missing files are skipped; duplicate rows are kept once --------------------------------


def test_missing_and_escaping_manifest_rows_are_skipped_and_listed(image_folder, small_net_checkpoint, tmp_path):
    manifest = image_folder / "manifest.csv"
    manifest.write_text("path,label\napple/apple_00.png,apple\napple/gone.png,apple\n../../../../../../etc/passwd,sky\nleaf/leaf_00.png,leaf\n")
    workspace = scan(small_scan_config(manifest, small_net_checkpoint, tmp_path / "ws"))
    reasons = {item["path"]: item["reason"] for item in workspace.report["skipped"]}
    assert workspace.report["num_images"] == 2
    assert reasons["apple/gone.png"] == "cannot open the file (No such file or directory)"
    assert reasons["../../../../../../etc/passwd"] == "not a recognised image format (corrupt or not an image)"


def test_duplicate_rows_name_one_image_and_must_agree(image_folder, tmp_path):
    manifest = image_folder / "manifest.csv"
    manifest.write_text("path,label\n./apple/apple_00.png,apple\napple//apple_00.png,apple\napple/apple_01.png,apple\n")
    index = load_index(manifest)
    assert index.table["path"].tolist() == ["apple/apple_00.png", "apple/apple_01.png"]
    assert index.duplicates == ({"path": "apple/apple_00.png", "lines": [2, 3]},)

    manifest.write_text("path,label\napple/apple_00.png,apple\nleaf/leaf_00.png,leaf\napple/./apple_00.png,leaf\n")
    with pytest.raises(SliceScopeError, match=r"lists apple/apple_00.png on lines 2, 4 with different labels \(apple, leaf\)"):
        load_index(manifest)


# --- 7. file modes and unwritable places -----------------------------------------------------------


def test_workspace_files_get_ordinary_modes(image_folder, small_net_checkpoint, tmp_path):
    previous = os.umask(0o022)
    try:
        workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
        AnnotationStore.for_workspace(workspace.path).close()
    finally:
        os.umask(previous)
    modes = {path.relative_to(workspace.path).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in workspace.path.rglob("*") if path.is_file()}
    assert set(modes.values()) == {0o644}, modes


def test_out_that_is_a_file_or_cannot_be_written_is_one_line(image_folder, small_net_checkpoint, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SliceScopeError, match="is a file, not a folder"):
        scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "taken"))
    # /proc refuses new folders even to root, who ignores permission bits.
    with pytest.raises(SliceScopeError, match="cannot write to /proc/slicescope-ws .* choose a folder you can write to"):
        scan(small_scan_config(image_folder, small_net_checkpoint, Path("/proc/slicescope-ws")))


# --- 9. manifest wording ---------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["NA", "nan", "None", "null"])
def test_a_label_that_reads_as_missing_is_refused(tmp_path, label):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\na.png,cat\nb.png,{label}\n")
    with pytest.raises(SliceScopeError, match=f"line 3 has the label '{label}', which reads as a missing value"):
        load_index(manifest)


def test_spaces_around_headers_and_labels_are_not_part_of_them(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path, label\na.png,cat\nb.png, cat \nc.png,dog\n")
    index = load_index(manifest)
    assert index.classes == ("cat", "dog")


# --- 10. images over the decompression-bomb limit ------------------------------------------------------


def test_an_image_between_the_bomb_limit_and_twice_it_is_refused_not_decoded(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # 1,600 pixels: only PIL's warning, before
    with pytest.raises(ValueError, match="image too large to decode safely .* downscale it before scanning"):
        read_image(tmp_path / "huge.png")


# --- the folder of nasty inputs, through scan -----------------------------------------------------------


def test_a_folder_of_nasty_images_gets_the_exact_outcome_for_each(tmp_path, small_net_checkpoint, monkeypatch):
    data = tmp_path / "nasty"
    data.mkdir()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data / "plain.png")
    write_16_bit_png(data / "deep16.png")
    Image.fromarray(noise).convert("CMYK").save(data / "cmyk.jpg")
    Image.fromarray(noise).convert("P").save(data / "palette.png")
    frames = [Image.fromarray(np.roll(noise, shift, axis=0)) for shift in range(3)]
    frames[0].save(data / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(noise).save(data / "truncated.png")
    (data / "truncated.png").write_bytes((data / "truncated.png").read_bytes()[:200])
    (data / "empty.png").write_bytes(b"")
    Image.new("RGB", (40, 40)).save(data / "bomb.png")
    rows = ["plain.png,apple", "deep16.png,leaf", "cmyk.jpg,sky", "palette.png,apple", "animated.gif,leaf", "truncated.png,sky",
            "empty.png,apple", "bomb.png,leaf", "missing.png,sky", "./plain.png,apple"]
    (data / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_200)

    workspace = scan(small_scan_config(data / "manifest.csv", small_net_checkpoint, tmp_path / "ws"))

    report = workspace.report
    assert sorted(workspace.images["path"]) == ["animated.gif", "cmyk.jpg", "deep16.png", "palette.png", "plain.png"]
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == {"truncated.png", "empty.png", "bomb.png", "missing.png"}
    assert skipped["truncated.png"].startswith("damaged image data")
    assert skipped["empty.png"] == "not a recognised image format (corrupt or not an image)"
    assert skipped["bomb.png"].startswith("image too large to decode safely")
    assert skipped["missing.png"] == "cannot open the file (No such file or directory)"
    assert report["converted"] == {
        "16-bit grayscale scaled to 8 bits": {"n": 1, "examples": ["deep16.png"]},
        "CMYK converted to RGB": {"n": 1, "examples": ["cmyk.jpg"]},
        "first of 3 frames": {"n": 1, "examples": ["animated.gif"]},
    }
    assert report["num_converted"] == 3
    assert report["duplicate_rows"] == [{"path": "plain.png", "lines": [2, 11]}]
    assert report["num_indexed"] == 9
