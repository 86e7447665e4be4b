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
import pandas as pd
import torch
from torch.nn import functional

from core.data import load_index
from core.errors import SliceScopeError
from core.extract import load_workspace_model, recorded_scan_config, scan, workspace_model_spec
from core.memory import retained_heap
from core.mitigation.batches import load_batches, read_batch
from core.mitigation.robustness import corrupt, load_pixels, normalise, read_object_masks
from core.mitigation.trainset import as_float, attribute_training_images, load_images, slice_centroids
from core.models import AttributionModel, load_module
from core.progress import ProgressFn, silent
from core.training import TrainingData
from core.versions import VERSION_FILE, read_version, version_family, version_root
from core.workspace import Workspace, is_workspace, read_json, save_json

SOURCES = ("annotations", "propagation")
# What a retraining does; any combination, except that CoRM's fresh noise per epoch needs the whole network trained.
METHODS = ("corm", "augment", "reweight", "last_layer")
NOISE_REGIONS = ("attribution", "object_masks")
JOB_FILE, STATUS_FILE, CHECKPOINT_FILE, CANCEL_FILE = "job.json", "status.json", "last-epoch.pt", "cancel"
MODEL_FILE, TORCHSCRIPT_FILE = "model.pt", "model.torchscript.pt"
DEFAULT_THRESHOLD = 0.5
_VALIDATION_SHARE = 0.1
MIN_GROUP_SIZE = 20  # slice-balanced sampling: the smallest group size a weight assumes
_EVALUATION_BATCH = 256


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
    from_scratch: bool = False  # start from freshly initialised weights instead of the current version's

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
    methods: tuple[str, ...] = ("corm",)
    batches: tuple[str, ...] = ()  # accepted augmentation batches of the line (with augment)
    batch_hashes: tuple[str, ...] = ()  # their images' sha256 when the job was planned
    group_column: str | None = None  # reweight over this column of the training data (known groups) instead of the slices

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
            # a job of an older version was CoRM and nothing else
            methods=tuple(values.get("methods", ("corm",))), batches=tuple(values.get("batches", ())), batch_hashes=tuple(values.get("batch_hashes", ())),
            group_column=values.get("group_column"),
        )


def job_folder(out: Path) -> Path:
    """The job's own folder, beside the new workspace (a scan needs an empty folder of its own)."""
    out = Path(out)
    return out.with_name(f"{out.name}.training")


def check_methods(methods: tuple[str, ...], params: TrainingParams, batches: tuple[str, ...], group_column: str | None = None) -> tuple[str, ...]:
    """The retraining methods in their canonical order, refused when unknown or when they cannot work together."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SliceScopeError(f"unknown mitigation method '{', '.join(unknown) or '(none)'}'", f"use one or more of: {', '.join(METHODS)}")
    if "corm" in methods and "last_layer" in methods:
        raise SliceScopeError("CoRM draws new noise every epoch, which a last-layer refit on frozen features cannot see",
                              "retrain the whole network for corm (drop last_layer from `methods`)")
    if "last_layer" in methods and params.from_scratch:
        raise SliceScopeError("a last-layer refit keeps the current features, so it cannot start from scratch", "drop `from_scratch` or last_layer")
    if "augment" in methods and not batches:
        raise SliceScopeError("augmentation needs at least one accepted batch", "accept a previewed batch (`batches`), or retrain without augment")
    if group_column is not None and "reweight" not in methods:
        raise SliceScopeError(f"`group_column` {group_column} balances groups, but reweight is not among the methods", "add reweight to `methods`")
    if batches and "augment" not in methods:
        raise SliceScopeError("batches were named but augment is not among the methods", "add augment to `methods`, or leave out `batches`")
    return tuple(method for method in METHODS if method in methods)


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
        for start in range(0, len(labels), _EVALUATION_BATCH):
            batch = normalise(as_float(pixels[start:start + _EVALUATION_BATCH]), normalize).to(device)
            target = labels[start:start + _EVALUATION_BATCH].to(device)
            logits = module(batch)
            loss += functional.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    return loss / max(1, len(labels)), correct / max(1, len(labels))


def _sampling_weights(labels: torch.Tensor, groups: np.ndarray) -> torch.Tensor:
    """Group-balanced sampling over (label, slice) groups: each group drawn equally often (JTT/DFR with discovered slices as groups).

    A group smaller than MIN_GROUP_SIZE is weighted as if it had that many images: among ~200 (label, slice)
    groups a handful of singletons would otherwise be drawn hundreds of times an epoch (on the demo, worst
    group 0.50 without the floor against 0.57 with it).
    """
    keys = pd.Series(labels.numpy()).astype(str) + "|" + pd.Series(groups).astype(str)
    weights = 1.0 / np.maximum(keys.map(keys.value_counts()).to_numpy(dtype=np.float64), MIN_GROUP_SIZE)
    return torch.from_numpy(weights / weights.sum())


def _epoch_order(data: dict, generator: torch.Generator) -> torch.Tensor:
    n = len(data["labels"])
    if data.get("weights") is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(data["weights"], n, replacement=True, generator=generator)


def _train(
    job: MitigationJob,
    module: torch.nn.Module,
    device: torch.device,
    data: dict[str, torch.Tensor],
    normalize: str,
    report: ProgressFn,
    should_stop: Callable[[], bool],
) -> list[dict]:
    """Fine-tune ``module`` (or train it from scratch) with the job's methods, resuming from the last epoch saved."""
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
    with_noise = "corm" in job.methods and params.sigma > 0
    for epoch in range(len(history) + 1, params.epochs + 1):
        started = time.perf_counter()
        module.train()
        total_loss, correct, seen = 0.0, 0, 0
        for step, batch in enumerate(_epoch_order(data, generator).split(params.batch_size), start=1):
            if should_stop():
                raise Cancelled()
            pixels = as_float(data["pixels"][batch])
            treated = data["treated"][batch]
            if with_noise and treated.any():
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


