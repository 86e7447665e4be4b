"""One-pass extraction: logits, features F, GradCAM and F_W for every image.

For each batch the model runs forward once. The target layer's activation A
(B × K × h × w) is captured as an autograd leaf; one backward pass from the
predicted-class logits to A gives GradCAM (Selvaraju et al.), and from the same
A come the pooled features F and the attribution-weighted features F_W of
AttributionScanner §3.4.1:

    F_W = Σ_ij A_ij W_ij / Σ_ij W_ij

where W is the GradCAM map. The paper upsamples the map to the image and
interpolates it back down to the latent grid; since the map is born on that
grid, that round trip is (up to interpolation blur) the map itself, so W is the
latent GradCAM map, normalised to a peak of 1.

:func:`scan` runs this over a dataset in chunks written to disk, so a crash
loses at most one chunk and a re-run resumes where it stopped. The scan's inputs
are recorded in the workspace, so :func:`rebuild_workspace` can finish or redo
it without the user giving them again.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

from core import __version__
from core.data import ImageIndex, Preprocess, load_index, read_image
from core.errors import SliceScopeError
from core.memory import retained_heap
from core.models import AttributionModel, ModelSpec, file_sha256, load_module
from core.progress import ProgressFn, silent
from core.workspace import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    MANIFEST,
    RESCAN_FOLDER,
    SCAN_OUTPUTS,
    SCAN_STATE,
    Workspace,
    atomic_write,
    drop_damaged_derived,
    read_manifest,
    read_scan_state,
    recorded_scan_inputs,
    save_array,
    save_json,
    save_manifest,
    save_table,
    scan_command,
    stable_hash,
    workspace_status,
)

# Where and how a scan runs, not what it computes: not part of its recorded inputs.
# How a scan runs, not what it computes: never recorded, never part of the fingerprint (a Ray scan equals a local one).
_RUN_OPTIONS = ("out", "workers", "overwrite", "ray", "ray_workers")


@dataclass
class BatchAttribution:
    logits: torch.Tensor  # B × C
    features: torch.Tensor  # B × K, F: the activation averaged over the grid
    attribution_features: torch.Tensor  # B × K, F_W
    gradcam: torch.Tensor  # B × h × w, peak-normalised to [0, 1]


def attribute_batch(model: AttributionModel, images: torch.Tensor) -> BatchAttribution:
    """Run the one-pass extraction on a batch of preprocessed images."""
    logits, activation = model.forward_with_activation(images)
    predicted = logits.argmax(dim=1, keepdim=True)
    # The batch's samples are independent in eval mode, so the gradient of the
    # summed scores gives every sample's own gradient in one backward pass.
    (gradient,) = torch.autograd.grad(logits.gather(1, predicted).sum(), activation)
    with torch.no_grad():
        activation = activation.detach()
        channel_weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = functional.relu((channel_weights * activation).sum(dim=1))
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        features = activation.mean(dim=(2, 3))
        mass = cam.sum(dim=(1, 2))
        weighted = torch.einsum("bkhw,bhw->bk", activation, cam) / mass.clamp_min(1e-12)[:, None]
        # A map with no positive evidence carries no attribution; weigh the grid evenly.
        attribution_features = torch.where(mass[:, None] > 0, weighted, features)
    return BatchAttribution(logits.detach(), features, attribution_features, cam)


@dataclass
class ScanConfig:
    """Everything a scan depends on, as the user gave it."""

    data: Path
    model: ModelSpec
    out: Path
    image_size: int = 224
    normalize: str = "imagenet"
    target_layer: str | None = None
    classes: tuple[str, ...] | None = None
    split: str | None = None
    batch_size: int = 64
    chunk_size: int = 1024
    device: str = "auto"
    workers: int = field(default_factory=lambda: min(4, max(0, (os.cpu_count() or 1) - 1)))
    overwrite: bool = False
    name: str | None = None
    ray: str | None = None
    ray_workers: int = 2

    def __post_init__(self) -> None:
        # Absolute paths, so that the recorded inputs rebuild the workspace from any
        # working directory and the fingerprint does not depend on how a path was spelled.
        self.data = Path(self.data).expanduser().resolve()
        self.out = Path(self.out).expanduser().resolve()
        if self.model.checkpoint is not None:
            self.model = replace(self.model, checkpoint=Path(self.model.checkpoint).expanduser().resolve())
        if self.classes is not None:
            self.classes = tuple(self.classes)

    def to_dict(self) -> dict:
        """The scan's inputs as JSON and TOML can store them (everything but the run options).

        Trusting a pickled checkpoint is a choice for one run, never recorded: a
        later run that reloads the model asks for it again.
        """
        inputs = {name: value for name, value in asdict(self).items() if name not in _RUN_OPTIONS}
        inputs["model"] = _storable({name: value for name, value in inputs["model"].items() if name != "trust_checkpoint"})
        return _storable(inputs)

    @classmethod
    def from_dict(cls, inputs: dict, out: Path, trust_checkpoint: bool = False, **run_options) -> ScanConfig:
        """The config :meth:`to_dict` recorded, scanning into ``out``; ``run_options`` sets workers or overwrite.

        A trust recorded by an older version is ignored; ``trust_checkpoint`` is this run's choice.
        """
        model = {name: value for name, value in inputs["model"].items() if name != "trust_checkpoint"}
        return cls(**{**inputs, "model": ModelSpec(**model, trust_checkpoint=trust_checkpoint)}, out=out, **run_options)


def _storable(values: dict) -> dict:
    # TOML has no null, so a None is left out: every such field defaults to None.
    return {
        name: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for name, value in values.items()
        if value is not None
    }


class _ImageReader(Dataset):
    def __init__(self, index: ImageIndex, preprocess: Preprocess):
        self.paths = [index.absolute_path(p) for p in index.table["path"]]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        """(position, array or None, sha1, conversion note or skip reason)."""
        try:
            decoded = read_image(self.paths[position])
            return position, self.preprocess.to_array(decoded.image), decoded.sha1, decoded.conversion
        except (OSError, ValueError) as error:
            return position, None, "", str(error) or type(error).__name__


def _collate(items):
    readable = [item for item in items if item[1] is not None]
    skipped = [(position, reason) for position, array, _, reason in items if array is None]
    converted = [(position, note) for position, array, _, note in items if array is not None and note]
    positions = [item[0] for item in readable]
    arrays = torch.from_numpy(np.stack([item[1] for item in readable])) if readable else None
    sha1s = [item[2] for item in readable]
    return positions, arrays, sha1s, skipped, converted


def _resolve_classes(index: ImageIndex, model_classes: tuple[str, ...] | None, num_outputs: int) -> tuple[str, ...]:
    classes = tuple(model_classes) if model_classes else index.classes
    if len(classes) != num_outputs:
        if model_classes:
            raise SliceScopeError(f"`classes` names {len(classes)} classes but the model outputs {num_outputs}", "list exactly one name per model output, in output order")
        raise SliceScopeError(
            f"the model outputs {num_outputs} classes but the dataset has {len(classes)} ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})",
            "pass `classes`: the model's class names in output order",
        )
    missing = sorted(set(index.classes) - set(classes))
    if missing:
        raise SliceScopeError(f"dataset class '{missing[0]}' is missing from the model's classes", "pass `classes`: the model's class names in output order, or remove that class's images")
    return classes


def scan(config: ScanConfig, progress: ProgressFn | None = None) -> Workspace:
    """Build (or resume building) the workspace for ``config``; return it."""
    report = progress or silent
    started = time.perf_counter()
    index = load_index(config.data, config.split)
    preprocess = Preprocess(config.image_size, config.normalize)
    module = load_module(config.model)
    model = AttributionModel(module, config.image_size, config.target_layer, config.device)
    classes = _resolve_classes(index, config.classes, model.num_classes)
    model_hash = file_sha256(config.model.checkpoint) if config.model.checkpoint else ""
    dataset_fingerprint = index.fingerprint()
    fingerprint = stable_hash({
        "format": FORMAT_VERSION,
        "dataset": dataset_fingerprint,
        "model": model_hash,
        "model_spec": config.model.describe(),
        "preprocess": preprocess.as_dict(),
        "target_layer": model.target_layer,
        "classes": classes,
    })

    out = config.out
    _finish_interrupted_replacement(out)
    if _is_unchanged(out, fingerprint):
        shutil.rmtree(out / RESCAN_FOLDER, ignore_errors=True)
        report("extracting", 1, 1)
        return Workspace(out)
    _require_writable_folder(out)
    work = _scan_folder(out, fingerprint, config.overwrite)
    state_path = work / SCAN_STATE
    n_images = len(index.table)
    chunk_starts = list(range(0, n_images, config.chunk_size))
    work.mkdir(parents=True, exist_ok=True)
    save_json(state_path, {"fingerprint": fingerprint, "num_chunks": len(chunk_starts), "scan": config.to_dict()})

    chunks = ChunkPlan(index, preprocess, config.chunk_size, config.batch_size, work / "chunks")
    pending = chunks.pending()
    pending_images = sum(chunks.size(chunk) for chunk in pending)
    done_images = n_images - pending_images
    # The pending chunk files and the consolidated arrays sit on the disk together until the chunks are removed.
    _require_disk_space(work, (pending_images + n_images) * _bytes_per_image(model))
    report("extracting", done_images, n_images)
    try:
        if config.ray is None:
            def count(images: int) -> None:
                nonlocal done_images
                done_images += images
                report("extracting", done_images, n_images)

            extract_chunks(model, chunks, pending, config.workers, count)
        else:
            from core.distributed import ray_extract

            gpu = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
            ray_extract(pending, partial(_load_scan_model, config), partial(_extract_whole_chunks, chunks),
                        lambda done: report("extracting", done_images + done, n_images), config.ray, config.ray_workers, gpu)

        plan = _ScanPlan(work, config, index, preprocess, model, classes, fingerprint, dataset_fingerprint, model_hash, started)
        _consolidate(plan, len(chunk_starts))
        if work != out:
            _replace_scan_outputs(work, out, keep_derived=_recorded_fingerprint(out) == fingerprint)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        # Every file is written whole or not at all (atomic_write; the manifest last), so what was extracted stays.
        raise SliceScopeError(f"the disk holding {out} filled up during the scan",
                              "free space there and run the same scan again (it resumes from the chunks already written), or choose another `out`") from None
    return Workspace(out)


def _bytes_per_image(model: AttributionModel) -> int:
    """About what one image adds to a workspace: its arrays, and a margin for its table row and chunk bookkeeping."""
    floats = model.num_classes + 2 * model.feature_dim  # logits, F and F_W, float32
    return 4 * floats + 2 * math.prod(model.latent_shape) + 512  # GradCAM in float16


def _require_disk_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SliceScopeError(f"the scan needs about {_readable_size(needed)} on the disk holding {folder}, which has {_readable_size(free)} free",
                              "free space there or choose an `out` folder on a larger disk")


def _readable_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _recorded_fingerprint(out: Path) -> str | None:
    return ((read_manifest(out) or {}).get("extraction") or {}).get("fingerprint")


def _is_unchanged(out: Path, fingerprint: str) -> bool:
    """Whether ``out`` already holds an intact workspace of exactly these inputs."""
    return (out / MANIFEST).is_file() and _recorded_fingerprint(out) == fingerprint and workspace_status(out).state == "ready"


def _require_writable_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SliceScopeError(f"`out` {out} is a file, not a folder", "choose a folder for the workspace")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write-test", lambda target: target.write_bytes(b""))
        (out / ".write-test").unlink()
    except OSError as error:
        raise SliceScopeError(f"cannot write to {out} ({error.strerror or type(error).__name__})", "choose a folder you can write to, or fix its permissions") from None


def _scan_folder(out: Path, fingerprint: str, overwrite: bool) -> Path:
    """Where this scan writes: ``out`` itself, or beside a finished workspace it will replace.

    A finished workspace is rebuilt in ``out/.rescan`` and swapped in only once
    complete, so an interrupted rescan leaves the old one usable; the user's own
    files in ``out`` (annotations, vocabularies, exports) are never touched.
    """
    if (out / MANIFEST).is_file():
        status = workspace_status(out)
        if _recorded_fingerprint(out) != fingerprint and not overwrite:
            held = "built from other inputs" if status.state == "ready" else f"that is {status.state}"
            raise SliceScopeError(f"{out} already holds a workspace {held}", "choose another `out` folder or pass `overwrite`")
        rescan = out / RESCAN_FOLDER
        if (read_scan_state(rescan) or {}).get("fingerprint") != fingerprint:
            shutil.rmtree(rescan, ignore_errors=True)
        return rescan
    state = read_scan_state(out)
    if state is not None and state.get("fingerprint") == fingerprint:
        return out
    if state is not None or (out / SCAN_STATE).is_file():
        if not overwrite:
            raise SliceScopeError(f"{out} holds an interrupted scan of other inputs (the data, model or options changed)", "choose another `out` folder or pass `overwrite` to start over")
    elif any(out.iterdir()) and not overwrite:
        raise SliceScopeError(f"{out} exists and is not empty", "choose a new `out` folder, or pass `overwrite` to build a workspace there (files other than the workspace's own are kept)")
    _remove_scan_outputs(out)
    return out


def _remove_scan_outputs(folder: Path, keep: tuple[str, ...] = ()) -> None:
    for name in SCAN_OUTPUTS:
        if name in keep:
            continue
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _replace_scan_outputs(new: Path, out: Path, keep_derived: bool) -> None:
    """Move the finished rescan in ``new`` over the scan outputs in ``out``.

    The old manifest goes first and the new one comes last, so the folder never
    reads as a finished mix of old and new files; a crash in between is finished
    by the next scan (:func:`_finish_interrupted_replacement`). Derived results stay
    when the inputs did not change (a repair): they are keyed by those inputs.
    """
    keep = ("derived",) if keep_derived else ()
    _remove_scan_outputs(out, keep)
    for name in reversed(SCAN_OUTPUTS):
        if name not in keep and (new / name).exists():
            os.replace(new / name, out / name)
    shutil.rmtree(new, ignore_errors=True)


def _finish_interrupted_replacement(out: Path) -> None:
    """Complete a :func:`_replace_scan_outputs` that a crash stopped after the old manifest was removed."""
    new = out / RESCAN_FOLDER
    if not (out / MANIFEST).is_file() and (new / MANIFEST).is_file():
        _replace_scan_outputs(new, out, keep_derived=(out / "derived").is_dir())


@dataclass(frozen=True)
class ChunkPlan:
    """How a scan's images are cut: chunks of ``chunk_size`` positions (each written to ``folder`` as one file when
    complete), read in batches of ``batch_size`` that never cross a chunk, so the local and the Ray path batch alike."""

    index: ImageIndex
    preprocess: Preprocess
    chunk_size: int
    batch_size: int
    folder: Path

    @property
    def n_images(self) -> int:
        return len(self.index.table)

    def path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:05d}.npz"

    def size(self, chunk: int) -> int:
        return min(self.chunk_size, self.n_images - chunk * self.chunk_size)

    def pending(self) -> list[int]:
        """The chunks not yet written (a resumed scan skips the others)."""
        return [chunk for chunk in range(-(-self.n_images // self.chunk_size)) if not self.path(chunk).is_file()]

    def batches(self, chunks: list[int]) -> tuple[list[list[int]], list[int]]:
        """The positions of each batch of ``chunks``, and the chunk each batch belongs to."""
        batches, owners = [], []
        for chunk in chunks:
            start, stop = chunk * self.chunk_size, chunk * self.chunk_size + self.size(chunk)
            for first in range(start, stop, self.batch_size):
                batches.append(list(range(first, min(first + self.batch_size, stop))))
                owners.append(chunk)
        return batches, owners


def extract_chunks(model: AttributionModel, plan: ChunkPlan, chunks: list[int], workers: int, done: Callable[[int], None]) -> None:
    """Extract ``chunks`` with ``model``, writing each chunk's file when its last batch is done; ``done(n)`` after every batch."""
    batches, owners = plan.batches(chunks)
    loader = DataLoader(
        _ImageReader(plan.index, plan.preprocess),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=workers if len(batches) > 1 else 0,
    )
    buffer: dict[str, list] = _empty_buffer()
    # A scan's batches allocate the same large activations over and over: keep freed blocks for the next one.
    with retained_heap():
        for batch_number, (positions, arrays, sha1s, skipped, converted) in enumerate(loader):
            if arrays is not None:
                result = attribute_batch(model, arrays.to(model.device))
                buffer["positions"].extend(positions)
                buffer["sha1"].extend(sha1s)
                buffer["logits"].append(result.logits.float().cpu().numpy())
                buffer["features"].append(result.features.float().cpu().numpy())
                buffer["attribution_features"].append(result.attribution_features.float().cpu().numpy())
                buffer["gradcam"].append(result.gradcam.cpu().numpy().astype(np.float16))
            for position, reason in skipped:
                buffer["skipped_positions"].append(position)
                buffer["skipped_reasons"].append(reason)
            for position, note in converted:
                buffer["converted_positions"].append(position)
                buffer["conversions"].append(note)
            if batch_number + 1 == len(batches) or owners[batch_number + 1] != owners[batch_number]:
                _write_chunk(plan.path(owners[batch_number]), buffer, model)
                buffer = _empty_buffer()
            done(len(positions) + len(skipped))


