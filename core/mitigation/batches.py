"""Augmentation batches (DASH's workflow): made from the training images, previewed, accepted or discarded, kept as history.

A batch is a folder under the version line's root, ``<root>/augmentations/batch-NNN``:
``images.npz`` (the counterfactuals as uint8 pixels, their labels by class name,
which source and donor each came from) and ``batch.json`` (its parameters, what
it was made from, its state and the sha256 of ``images.npz``). A batch is
written into ``batch-NNN.partial`` and renamed when complete, so a process
killed mid-batch leaves no batch that looks finished. Once made, its images are
never rewritten; accepting or discarding it rewrites only ``batch.json``'s
state, and only from ``preview``. A retraining records the ids and hashes of the
batches it used, and reading a batch checks its hash, so a batch changed on disk
is refused, never silently trained on. Which versions used a batch is read
from those versions (their ``version.json``), not written into the batch.

Sources and styles are groups of training images: the training images nearest
to some of the workspace's slices, a cluster of the Cluster View (K-Means of
the training images' F), or the rest of the training set.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from torch.nn import functional

from core.data import load_index
from core.errors import SliceScopeError
from core.extract import load_workspace_model
from core.mitigation.augment import FOREGROUND_SOURCES, AugmentParams, composite, pair_donors, segment_foreground, usable_mask
from core.mitigation.trainset import attribute_training_images, load_images, slice_centroids
from core.progress import ProgressFn, silent
from core.training import TrainingData
from core.versions import read_version, version_family
from core.workspace import Workspace, read_json, save_json

BATCH_FOLDER, BATCH_FILE, IMAGES_FILE = "augmentations", "batch.json", "images.npz"
STATES = ("preview", "accepted", "discarded")
GROUP_KINDS = ("slice", "cluster", "rest")
CLUSTER_RANGE = (2, 20)
DEFAULT_MAX_IMAGES = 1000
MIN_DONORS = 5  # a source needs this many style images of other classes to draw its donor from


@dataclass(frozen=True)
class ImageGroup:
    """Some training images: those nearest to slices, a style cluster's, or the rest (everything not in the other group)."""

    kind: str
    ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in GROUP_KINDS:
            raise SliceScopeError(f"unknown image group '{self.kind}'", "write slice:1,2 or cluster:3 or rest")
        if self.kind != "rest" and not self.ids:
            raise SliceScopeError(f"{self.kind}: names no {self.kind}", f"write e.g. {self.kind}:1,2")

    @classmethod
    def parse(cls, text: str) -> ImageGroup:
        """``slice:1,2``, ``cluster:3`` or ``rest``."""
        kind, _, ids = str(text).strip().partition(":")
        try:
            return cls(kind.strip(), tuple(int(part) for part in ids.split(",") if part.strip()))
        except ValueError:
            raise SliceScopeError(f"'{text}' does not name training images", "write slice:1,2 or cluster:3 or rest") from None

    def __str__(self) -> str:
        return self.kind if self.kind == "rest" else f"{self.kind}:{','.join(map(str, self.ids))}"

    def describe(self) -> str:
        if self.kind == "rest":
            return "the rest of the training set"
        noun = self.kind if len(self.ids) == 1 else f"{self.kind}s"
        return f"{noun} {', '.join(map(str, self.ids))}"


@dataclass
class TrainingView:
    """What the augmentation reads about the training images (H × W × 3 uint8 pixels, labels, slices, clusters' features)."""

    image_ids: list[str]
    pixels: np.ndarray
    labels: np.ndarray
    nearest_slice: np.ndarray
    features: np.ndarray
    cams: np.ndarray  # N × h × w GradCAM of the current model
    classes: list[str]

    def rows(self, group: ImageGroup, clusters: np.ndarray | None, other: ImageGroup | None = None) -> np.ndarray:
        if group.kind == "slice":
            return np.flatnonzero(np.isin(self.nearest_slice, group.ids))
        if group.kind == "cluster":
            if clusters is None:
                raise SliceScopeError(f"{group} names a style cluster, but no clustering was given", "cluster the training set first (`clusters`)")
            if max(group.ids) > int(clusters.max()):
                raise SliceScopeError(f"{group}: there are only clusters 0 to {int(clusters.max())}", "name an existing cluster")
            return np.flatnonzero(np.isin(clusters, group.ids))
        if other is None or other.kind == "rest":
            raise SliceScopeError("sources and style cannot both be the rest", "name slices or a cluster for one of them")
        return np.setdiff1d(np.arange(len(self.labels)), self.rows(other, clusters))