def last_linear_layer(module: torch.nn.Module) -> torch.nn.Linear:
    """The model's final linear layer (the last ``nn.Linear`` it holds), which a last-layer refit retrains."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not layers:
        raise SliceScopeError("the model has no linear layer to refit", "retrain the whole network (drop last_layer from `methods`)")
    return layers[-1]


@torch.no_grad()
def _layer_inputs(module: torch.nn.Module, layer: torch.nn.Linear, pixels: torch.Tensor, normalize: str, device: torch.device,
                  report: ProgressFn, step: str) -> torch.Tensor:
    """What ``layer`` receives for each image (the frozen features a last-layer refit trains on)."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].detach().flatten(1).cpu()))
    module.eval()
    try:
        for start in range(0, len(pixels), _EVALUATION_BATCH):
            module(normalise(as_float(pixels[start:start + _EVALUATION_BATCH]), normalize).to(device))
            report(step, min(len(pixels), start + _EVALUATION_BATCH), len(pixels))
    finally:
        hook.remove()
    return torch.cat(captured)


def _refit_last_layer(
    job: MitigationJob, module: torch.nn.Module, device: torch.device, data: dict, normalize: str, report: ProgressFn, should_stop: Callable[[], bool],
) -> list[dict]:
    """DFR (Kirichenko et al.): retrain only the final linear layer, on frozen features, with the job's sampling.

    The features are computed once, so an epoch costs a pass over a small matrix:
    seconds where full retraining takes minutes. Not checkpointed: a resumed job
    simply refits again.
    """
    params = job.params
    layer = last_linear_layer(module)
    features = _layer_inputs(module, layer, data["pixels"], normalize, device, report, "computing frozen features")
    val_features = _layer_inputs(module, layer, data["val_pixels"], normalize, device, report, "computing validation features")
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for parameter in layer.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    history: list[dict] = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        total_loss, correct = 0.0, 0
        order = _epoch_order(data, generator)
        for batch in order.split(params.batch_size):
            if should_stop():
                raise Cancelled()
            labels = data["labels"][batch].to(device)
            logits = layer(features[batch].to(device))
            loss = functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels).sum().item()
        with torch.no_grad():
            val_logits = layer(val_features.to(device))
            val_labels = data["val_labels"].to(device)
            val_loss = functional.cross_entropy(val_logits, val_labels).item()
            val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        history.append({"epoch": epoch, "train_loss": total_loss / len(order), "train_acc": correct / len(order), "val_loss": val_loss,
                        "val_acc": val_acc, "seconds": round(time.perf_counter() - started, 2)})
        _write_status(job, "training", f"epoch {epoch} of {params.epochs} done (last layer)", history)
        report("refitting the last layer", epoch, params.epochs)
    return history


def _reinitialise(module: torch.nn.Module) -> None:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    torch.random.set_rng_state(generator_state)


