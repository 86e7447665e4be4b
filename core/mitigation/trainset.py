"""The training images a mitigation works on: decoded once, placed in the workspace's slices, attributed.

Slices are found on the scanned (evaluation) images, but models are retrained
on their training data. A training image belongs to the slice whose centroid
(mean F_W) is nearest to the image's own F_W under the current model: the same
nearest-centroid rule K-Means used to form the slices. CoRM reads each
image's GradCAM map from the same pass, slice-balanced retraining its slice,
and the augmentation's Cluster View its F (the unweighted grid mean, which
carries the image's look, background included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.data import ImageIndex, Preprocess, read_image
from core.errors import SliceScopeError
from core.extract import attribute_batch
from core.mitigation.robustness import normalise, read_object_mask
from core.models import AttributionModel
from core.progress import ProgressFn
from core.workspace import Workspace

_ATTRIBUTION_BATCH = 256


@dataclass
class LoadedImages:
    """Images of one split as uint8 (N × 3 × S × S: a quarter of float32's memory), label indices and ids."""

    pixels: torch.Tensor
    labels: torch.Tensor
    image_ids: list[str]
    object_masks: torch.Tensor | None = None  # N × S × S uint8, when asked for
    groups: np.ndarray | None = None  # the values of a metadata column, when asked for


@dataclass
class TrainingAttribution:
    """Per training image: its nearest slice, GradCAM map (N × h × w, half precision) and F (N × K)."""

    nearest_slice: np.ndarray
    cams: torch.Tensor
    features: np.ndarray


def load_images(
    index: ImageIndex, size: int, relabels: dict[str, str], classes: list[str], progress: ProgressFn, step: str, with_masks: bool = False,
    group_column: str | None = None,
) -> LoadedImages:
    """All readable images of ``index`` at the model's size, with the analyst's relabels applied."""
    preprocess = Preprocess(size, "none")
    table = index.table
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise SliceScopeError(f"the training data has labels the model does not know: {', '.join(unknown[:5])}", "use training data with the model's classes")
    if with_masks and "mask_path" not in table.columns:
        raise SliceScopeError("the training data has no mask_path column, so there are no object masks to put the noise around",
                              "put the noise on the attribution masks instead (`noise_region` attribution)")
    if group_column is not None and group_column not in table.columns:
        raise SliceScopeError(f"the training data has no column '{group_column}' to balance groups by",
                              f"name one of its columns as `group_column` ({', '.join(map(str, table.columns[:8]))}…), or balance by slices")
    mask_paths = table["mask_path"] if with_masks else [None] * len(table)
    pixels, labels, masks, kept, rows = [], [], [], [], []
    for done, (image_id, path, label, mask_path) in enumerate(zip(table["image_id"], table["path"], table["label"], mask_paths), start=1):
        try:
            image = read_image(index.absolute_path(path)).image
        except (OSError, ValueError):
            continue  # an unreadable training image is left out, as a scan leaves it out
        pixels.append(np.rint(preprocess.to_array(image) * 255).astype(np.uint8))
        labels.append(classes.index(relabels.get(image_id, label)))
        kept.append(str(image_id))
        rows.append(done - 1)
        if with_masks:
            masks.append(np.rint(read_object_mask(index.absolute_path(mask_path), size) * 255).astype(np.uint8))
        if done % 500 == 0 or done == len(table):
            progress(step, done, len(table))
    if not pixels:
        raise SliceScopeError(f"none of the {len(table)} training images could be read", "check the training data path")
    return LoadedImages(torch.from_numpy(np.stack(pixels)), torch.tensor(labels, dtype=torch.long), kept,
                        torch.from_numpy(np.stack(masks)) if with_masks else None,
                        None if group_column is None else table[group_column].astype(str).to_numpy()[rows])


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(255.0)


@torch.no_grad()
def slice_centroids(workspace: Workspace, slice_ids: np.ndarray) -> torch.Tensor:
    """Each slice's mean F_W over the workspace's images (slices × K)."""
    features = torch.from_numpy(np.array(workspace.array("attribution_features"), dtype=np.float32))
    ids = torch.from_numpy(np.asarray(slice_ids, dtype=np.int64))
    n_slices = int(ids.max()) + 1
    sums = torch.zeros(n_slices, features.shape[1]).index_add_(0, ids, features)
    counts = torch.bincount(ids, minlength=n_slices).clamp_min(1)[:, None]
    return sums / counts


def attribute_training_images(model: AttributionModel, pixels: torch.Tensor, normalize: str, centroids: torch.Tensor,
                              progress: ProgressFn, step: str = "finding the training images' slices") -> TrainingAttribution:
    """One pass of the current model over uint8 images: nearest slice (by F_W), GradCAM map and F."""
    nearest, cams, features = [], [], []
    total = len(pixels)
    for start in range(0, total, _ATTRIBUTION_BATCH):
        batch = normalise(as_float(pixels[start:start + _ATTRIBUTION_BATCH]), normalize).to(model.device)
        result = attribute_batch(model, batch)
        nearest.append(torch.cdist(result.attribution_features.cpu(), centroids).argmin(dim=1))
        cams.append(result.gradcam.cpu().half())
        features.append(result.features.cpu())
        progress(step, min(total, start + _ATTRIBUTION_BATCH), total)
    return TrainingAttribution(torch.cat(nearest).numpy(), torch.cat(cams), torch.cat(features).numpy())