def style_clusters(features: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """DASH's Cluster View: K-Means of the standardised F into ``k`` clusters; labels and each image's distance to its centroid."""
    low, high = CLUSTER_RANGE
    if not low <= k <= high:
        raise SliceScopeError(f"k = {k} style clusters is out of range", f"choose {low} to {high} clusters, as DASH does")
    if len(features) < k:
        raise SliceScopeError(f"{len(features)} training images cannot form {k} clusters", f"choose {len(features)} clusters or fewer")
    scaled = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(scaled)
    distances = np.linalg.norm(scaled - model.cluster_centers_[model.labels_], axis=1)
    return model.labels_.astype(np.int64), distances


def cluster_columns(clusters: np.ndarray, distances: np.ndarray, per_cluster: int) -> dict[int, np.ndarray]:
    """Each cluster's ``per_cluster`` images nearest its centroid (rows of the training view), the Cluster View's columns."""
    return {int(c): np.flatnonzero(clusters == c)[np.argsort(distances[clusters == c], kind="stable")[:per_cluster]] for c in np.unique(clusters)}


# ---------------------------------------------------------------------------- foregrounds


def object_boxes(boxes: pd.DataFrame, object_terms: Sequence[str]) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per image id, the crowd's boxes whose term names an object (``object_terms``, e.g. the class names), in image pixels."""
    terms = {term.strip().lower() for term in object_terms}
    named = boxes[boxes["entity_type"].astype(str).str.strip().str.lower().str.rstrip("s").isin(terms | {t.rstrip("s") for t in terms})]
    found: dict[str, list] = {}
    for row in named.itertuples():
        found.setdefault(str(row.image_id), []).append((float(row.x0), float(row.y0), float(row.x1), float(row.y1)))
    return found


def foreground_masks(
    view: TrainingView,
    rows: np.ndarray,
    source: str,
    core_slices: Sequence[int] = (),
    crowd_boxes: Mapping[str, list[tuple[float, float, float, float]]] | None = None,
    progress: ProgressFn = silent,
) -> tuple[np.ndarray, dict[str, int]]:
    """The object mask of each of ``rows`` (N × H × W bool) and how many came from which source.

    ``source`` is the analyst's first choice; images it cannot serve (no crowd box
    on them, not in a slice annotated core) fall back on the boundary-prior
    segmentation, and the counts say so.
    """
    if source not in FOREGROUND_SOURCES:
        raise SliceScopeError(f"unknown foreground source '{source}'", f"use one of: {', '.join(FOREGROUND_SOURCES)}")
    size = view.pixels.shape[1]
    boxes = crowd_boxes or {}
    if source == "crowd" and not any(view.image_ids[r] in boxes for r in rows):
        raise SliceScopeError("the crowd campaign has no object boxes on these training images",
                              "run a campaign on the training images (or name the object terms), or take the foreground from segmentation")
    if source == "attribution" and not np.isin(view.nearest_slice[rows], list(core_slices)).any():
        raise SliceScopeError("none of these training images lies in a slice annotated core",
                              "annotate the slices whose maps show the object as core, or take the foreground from segmentation")
    cams = None
    if source == "attribution":
        cams = functional.interpolate(torch.from_numpy(view.cams[rows].astype(np.float32))[:, None], size=(size, size), mode="bilinear",
                                      align_corners=False)[:, 0].numpy()
    masks = np.zeros((len(rows), size, size), dtype=bool)
    counts = dict.fromkeys(FOREGROUND_SOURCES, 0)
    for position, row in enumerate(rows):
        image_boxes = boxes.get(view.image_ids[row]) if source == "crowd" else None
        if image_boxes:
            x0, y0 = min(b[0] for b in image_boxes), min(b[1] for b in image_boxes)
            x1, y1 = max(b[2] for b in image_boxes), max(b[3] for b in image_boxes)
            masks[position], used = segment_foreground(view.pixels[row], box=(x0, y0, x1, y1)), "crowd"
        elif cams is not None and view.nearest_slice[row] in core_slices:
            masks[position], used = segment_foreground(view.pixels[row], attribution=cams[position]), "attribution"
        else:
            masks[position], used = segment_foreground(view.pixels[row]), "segmentation"
        counts[used] += 1
        if (position + 1) % 200 == 0 or position + 1 == len(rows):
            progress("cutting out objects", position + 1, len(rows))
    return masks, counts


# ---------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class BatchRecord:
    """One batch as ``batch.json`` records it."""

    batch_id: str
    state: str
    created: str
    sources: str
    style: str
    foreground: str
    params: dict
    images: int
    per_class: dict
    per_source_slice: dict
    per_style_cluster: dict
    foreground_counts: dict
    left_out: int  # sources of the style's only class, and sources or donors without a usable object mask
    sha256: str
    clusters: int = 0  # k of the Cluster View the style refers to (0: none)


def batches_folder(root: Workspace | Path) -> Path:
    return Path(getattr(root, "path", root)) / BATCH_FOLDER


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def interrupted_batches(root: Workspace | Path) -> list[str]:
    """Batches whose making was interrupted (their ``.partial`` folders): they never count as made."""
    folder = batches_folder(root)
    return sorted(p.name.removesuffix(".partial") for p in folder.glob("batch-*.partial")) if folder.is_dir() else []


def _next_batch_id(folder: Path) -> str:
    numbers = [int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("batch-*") if p.name.split("-")[1].split(".")[0].isdigit()]
    return f"batch-{max(numbers, default=0) + 1:03d}"


def make_batch(
    root: Workspace,
    view: TrainingView,
    sources: ImageGroup,
    style: ImageGroup,
    params: AugmentParams = AugmentParams(),
    foreground: str = "segmentation",
    clusters: np.ndarray | None = None,
    core_slices: Sequence[int] = (),
    crowd_boxes: Mapping[str, list] | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    progress: ProgressFn | None = None,
) -> BatchRecord:
    """Counterfactuals of ``sources`` in the look of ``style`` (donors of other classes), saved as a previewed batch of ``root``'s line."""
    report = progress or silent
    if max_images < 1:
        raise SliceScopeError(f"max_images = {max_images} makes an empty batch", "make at least 1 image (1,000 is a good batch)")
    source_rows = view.rows(sources, clusters, style)
    style_rows = view.rows(style, clusters, sources)
    if len(source_rows) == 0:
        raise SliceScopeError(f"no training image belongs to {sources.describe()}", "pick sources with training images")
    if len(style_rows) == 0:
        raise SliceScopeError(f"no training image belongs to {style.describe()}", "pick a style with training images")
    rng = np.random.default_rng(params.seed)
    # A source whose class is the only one the style has cannot change context; checked before cutting out anything.
    servable = _servable(view.labels[source_rows], view.labels[style_rows])
    if not servable.any():
        raise SliceScopeError(f"{style.describe()} has no images of another class than the sources'",
                              "pick a style cluster or slice with images of other classes (or other sources)")
    unservable = int((~servable).sum())
    source_rows = source_rows[servable]
    wanted = max(1, max_images // params.per_source)
    if len(source_rows) > wanted:
        source_rows = np.sort(rng.choice(source_rows, wanted, replace=False))
    style_rows = style_rows if len(style_rows) <= 2 * wanted else np.sort(rng.choice(style_rows, 2 * wanted, replace=False))
    everything = np.union1d(source_rows, style_rows)
    masks, counts = foreground_masks(view, everything, foreground, core_slices, crowd_boxes, report)
    usable = np.array([usable_mask(m) for m in masks])
    mask_of = dict(zip(everything.tolist(), range(len(everything))))
    good_sources = source_rows[usable[[mask_of[r] for r in source_rows]]]
    good_donors = style_rows[usable[[mask_of[r] for r in style_rows]]]
    left_out = unservable + len(source_rows) - len(good_sources) + len(style_rows) - len(good_donors)
    if len(good_sources) == 0 or len(good_donors) == 0:
        raise SliceScopeError("no object could be cut out of the " + ("sources" if len(good_sources) == 0 else "style's images")
                              + " (every mask covered nothing or the whole image)", "take the foreground from another source, or pick other images")
    still_servable = _servable(view.labels[good_sources], view.labels[good_donors])
    left_out += int((~still_servable).sum())
    good_sources = good_sources[still_servable]
    if len(good_sources) == 0:
        raise SliceScopeError("once objects were cut out, the style's usable images are all of the sources' class",
                              "pick a style with more images of other classes, or another foreground source")
    donors = good_donors[pair_donors(view.labels[good_sources], view.labels[good_donors], params.per_source, rng)]
    repeated = np.repeat(good_sources, params.per_source)
    pictures = np.empty((len(repeated), *view.pixels.shape[1:]), dtype=np.uint8)
    for position, (source_row, donor_row) in enumerate(zip(repeated, donors)):
        pictures[position] = composite(view.pixels[source_row], masks[mask_of[source_row]], view.pixels[donor_row], masks[mask_of[donor_row]], params)
        if (position + 1) % 200 == 0 or position + 1 == len(repeated):
            report("compositing counterfactuals", position + 1, len(repeated))

    folder = batches_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("batch-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    batch_id = _next_batch_id(folder)
    partial = folder / f"{batch_id}.partial"
    partial.mkdir()
    labels = np.array([view.classes[c] for c in view.labels[repeated]])
    np.savez_compressed(
        partial / IMAGES_FILE, pixels=pictures, labels=labels,
        source_ids=np.array([view.image_ids[r] for r in repeated]), donor_ids=np.array([view.image_ids[r] for r in donors]),
        source_slices=view.nearest_slice[repeated], style_clusters=(clusters[donors] if clusters is not None else np.full(len(donors), -1)),
    )
    record = BatchRecord(
        batch_id=batch_id, state="preview", created=datetime.now(UTC).isoformat(timespec="seconds"),
        sources=str(sources), style=str(style), foreground=foreground, params=asdict(params), images=len(pictures),
        per_class=_counts(labels), per_source_slice=_counts(view.nearest_slice[repeated]),
        per_style_cluster=_counts(clusters[donors]) if clusters is not None else {}, foreground_counts=counts,
        left_out=int(left_out), sha256=_sha256(partial / IMAGES_FILE), clusters=0 if clusters is None else int(clusters.max()) + 1,
    )
    save_json(partial / BATCH_FILE, asdict(record))
    partial.replace(folder / batch_id)
    return record


def _servable(source_labels: np.ndarray, donor_labels: np.ndarray) -> np.ndarray:
    """Sources with at least MIN_DONORS donors of another class: fewer would paste a whole class onto one or two backgrounds."""
    classes, counts = np.unique(donor_labels, return_counts=True)
    others = {int(c): len(donor_labels) - int(n) for c, n in zip(classes, counts)}
    return np.array([others.get(int(label), len(donor_labels)) >= MIN_DONORS for label in source_labels], dtype=bool)


def _counts(values: np.ndarray) -> dict[str, int]:
    return {str(key): int(count) for key, count in pd.Series(values).value_counts().sort_index().items()}


def read_batch(root: Workspace | Path, batch_id: str) -> BatchRecord:
    recorded = read_json(batches_folder(root) / batch_id / BATCH_FILE)
    if recorded is None:
        raise SliceScopeError(f"there is no augmentation batch {batch_id}", "pick one from the augmentation history (`batches`)")
    return BatchRecord(**recorded)


def list_batches(root: Workspace | Path) -> list[BatchRecord]:
    """Every finished batch of the line, oldest first."""
    folder = batches_folder(root)
    if not folder.is_dir():
        return []
    return [read_batch(root, p.name) for p in sorted(folder.glob("batch-*")) if p.is_dir() and not p.name.endswith(".partial") and (p / BATCH_FILE).is_file()]


def _set_state(root: Workspace | Path, batch_id: str, state: str) -> BatchRecord:
    record = read_batch(root, batch_id)
    if record.state != "preview":
        raise SliceScopeError(f"{batch_id} is already {record.state}", "make a new batch to change your mind; a decided batch stays as it is")
    changed = BatchRecord(**{**asdict(record), "state": state})
    save_json(batches_folder(root) / batch_id / BATCH_FILE, asdict(changed))
    return changed


def accept_batch(root: Workspace | Path, batch_id: str) -> BatchRecord:
    if read_batch(root, batch_id).images == 0:
        raise SliceScopeError(f"{batch_id} holds no images", "make a batch from sources with usable objects, then accept it")
    return _set_state(root, batch_id, "accepted")


def discard_batch(root: Workspace | Path, batch_id: str) -> BatchRecord:
    return _set_state(root, batch_id, "discarded")


def batch_images(root: Workspace | Path, batch_id: str) -> dict[str, np.ndarray]:
    """A batch's arrays (pixels, labels, source_ids, donor_ids, source_slices, style_clusters), refused if they changed since made."""
    record = read_batch(root, batch_id)
    path = batches_folder(root) / batch_id / IMAGES_FILE
    if not path.is_file() or _sha256(path) != record.sha256:
        raise SliceScopeError(f"the images of {batch_id} changed or went missing since it was made", "make the batch again")
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def load_batches(root: Workspace | Path, batch_ids: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The accepted batches' images (N × H × W × 3 uint8) and label indices, for a retraining."""
    if not batch_ids:
        raise SliceScopeError("augmentation needs at least one accepted batch", "accept a previewed batch (`batches`), or retrain without augment")
    pixels, labels = [], []
    for batch_id in batch_ids:
        record = read_batch(root, batch_id)
        if record.state != "accepted":
            raise SliceScopeError(f"{batch_id} is {record.state}, not accepted", "accept it first, or leave it out of `batches`")
        arrays = batch_images(root, batch_id)
        unknown = sorted(set(arrays["labels"].tolist()) - set(classes))
        if unknown:
            raise SliceScopeError(f"{batch_id} has labels the model does not know: {', '.join(unknown[:5])}", "make the batch from this model line's training data")
        pixels.append(arrays["pixels"])
        labels.append(np.array([list(classes).index(label) for label in arrays["labels"]]))
    return np.concatenate(pixels), np.concatenate(labels)


def batch_history(root: Workspace) -> pd.DataFrame:
    """One row per batch: parameters, state, counts, and the versions of the line trained with it."""
    used: dict[str, list[str]] = {}
    for member in version_family(root):
        info = read_version(member) or {}
        for batch_id in info.get("job", {}).get("batches", []):
            used.setdefault(batch_id, []).append(f"v{info.get('number', 1)}")
    rows = []
    for record in list_batches(root):
        params = record.params
        changes = " + ".join(name for name, on in (("background", params.get("background")), ("colour", params.get("colour"))) if on)
        rows.append({
            "batch": record.batch_id, "state": record.state, "created": record.created, "images": record.images,
            "sources": record.sources, "style": record.style + (f" (of {record.clusters} clusters)" if record.clusters else ""),
            "changes": changes, "foreground": record.foreground, "per class": _words(record.per_class),
            "left out": record.left_out, "versions": ", ".join(used.get(record.batch_id, [])),
        })
    columns = ["batch", "state", "created", "images", "sources", "style", "changes", "foreground", "per class", "left out", "versions"]
    return pd.DataFrame(rows, columns=columns)


def _words(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counts.items())


def accepted_batch_ids(root: Workspace) -> list[str]:
    return [record.batch_id for record in list_batches(root) if record.state == "accepted"]


def load_training_view(
    workspace: Workspace,
    slice_ids: np.ndarray,
    relabels: Mapping[str, str],
    training: TrainingData,
    progress: ProgressFn | None = None,
) -> TrainingView:
    """Decode and attribute ``training`` once, for the Cluster View and for making batches."""
    report = progress or silent
    model = load_workspace_model(workspace)
    loaded = load_images(load_index(training.data, training.split), model.image_size, dict(relabels), workspace.classes, report, "loading training images")
    attribution = attribute_training_images(model, loaded.pixels, workspace.manifest["transforms"]["normalize"], slice_centroids(workspace, slice_ids), report)
    return TrainingView(
        image_ids=loaded.image_ids, pixels=loaded.pixels.permute(0, 2, 3, 1).contiguous().numpy(), labels=loaded.labels.numpy(),
        nearest_slice=attribution.nearest_slice, features=attribution.features, cams=attribution.cams.float().numpy(), classes=list(workspace.classes),
    )