def _prepare(job: MitigationJob, parent: Workspace, slice_ids: np.ndarray, report: ProgressFn) -> tuple[dict, torch.nn.Module, AttributionModel]:
    attribution_model = load_workspace_model(parent)
    normalize = parent.manifest["transforms"]["normalize"]
    classes = parent.classes
    size = attribution_model.image_size
    index = load_index(job.training.data, job.training.split)
    with_masks = "corm" in job.methods and job.params.noise_region == "object_masks"
    loaded = load_images(index, size, job.relabels, classes, report, "loading training images", with_masks, job.group_column)
    groups = loaded.groups
    pixels, labels, object_masks = loaded.pixels, loaded.labels, loaded.object_masks
    if job.training.validation_split is not None:
        validation = load_images(load_index(job.training.data, job.training.validation_split), size, job.relabels, classes, report, "loading validation images")
        val_pixels, val_labels = validation.pixels, validation.labels
    else:
        held_out = torch.randperm(len(labels), generator=torch.Generator().manual_seed(job.params.seed))
        n_val = max(1, int(len(labels) * _VALIDATION_SHARE))
        val_pixels, val_labels = pixels[held_out[:n_val]], labels[held_out[:n_val]]
        pixels, labels = pixels[held_out[n_val:]], labels[held_out[n_val:]]
        object_masks = None if object_masks is None else object_masks[held_out[n_val:]]
        groups = None if groups is None else groups[held_out[n_val:].numpy()]
    originals = len(labels)
    if "augment" in job.methods:
        extra_pixels, extra_labels = load_batches(version_root(parent), job.batches, classes)
        _check_batch_hashes(job, parent)
        if extra_pixels.shape[1:3] != (size, size):
            raise SliceScopeError(f"the batches' images are {extra_pixels.shape[1]} px but the model reads {size} px", "make the batches from this model line")
        pixels = torch.cat([pixels, torch.from_numpy(extra_pixels).permute(0, 3, 1, 2).contiguous()])
        labels = torch.cat([labels, torch.from_numpy(extra_labels).long()])
    attribution = attribute_training_images(attribution_model, pixels, normalize, slice_centroids(parent, slice_ids), report)
    treated = torch.from_numpy(np.isin(attribution.nearest_slice, job.treated_slices) & (np.arange(len(labels)) < originals))
    data = {"pixels": pixels, "labels": labels, "val_pixels": val_pixels, "val_labels": val_labels, "cams": attribution.cams, "treated": treated,
            "object_masks": object_masks, "augmented": len(labels) - originals,
            "weights": _sampling_weights(labels, _balance_groups(job, attribution.nearest_slice, groups, originals)) if "reweight" in job.methods else None}
    module = load_module(workspace_model_spec(parent)).to(attribution_model.device)
    if job.params.from_scratch:
        _reinitialise(module)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return data, module, attribution_model


def _balance_groups(job: MitigationJob, nearest_slice: np.ndarray, groups: np.ndarray | None, originals: int) -> np.ndarray:
    """What reweighting balances: each image's slice, or its value of ``job.group_column`` (counterfactuals form a group of their own)."""
    if groups is None:
        return nearest_slice
    return np.concatenate([groups, np.full(len(nearest_slice) - originals, "counterfactual")])


def _check_batch_hashes(job: MitigationJob, parent: Workspace) -> None:
    """A resumed job must train on the very batches it was planned with."""
    current = tuple(read_batch(version_root(parent), batch_id).sha256 for batch_id in job.batches)
    if job.batch_hashes and current != job.batch_hashes:
        raise SliceScopeError("an augmentation batch changed since this retraining was planned", "plan the retraining again (choose another `out`)")


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
    """Relabel, retrain with the job's methods and scan the evaluation images into ``job.out``; resumable.

    ``slice_ids`` is the parent's slicing that ``job.treated_slices`` refers to.
    Returns the new version's workspace. A re-run of an interrupted job with the
    same inputs continues where it stopped; different inputs need another ``out``.
    """
    report = progress or silent
    parent = Workspace(job.parent)
    folder = job.folder
    if is_workspace(job.out):
        raise SliceScopeError(f"{job.out} already holds a workspace", "choose another `out` folder for the new version")
    check_methods(job.methods, job.params, job.batches, job.group_column)
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
        # Training steps allocate the same large activations and gradients over and over: keep freed blocks for the next step.
        with retained_heap():
            data, module, attribution_model = _prepare(job, parent, slice_ids, report)
            treated_count = int(data["treated"].sum()) if "corm" in job.methods else 0
            _write_status(job, "training", _training_message(job, data, treated_count), history, treated_images=treated_count)
            retrain = _refit_last_layer if "last_layer" in job.methods else _train
            history = retrain(job, module, attribution_model.device, data, parent.manifest["transforms"]["normalize"], report, stop)
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
            "treated_images": treated_count, "augmented_images": data["augmented"], "history": history,
        })
        _write_status(job, "done", f"version {number} is ready: {workspace.path}", history, treated_images=treated_count)
        return workspace
    except Cancelled:
        _write_status(job, "cancelled", "cancelled; run the same mitigation again to resume from the last finished epoch", history)
        raise SliceScopeError("the retraining was cancelled", "start it again to resume from the last finished epoch") from None
    except SliceScopeError as error:
        _write_status(job, "failed", str(error), history)
        raise


def _training_message(job: MitigationJob, data: dict, treated_count: int) -> str:
    parts = [f"{len(data['labels']):,} training images"]
    if data["augmented"]:
        parts.append(f"{data['augmented']:,} of them counterfactuals from {len(job.batches)} batch{'es' if len(job.batches) > 1 else ''}")
    if "corm" in job.methods:
        parts.append(f"{treated_count:,} get CoRM noise")
    if "reweight" in job.methods:
        parts.append("sampled evenly over (label, slice) groups")
    if "last_layer" in job.methods:
        parts.append("only the last layer is refitted")
    return "; ".join(parts)


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
