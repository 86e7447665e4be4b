"""Slice error mitigation: relabelling and CoRM retraining into a new model version.

AttributionScanner §3.7: for the training images of the treated (spurious)
slices, the model's own attribution mask m marks the spurious region, and
Core Risk Minimization trains on x' = x + m ⊙ z with Gaussian z, so that
region stops paying off. When the training data comes with object masks
(a ``mask_path`` column, as in Singla et al.'s Salient ImageNet, where CoRM
began), m can instead be everything outside the object; the benchmark uses
that to tell how much of CoRM's result is owed to the attribution masks.
Images the analyst marked mislabelled get the label they should have.

Slices are found on the scanned (evaluation) images, but the model is
retrained on its training data. A training image belongs to the slice whose
centroid (mean F_W) is nearest to the image's own F_W under the current
model: the same nearest-centroid rule K-Means used to form the slices.

A mitigation runs as a resumable job in its own folder (``<out>.training``):
``job.json`` freezes what was asked (treated slices, relabels, settings) when it
starts, ``status.json`` says where it is (for the app's live chart), a
checkpoint after every epoch lets a re-run continue after a crash or restart,
and a ``cancel`` file stops it at the next batch. The new version's workspace
is written only at the end, by a scan of the same evaluation images with the
retrained model; the version it started from is never modified.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from core.data import ImageIndex, Preprocess, load_index, read_image
from core.errors import SliceScopeError
from core.extract import attribute_batch, load_workspace_model, recorded_scan_config, scan, workspace_model_spec
from core.mitigation.robustness import corrupt, load_pixels, normalise, read_object_mask, read_object_masks
from core.models import AttributionModel, load_module
from core.progress import ProgressFn, silent
from core.training import TrainingData
from core.versions import VERSION_FILE, read_version, version_family, version_root
from core.workspace import Workspace, is_workspace, read_json, save_json

SOURCES = ("annotations", "propagation")
NOISE_REGIONS = ("attribution", "object_masks")
JOB_FILE, STATUS_FILE, CHECKPOINT_FILE, CANCEL_FILE = "job.json", "status.json", "last-epoch.pt", "cancel"
MODEL_FILE, TORCHSCRIPT_FILE = "model.pt", "model.torchscript.pt"
DEFAULT_THRESHOLD = 0.5
_VALIDATION_SHARE = 0.1
_ATTRIBUTION_BATCH = 256


class Cancelled(Exception):
    """The user asked the job to stop; the last finished epoch is kept for a resume."""


@dataclass(frozen=True)
class TrainingParams:
    epochs: int = 8
    learning_rate: float = 2e-3
    batch_size: int = 64
    sigma: float = 1.0  # CoRM noise, in [0, 1] pixel units
    noise_region: str = "attribution"  # m: the GradCAM map, or outside the dataset's object masks
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise SliceScopeError(f"epochs = {self.epochs} and batch size = {self.batch_size} must be at least 1", "use e.g. 8 epochs of batch 64")
        if not 0 < self.learning_rate < 1:
            raise SliceScopeError(f"learning rate {self.learning_rate} is out of range", "use e.g. 0.002")
        if self.sigma < 0:
            raise SliceScopeError(f"noise sigma {self.sigma} is negative", "use e.g. 1.0")
        if self.noise_region not in NOISE_REGIONS:
            raise SliceScopeError(f"unknown noise region '{self.noise_region}'", f"use one of: {', '.join(NOISE_REGIONS)}")


@dataclass(frozen=True)
class MitigationJob:
    """Everything a mitigation depends on, frozen when it starts."""

    parent: Path  # the workspace (model version) to improve
    out: Path  # the new version's workspace
    source: str
    treated_slices: tuple[int, ...]
    slicing: str
    relabels: dict[str, str]
    training: TrainingData
    params: TrainingParams = field(default_factory=TrainingParams)

    @property
    def folder(self) -> Path:
        return job_folder(self.out)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.update(parent=str(self.parent), out=str(self.out))
        values["training"]["data"] = str(self.training.data)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> MitigationJob:
        training = values["training"]
        return cls(
            parent=Path(values["parent"]), out=Path(values["out"]), source=values["source"],
            treated_slices=tuple(values["treated_slices"]), slicing=values["slicing"], relabels=dict(values["relabels"]),
            training=TrainingData(**{**training, "data": Path(training["data"])}),  # a job of an older version lacks the later fields
            params=TrainingParams(**values["params"]),
        )


def job_folder(out: Path) -> Path:
    """The job's own folder, beside the new workspace (a scan needs an empty folder of its own)."""
    out = Path(out)
    return out.with_name(f"{out.name}.training")