def _load_scan_model(config: ScanConfig) -> AttributionModel:
    """The scan's model, as a Ray worker builds it for itself."""
    return AttributionModel(load_module(config.model), config.image_size, config.target_layer, config.device)


def _extract_whole_chunks(plan: ChunkPlan, model: AttributionModel, chunks: list[int]) -> list[dict]:
    """What a Ray worker does with its chunks: extract and write them (one process, no loader workers); their sizes."""
    extract_chunks(model, plan, chunks, 0, lambda _images: None)
    return [{"images": plan.size(chunk)} for chunk in chunks]


def _empty_buffer() -> dict[str, list]:
    return {key: [] for key in ("positions", "sha1", *ARRAY_NAMES, "skipped_positions", "skipped_reasons", "converted_positions", "conversions")}


def _write_chunk(path: Path, buffer: dict[str, list], model: AttributionModel) -> None:
    def stacked(name: str, width: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(buffer[name]) if buffer[name] else np.zeros((0, *width), dtype)

    arrays = {
        "positions": np.asarray(buffer["positions"], dtype=np.int64),
        "sha1": np.asarray(buffer["sha1"], dtype="U40"),
        "logits": stacked("logits", (model.num_classes,), np.float32),
        "features": stacked("features", (model.feature_dim,), np.float32),
        "attribution_features": stacked("attribution_features", (model.feature_dim,), np.float32),
        "gradcam": stacked("gradcam", model.latent_shape, np.float16),
        "skipped_positions": np.asarray(buffer["skipped_positions"], dtype=np.int64),
        "skipped_reasons": np.asarray(buffer["skipped_reasons"], dtype=str),
        "converted_positions": np.asarray(buffer["converted_positions"], dtype=np.int64),
        "conversions": np.asarray(buffer["conversions"], dtype=str),
    }
    atomic_write(path, lambda target: np.savez(target, **arrays))


@dataclass
class _ScanPlan:
    """What a finished scan records about its inputs."""

    out: Path
    config: ScanConfig
    index: ImageIndex
    preprocess: Preprocess
    model: AttributionModel
    classes: tuple[str, ...]
    fingerprint: str
    dataset_fingerprint: str
    model_hash: str
    started: float


def _consolidate(plan: _ScanPlan, n_chunks: int) -> None:
    """Merge the chunks into the workspace's final tables and arrays, in ``plan.out``."""
    out, config, index, model, classes = plan.out, plan.config, plan.index, plan.model, plan.classes
    chunks = []
    for i in range(n_chunks):
        with np.load(out / "chunks" / f"chunk-{i:05d}.npz") as chunk:
            chunks.append({key: chunk[key] for key in chunk.files})
    positions = np.concatenate([c["positions"] for c in chunks])
    skipped_positions = np.concatenate([c["skipped_positions"] for c in chunks])
    skipped_reasons = np.concatenate([c["skipped_reasons"] for c in chunks])
    skipped = [
        {"path": index.table["path"].iat[int(p)], "reason": str(r)}
        for p, r in sorted(zip(skipped_positions, skipped_reasons), key=lambda pr: pr[0])
    ]
    # Chunks written before conversions were recorded have none to report.
    converted = [
        {"path": index.table["path"].iat[int(p)], "conversion": str(note)}
        for chunk in chunks
        for p, note in zip(chunk.get("converted_positions", ()), chunk.get("conversions", ()))
    ]
    if positions.size == 0:
        example = f" (e.g. {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise SliceScopeError(f"none of the {len(index.table)} images could be read{example}", "check that the dataset's files are images")
    arrays = {name: np.concatenate([c[name] for c in chunks]) for name in ARRAY_NAMES}
    non_finite = ~np.isfinite(arrays["logits"]).all(axis=1)
    if non_finite.any():
        example = index.table["path"].iat[int(positions[np.flatnonzero(non_finite)[0]])]
        raise SliceScopeError(
            f"the model returned NaN or infinite logits for {int(non_finite.sum())} of {len(positions)} images (e.g. {example})",
            "check the checkpoint (a diverged training run?) and that `normalize` matches how the model was trained",
        )
    logits = torch.from_numpy(arrays["logits"])
    probabilities = torch.softmax(logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)

    table = index.table.iloc[positions].reset_index(drop=True)
    class_position = {name: i for i, name in enumerate(classes)}
    label_index = table["label"].map(class_position).to_numpy(dtype=np.int64)
    loss = functional.cross_entropy(logits, torch.tensor(label_index), reduction="none")
    table.insert(3, "label_index", label_index)
    table.insert(4, "prediction", [classes[i] for i in predicted.tolist()])
    table.insert(5, "prediction_index", predicted.numpy())
    table.insert(6, "confidence", confidence.numpy())
    table.insert(7, "loss", loss.numpy())
    table.insert(8, "correct", label_index == predicted.numpy())
    table.insert(9, "sha1", np.concatenate([c["sha1"] for c in chunks]))

    for name, array in arrays.items():
        save_array(out / "arrays" / f"{name}.npy", array)
    save_table(out / "images.parquet", table)
    report = build_report(table, skipped, classes, arrays["gradcam"], len(index.table))
    report.update(conversion_report(converted), duplicate_rows=list(index.duplicates))
    save_json(out / "report.json", report)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": config.name or config.out.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "dataset": {
            "source": str(config.data),
            "root": str(index.root.resolve()),
            "kind": index.kind,
            "split": config.split or "",
            "num_indexed": len(index.table),
            "num_images": len(table),
            "fingerprint": plan.dataset_fingerprint,
        },
        "model": {**config.model.describe(), "sha256": plan.model_hash, "classes": list(classes), "target_layer": model.target_layer},
        "transforms": plan.preprocess.as_dict(),
        "extraction": {
            "fingerprint": plan.fingerprint,
            "seconds": round(time.perf_counter() - plan.started, 2),
            "latent_shape": list(model.latent_shape),
            "feature_dim": model.feature_dim,
            "batch_size": config.batch_size,
            "device": str(model.device),
            "attribution": "GradCAM of the predicted class at the target layer",
        },
        "scan": config.to_dict(),
    }
    save_manifest(out / MANIFEST, manifest)
    shutil.rmtree(out / "chunks", ignore_errors=True)
    (out / SCAN_STATE).unlink(missing_ok=True)


def conversion_report(converted: list[dict], examples: int = 5) -> dict:
    """How many images needed which conversion (16-bit scaled, frames dropped, ...), with a few paths each."""
    by_kind: dict[str, list[str]] = {}
    for item in converted:
        by_kind.setdefault(item["conversion"], []).append(item["path"])
    return {
        "num_converted": len(converted),
        "converted": {kind: {"n": len(paths), "examples": paths[:examples]} for kind, paths in sorted(by_kind.items())},
    }


def rebuild_workspace(path: str | Path, progress: ProgressFn | None = None) -> Workspace:
    """Finish or redo the workspace at ``path`` from the scan inputs recorded in it.

    A half-built scan resumes, reusing its finished chunks while the inputs are
    unchanged; an outdated or damaged workspace, or one whose data or model has
    changed since, is replaced. A ready, unchanged workspace is returned as is.
    """
    out = Path(path).expanduser().resolve()
    inputs = recorded_scan_inputs(out)
    if inputs is None:
        raise SliceScopeError(f"{out} has no record of how it was built", f"run {scan_command(out, overwrite=True)}")
    try:
        config = ScanConfig.from_dict(inputs, out, overwrite=True)
    except (KeyError, TypeError) as error:
        raise SliceScopeError(f"the scan inputs recorded in {out} are incomplete ({error})", f"run {scan_command(out, overwrite=True)}") from None
    for role, source in (("dataset", config.data), ("model checkpoint", config.model.checkpoint)):
        if source is not None and not source.exists():
            raise SliceScopeError(
                f"the {role} this workspace was built from no longer exists: {source}",
                f"restore it, or build the workspace from its new location with {scan_command(out, overwrite=True)}",
            )
    return scan(config, progress)