def choose_treated_slices(kinds: dict[int, str], spuriousness: np.ndarray | None, source: str, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """The annotated spurious slices, or every slice whose spuriousness reaches ``threshold``."""
    if source not in SOURCES:
        raise SliceScopeError(f"unknown mitigation source '{source}'", f"use one of: {', '.join(SOURCES)}")
    if source == "annotations":
        treated = sorted(s for s, kind in kinds.items() if kind == "spurious")
        if not treated:
            raise SliceScopeError("no slice is annotated spurious", "annotate the slices to treat, or take them from propagation (`source`)")
        return treated
    if spuriousness is None or np.isnan(spuriousness).all():
        raise SliceScopeError("there is no spuriousness to propagate from", "annotate at least one slice as core or spurious first")
    treated = [int(s) for s in np.flatnonzero(np.nan_to_num(spuriousness, nan=0.0) >= threshold) if kinds.get(int(s)) != "core"]
    if not treated:
        raise SliceScopeError(f"no slice has spuriousness ≥ {threshold:.2f}", "lower the threshold or annotate more slices")
    return treated


# ---------------------------------------------------------------------------- status


def read_status(out: Path) -> dict | None:
    """The job's last reported status (state, epoch, history, message), or None without a job."""
    return read_json(job_folder(out) / STATUS_FILE)


def mitigation_unfinished(out: Path) -> bool:
    """Whether ``out`` is the new version of a mitigation that has not finished (its scan may be half-built)."""
    status = read_status(out)
    return status is not None and status["state"] != "done"


def request_cancel(out: Path) -> None:
    folder = job_folder(out)
    if folder.is_dir():
        (folder / CANCEL_FILE).write_text("cancel requested\n")


def _write_status(job: MitigationJob, state: str, message: str, history: list[dict], **extra) -> None:
    save_json(job.folder / STATUS_FILE, {
        "state": state, "message": message, "history": history, "epochs": job.params.epochs,
        "pid": os.getpid(), "updated": datetime.now(UTC).isoformat(timespec="seconds"), **extra,
    })


# ---------------------------------------------------------------------------- data


def _load_split(
    index: ImageIndex, size: int, relabels: dict[str, str], classes: list[str], progress: ProgressFn, step: str, with_masks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All images of a split as uint8 (N × 3 × S × S; a quarter of float32's memory), label indices and, when asked, object masks (N × S × S)."""
    preprocess = Preprocess(size, "none")
    unknown = sorted(set(index.table["label"]) - set(classes))
    if unknown:
        raise SliceScopeError(f"the training data has labels the model does not know: {', '.join(unknown[:5])}", "use training data with the model's classes")
    table = index.table
    if with_masks and "mask_path" not in table.columns:
        raise SliceScopeError("the training data has no mask_path column, so there are no object masks to put the noise around",
                              "put the noise on the attribution masks instead (`noise_region` attribution)")
    mask_paths = table["mask_path"] if with_masks else [None] * len(table)
    pixels, labels, masks = [], [], []
    for done, (image_id, path, label, mask_path) in enumerate(zip(table["image_id"], table["path"], table["label"], mask_paths), start=1):
        try:
            image = read_image(index.absolute_path(path)).image
        except (OSError, ValueError):
            continue  # an unreadable training image is left out, as a scan leaves it out
        pixels.append(np.rint(preprocess.to_array(image) * 255).astype(np.uint8))
        labels.append(classes.index(relabels.get(image_id, label)))
        if with_masks:
            masks.append(np.rint(read_object_mask(index.absolute_path(mask_path), size) * 255).astype(np.uint8))
        if done % 500 == 0 or done == len(table):
            progress(step, done, len(table))
    if not pixels:
        raise SliceScopeError(f"none of the {len(table)} training images could be read", "check the training data path")
    return torch.from_numpy(np.stack(pixels)), torch.tensor(labels, dtype=torch.long), torch.from_numpy(np.stack(masks)) if with_masks else None


def _as_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(255.0)


@torch.no_grad()
def _slice_centroids(workspace: Workspace, slice_ids: np.ndarray) -> torch.Tensor:
    features = torch.from_numpy(np.array(workspace.array("attribution_features"), dtype=np.float32))
    ids = torch.from_numpy(np.asarray(slice_ids, dtype=np.int64))
    n_slices = int(ids.max()) + 1
    sums = torch.zeros(n_slices, features.shape[1]).index_add_(0, ids, features)
    counts = torch.bincount(ids, minlength=n_slices).clamp_min(1)[:, None]
    return sums / counts


def attribute_training_images(model: AttributionModel, pixels: torch.Tensor, normalize: str, centroids: torch.Tensor, progress: ProgressFn) -> tuple[np.ndarray, torch.Tensor]:
    """Each training image's nearest slice (by F_W) and its GradCAM map (N × h × w)."""
    nearest, cams = [], []
    total = len(pixels)
    for start in range(0, total, _ATTRIBUTION_BATCH):
        batch = normalise(_as_float(pixels[start:start + _ATTRIBUTION_BATCH]), normalize).to(model.device)
        result = attribute_batch(model, batch)
        nearest.append(torch.cdist(result.attribution_features.cpu(), centroids).argmin(dim=1))
        cams.append(result.gradcam.cpu().half())
        progress("finding the treated training images", min(total, start + _ATTRIBUTION_BATCH), total)
    return torch.cat(nearest).numpy(), torch.cat(cams)


# ---------------------------------------------------------------------------- training


def spurious_region(cams: torch.Tensor, size: int) -> torch.Tensor:
    """m of CoRM for images of treated slices: their GradCAM maps (B × h × w), upsampled to B × 1 × S × S.

    In a spurious slice the model attends to the spurious feature, so where it
    looks is what the noise must cover.
    """
    return functional.interpolate(cams.float()[:, None], size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def outside_objects(masks: torch.Tensor) -> torch.Tensor:
    """m of CoRM from object masks (B × S × S, uint8 or [0, 1] floats): everything but the object, as B × 1 × S × S."""
    scale = 255.0 if masks.dtype == torch.uint8 else 1.0
    return 1.0 - masks.float()[:, None] / scale


def corm_preview(workspace: Workspace, rows: list[int], sigma: float, noise_region: str = "attribution", seed: int = 0) -> list[np.ndarray]:
    """What CoRM training would see for scanned images: x + m ⊙ z as H × W × 3 uint8 pictures."""
    size = int(workspace.manifest["transforms"]["image_size"])
    pixels = load_pixels(workspace, np.asarray(rows, dtype=np.int64), size)
    if noise_region == "object_masks":
        region = outside_objects(torch.from_numpy(read_object_masks(workspace, np.asarray(rows), size)))
    else:
        region = spurious_region(torch.from_numpy(np.array(workspace.array("gradcam")[rows], dtype=np.float32)), size)
    noisy = corrupt(pixels, region, sigma, torch.Generator().manual_seed(seed))
    return [np.rint(picture.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for picture in noisy]


def _evaluate(module: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, normalize: str, device: torch.device) -> tuple[float, float]:
    module.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), _ATTRIBUTION_BATCH):
            batch = normalise(_as_float(pixels[start:start + _ATTRIBUTION_BATCH]), normalize).to(device)
            target = labels[start:start + _ATTRIBUTION_BATCH].to(device)
            logits = module(batch)
            loss += functional.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    return loss / max(1, len(labels)), correct / max(1, len(labels))


def _train(
    job: MitigationJob,
    module: torch.nn.Module,
    device: torch.device,
    data: dict[str, torch.Tensor],
    normalize: str,
    report: ProgressFn,
    should_stop: Callable[[], bool],
) -> list[dict]:
    """Fine-tune ``module`` from the current version with CoRM noise, resuming from the last epoch saved."""
    params = job.params
    optimizer = torch.optim.AdamW(module.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    steps_per_epoch = -(-len(data["labels"]) // params.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.learning_rate, epochs=params.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.1)
    generator = torch.Generator().manual_seed(params.seed)
    history: list[dict] = []
    checkpoint_path = job.folder / CHECKPOINT_FILE
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, weights_only=True)
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        history = json.loads(saved["history"])
    size = data["pixels"].shape[-1]
    for epoch in range(len(history) + 1, params.epochs + 1):
        started = time.perf_counter()
        module.train()
        total_loss, correct, seen = 0.0, 0, 0
        order = torch.randperm(len(data["labels"]), generator=generator)
        for step, batch in enumerate(order.split(params.batch_size), start=1):
            if should_stop():
                raise Cancelled()
            pixels = _as_float(data["pixels"][batch])
            treated = data["treated"][batch]
            if treated.any() and params.sigma > 0:
                rows = batch[treated]
                region = outside_objects(data["object_masks"][rows]) if params.noise_region == "object_masks" else spurious_region(data["cams"][rows], size)
                pixels[treated] = corrupt(pixels[treated], region, params.sigma, generator)
            labels = data["labels"][batch].to(device)
            logits = module(normalise(pixels, normalize).to(device))
            loss = functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(batch)
            report(f"epoch {epoch}/{params.epochs}", step, steps_per_epoch)
        val_loss, val_acc = _evaluate(module, data["val_pixels"], data["val_labels"], normalize, device)
        history.append({
            "epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
            "val_loss": val_loss, "val_acc": val_acc, "seconds": round(time.perf_counter() - started, 2),
        })
        torch.save({
            "model": module.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "generator": generator.get_state(), "history": json.dumps(history),
        }, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)
        _write_status(job, "training", f"epoch {epoch} of {params.epochs} done", history)
        report("retraining", epoch, params.epochs)
    return history


def _prepare(job: MitigationJob, parent: Workspace, slice_ids: np.ndarray, report: ProgressFn) -> tuple[dict, torch.nn.Module, AttributionModel]:
    attribution_model = load_workspace_model(parent)
    normalize = parent.manifest["transforms"]["normalize"]
    classes = parent.classes
    size = attribution_model.image_size
    index = load_index(job.training.data, job.training.split)
    with_masks = job.params.noise_region == "object_masks"
    pixels, labels, object_masks = _load_split(index, size, job.relabels, classes, report, "loading training images", with_masks)
    if job.training.validation_split is not None:
        val_index = load_index(job.training.data, job.training.validation_split)
        val_pixels, val_labels, _ = _load_split(val_index, size, job.relabels, classes, report, "loading validation images")
    else:
        held_out = torch.randperm(len(labels), generator=torch.Generator().manual_seed(job.params.seed))
        n_val = max(1, int(len(labels) * _VALIDATION_SHARE))
        val_pixels, val_labels = pixels[held_out[:n_val]], labels[held_out[:n_val]]
        pixels, labels = pixels[held_out[n_val:]], labels[held_out[n_val:]]
        object_masks = None if object_masks is None else object_masks[held_out[n_val:]]
    nearest, cams = attribute_training_images(attribution_model, pixels, normalize, _slice_centroids(parent, slice_ids), report)
    treated = torch.from_numpy(np.isin(nearest, job.treated_slices))
    data = {"pixels": pixels, "labels": labels, "val_pixels": val_pixels, "val_labels": val_labels, "cams": cams, "treated": treated,
            "object_masks": object_masks}
    module = load_module(workspace_model_spec(parent)).to(attribution_model.device)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return data, module, attribution_model


def _save_model(job: MitigationJob, module: torch.nn.Module, size: int, device: torch.device) -> Path:
    module.eval()
    checkpoint = job.folder / MODEL_FILE
    torch.save(module.state_dict(), checkpoint)
    probe = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        torch.jit.trace(module, probe).save(str(job.folder / TORCHSCRIPT_FILE))
    return checkpoint


def run_mitigation(
    job: MitigationJob,
    slice_ids: np.ndarray,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Workspace:
    """Relabel, retrain with CoRM and scan the evaluation images into ``job.out``; resumable.

    ``slice_ids`` is the parent's slicing that ``job.treated_slices`` refers to.
    Returns the new version's workspace. A re-run of an interrupted job with the
    same inputs continues where it stopped; different inputs need another ``out``.
    """
    report = progress or silent
    parent = Workspace(job.parent)
    folder = job.folder
    if is_workspace(job.out):
        raise SliceScopeError(f"{job.out} already holds a workspace", "choose another `out` folder for the new version")
    folder.mkdir(parents=True, exist_ok=True)
    job_path = folder / JOB_FILE
    if job_path.is_file():
        recorded = json.loads(job_path.read_text())
        if recorded != json.loads(json.dumps(job.to_dict())):
            raise SliceScopeError(f"{folder} holds an unfinished mitigation with other settings", "resume it with the same settings, or choose another `out` folder")
    else:
        save_json(job_path, job.to_dict())
    (folder / CANCEL_FILE).unlink(missing_ok=True)
    stop = should_stop or (lambda: (folder / CANCEL_FILE).is_file())
    history: list[dict] = []
    try:
        _write_status(job, "preparing", "loading and attributing the training images", history)
        data, module, attribution_model = _prepare(job, parent, slice_ids, report)
        treated_count = int(data["treated"].sum())
        _write_status(job, "training", f"{treated_count:,} of {len(data['labels']):,} training images get CoRM noise", history, treated_images=treated_count)
        history = _train(job, module, attribution_model.device, data, parent.manifest["transforms"]["normalize"], report, stop)
        checkpoint = _save_model(job, module, attribution_model.image_size, attribution_model.device)
        _write_status(job, "scanning", "scanning the evaluation images with the new model", history, treated_images=treated_count)
        base = recorded_scan_config(parent)
        root = version_root(parent)
        number = _next_version_number(root)
        config = replace(base, model=replace(base.model, checkpoint=checkpoint), out=job.out, name=f"{root.name} · v{number}")
        workspace = scan(config, progress=report)
        save_json(workspace.path / VERSION_FILE, {
            "number": number, "parent": str(parent.path), "root": str(root.path),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "job": job.to_dict(),
            "treated_images": treated_count, "history": history,
        })
        _write_status(job, "done", f"version {number} is ready: {workspace.path}", history, treated_images=treated_count)
        return workspace
    except Cancelled:
        _write_status(job, "cancelled", "cancelled; run the same mitigation again to resume from the last finished epoch", history)
        raise SliceScopeError("the retraining was cancelled", "start it again to resume from the last finished epoch") from None
    except SliceScopeError as error:
        _write_status(job, "failed", str(error), history)
        raise


# ---------------------------------------------------------------------------- versions


def _next_version_number(root: Workspace) -> int:
    return max((read_version(w) or {"number": 1})["number"] for w in version_family(root)) + 1


def next_version_path(workspace: Workspace) -> Path:
    """A free folder beside the root for the next version: ``<root>-v2``, ``<root>-v3``…"""
    root = version_root(workspace)
    number = _next_version_number(root)
    while True:
        candidate = root.path.with_name(f"{root.path.name}-v{number}")
        if not candidate.exists() and not job_folder(candidate).exists():
            return candidate
        number += 1


def unfinished_jobs(workspace: Workspace) -> list[Path]:
    """The ``out`` folders of mitigations from ``workspace``'s line that started but did not finish."""
    root = version_root(workspace)
    found = []
    for folder in sorted(root.path.parent.glob(f"{root.path.name}-v*.training")):
        out = folder.with_name(folder.name.removesuffix(".training"))
        if mitigation_unfinished(out):
            found.append(out)
    return found


def read_job(out: Path) -> MitigationJob | None:
    recorded = read_json(job_folder(out) / JOB_FILE)
    try:
        return None if recorded is None else MitigationJob.from_dict(recorded)
    except (KeyError, TypeError):
        return None