def repair_workspace(path: str | Path, progress: ProgressFn | None = None) -> tuple[Workspace, list[str]]:
    """Make the workspace at ``path`` whole again; return it and what was done, one line each.

    Damaged cached results are dropped (they are recomputed when needed); damaged
    tables or arrays, or a model checkpoint that changed since the scan, mean a
    rescan from the recorded inputs. The annotation database and every other file
    the user made in the folder are kept.
    """
    out = Path(path).expanduser().resolve()
    done = [f"dropped the damaged cached result {name}" for name in drop_damaged_derived(out)]
    status = workspace_status(out)
    if status.state == "ready" and not _model_changed(out):
        return Workspace(out), done
    workspace = rebuild_workspace(out, progress)
    done.append(f"rescanned ({status.message})" if status.state != "ready" else "rescanned with the changed model checkpoint")
    return workspace, done


def _model_changed(out: Path) -> bool:
    model = (read_manifest(out) or {}).get("model") or {}
    checkpoint = Path(model.get("checkpoint") or "")
    return bool(model.get("sha256")) and checkpoint.is_file() and file_sha256(checkpoint) != model["sha256"]


def build_report(table: pd.DataFrame, skipped: list[dict], classes, gradcam: np.ndarray, num_indexed: int) -> dict:
    """Counts, accuracies and problems found during the scan, for people to read."""
    per_class = table.groupby("label")["correct"].agg(["size", "mean"])
    report = {
        "num_indexed": num_indexed,
        "num_images": len(table),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "accuracy": float(table["correct"].mean()),
        "class_accuracy": {label: {"n": int(row["size"]), "accuracy": float(row["mean"])} for label, row in per_class.iterrows()},
        "classes_without_images": sorted(set(classes) - set(table["label"])),
        "empty_attribution_maps": int((gradcam.reshape(len(gradcam), -1).max(axis=1) == 0).sum()),
    }
    if "group" in table.columns:
        groups = table.groupby("group")["correct"].agg(["size", "mean"])
        report["group_accuracy"] = {str(g): {"n": int(row["size"]), "accuracy": float(row["mean"])} for g, row in groups.iterrows()}
    return report


def recorded_scan_config(workspace: Workspace) -> ScanConfig:
    """The :class:`ScanConfig` that built ``workspace``, as recorded in it."""
    inputs = recorded_scan_inputs(workspace.path)
    if inputs is None:
        raise SliceScopeError(f"workspace {workspace.name} does not record which model built it", f"rebuild it with {scan_command(workspace.path, overwrite=True)}")
    return ScanConfig.from_dict(inputs, workspace.path)


def workspace_model_spec(workspace: Workspace, trust_checkpoint: bool = False) -> ModelSpec:
    """The recorded model of ``workspace``, once its checkpoint is checked to be the file that was scanned.

    A checkpoint replaced since the scan would silently change every result computed
    from it (and, if trusted, could run code), so a changed sha256 is refused.
    """
    spec = replace(recorded_scan_config(workspace).model, trust_checkpoint=trust_checkpoint)
    if spec.checkpoint is None:
        return spec
    if not spec.checkpoint.is_file():
        raise SliceScopeError(f"the model checkpoint {spec.checkpoint} no longer exists", "restore it, or rebuild the workspace with the model's new location")
    recorded = workspace.manifest["model"].get("sha256")
    if recorded and file_sha256(spec.checkpoint) != recorded:
        raise SliceScopeError(
            f"the model checkpoint {spec.checkpoint} has changed since workspace {workspace.name} was scanned (its sha256 differs)",
            f"rescan with: python -m core status {workspace.path} --repair, or keep these results and accept the new file with: python -m core accept-model {workspace.path}",
        )
    return spec


def accept_model_checkpoint(workspace: Workspace) -> str:
    """Record the current checkpoint file's sha256 as the workspace's model; return the new hash.

    For a checkpoint the user knows to be equivalent (re-saved, moved between
    formats): the workspace's results are kept as they are, not recomputed.
    """
    spec = recorded_scan_config(workspace).model
    if spec.checkpoint is None or not spec.checkpoint.is_file():
        raise SliceScopeError(f"workspace {workspace.name} has no model checkpoint file to accept", "restore the checkpoint at the recorded path first")
    digest = file_sha256(spec.checkpoint)
    manifest = read_manifest(workspace.path)
    manifest["model"]["sha256"] = digest
    manifest["model"]["accepted"] = datetime.now(UTC).isoformat(timespec="seconds")
    save_manifest(workspace.path / MANIFEST, manifest)
    return digest


def load_workspace_model(workspace: Workspace, trust_checkpoint: bool = False) -> AttributionModel:
    """The model that built ``workspace``, reloaded from its recorded (and verified) checkpoint."""
    config = recorded_scan_config(workspace)
    module = load_module(workspace_model_spec(workspace, trust_checkpoint))
    return AttributionModel(module, config.image_size, workspace.manifest["model"]["target_layer"], config.device)
