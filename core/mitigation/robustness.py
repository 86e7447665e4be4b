"""How much a model relies on core vs spurious image regions (Singla et al.'s CoRM metrics).

AttributionScanner §5.1 evaluates every model version with four numbers:

* clean accuracy, on the images as they are;
* core accuracy acc_C, with Gaussian noise on the *spurious* regions (a model
  that uses the core keeps its accuracy);
* spurious accuracy acc_S, with noise on the *core* regions (a model that uses
  the core loses it);
* RCS = (acc_C − acc_S) / (2·min(α, 1−α)), α = (acc_C + acc_S) / 2, the gap
  relative to the largest gap possible at that noise robustness.

Where the regions come from is explicit (:class:`Regions`): the dataset's
ground-truth object masks when it has them (``mask_path``, as the demo does),
so the metric can be checked; otherwise the attribution masks of the annotated
slices (core slices: the attended region is core; spurious slices: it is
spurious). Besides these, worst-group accuracy over the dataset's ground-truth
``group`` column and per-slice accuracy show who pays for the average.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.nn import functional

from core.data import NORMALIZATIONS, Preprocess, read_image
from core.errors import SliceScopeError
from core.extract import load_workspace_model
from core.progress import ProgressFn, silent
from core.workspace import Workspace, read_json, save_json

REGION_SOURCES = ("auto", "ground_truth", "attribution")
METRICS_FILE = "metrics.json"
DEFAULT_SIGMA = 0.5
_BATCH = 256


@dataclass(frozen=True)
class Regions:
    """Per evaluated image, where its core features are; the rest of the image is spurious.

    ``rows`` are positions in ``workspace.images``; ``core`` is rows × S × S in [0, 1].
    """

    source: str
    rows: np.ndarray
    core: np.ndarray

    @property
    def description(self) -> str:
        if self.source == "ground_truth":
            return f"ground-truth object masks of {len(self.rows):,} images"
        return f"attribution masks of the {len(self.rows):,} images in annotated core/spurious slices"


def read_object_mask(path: Path, size: int) -> np.ndarray:
    """One object mask (any image format; bright = object) as S × S floats in [0, 1]."""
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    except OSError as error:
        raise SliceScopeError(f"the object mask {Path(path).name} could not be read ({error})",
                              "restore the dataset's masks, or use attribution masks instead") from None


def read_object_masks(workspace: Workspace, rows: np.ndarray, size: int) -> np.ndarray:
    """The ``mask_path`` masks of the workspace's images at ``rows`` (rows × S × S)."""
    if "mask_path" not in workspace.images.columns:
        raise SliceScopeError(f"the dataset of {workspace.name} has no mask_path column", "use attribution masks (annotate core and spurious slices)")
    paths = workspace.images["mask_path"]
    return np.stack([read_object_mask(workspace.image_path(paths.iat[row]), size) for row in rows])


def ground_truth_regions(workspace: Workspace, size: int) -> Regions:
    """Core = the object mask given in the dataset's ``mask_path`` column."""
    rows = np.arange(len(workspace.images))
    return Regions("ground_truth", rows, read_object_masks(workspace, rows, size))


def _upsample(cams: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(np.asarray(cams, dtype=np.float32))[:, None]
    return functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def attribution_regions(workspace: Workspace, slice_ids: np.ndarray, kinds: dict[int, str], size: int) -> Regions:
    """Core = the GradCAM mask in slices annotated core, its complement in slices annotated spurious."""
    core_slices = [s for s, kind in kinds.items() if kind == "core"]
    spurious_slices = [s for s, kind in kinds.items() if kind == "spurious"]
    rows = np.flatnonzero(np.isin(slice_ids, core_slices + spurious_slices))
    if not len(rows):
        raise SliceScopeError("no slice is annotated core or spurious, so there are no regions to add noise to", "annotate at least one slice as core or spurious")
    cams = _upsample(np.asarray(workspace.array("gradcam"))[rows], size)
    is_spurious = np.isin(slice_ids[rows], spurious_slices)[:, None, None]
    return Regions("attribution", rows, np.where(is_spurious, 1.0 - cams, cams).astype(np.float32))


def choose_regions(workspace: Workspace, slice_ids: np.ndarray, kinds: dict[int, str], size: int, source: str = "auto") -> Regions:
    """``auto``: ground-truth masks when the dataset has them, else attribution masks."""
    if source not in REGION_SOURCES:
        raise SliceScopeError(f"unknown region source '{source}'", f"use one of: {', '.join(REGION_SOURCES)}")
    if source == "ground_truth" or (source == "auto" and "mask_path" in workspace.images.columns):
        return ground_truth_regions(workspace, size)
    return attribution_regions(workspace, slice_ids, kinds, size)


def corrupt(pixels: torch.Tensor, region: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """x' = x + m ⊙ z with z ~ N(0, σ²), in [0, 1] pixel space, clipped to valid pixels.

    ``region`` (B × S × S or B × 1 × S × S) is m; the same formula corrupts the
    spurious regions for CoRM training and either region for evaluation.
    """
    mask = region if region.ndim == 4 else region[:, None]
    noise = torch.randn(pixels.shape, generator=generator) * sigma
    return (pixels + mask * noise).clamp_(0.0, 1.0)


def normalise(pixels: torch.Tensor, normalize: str) -> torch.Tensor:
    mean, std = NORMALIZATIONS[normalize]
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def load_pixels(workspace: Workspace, rows: np.ndarray, size: int) -> torch.Tensor:
    """The images at ``rows`` as one float tensor (B × 3 × S × S) in [0, 1]."""
    preprocess = Preprocess(size, "none")
    paths = workspace.images["path"]
    arrays = []
    for row in rows:
        try:
            image = read_image(workspace.image_path(paths.iat[row])).image
        except (OSError, ValueError) as error:
            raise SliceScopeError(f"image {paths.iat[row]} can no longer be read ({error})", "restore the dataset the workspace was built from") from None
        arrays.append(preprocess.to_array(image))
    return torch.from_numpy(np.stack(arrays))


def apply_relabels(images: pd.DataFrame, classes: list[str], relabels: dict[str, str]) -> np.ndarray:
    """Label indices with the analyst's corrections (image_id → class name) applied."""
    labels = images["label_index"].to_numpy().copy()
    positions = {image: row for row, image in enumerate(images["image_id"])}
    for image, label in relabels.items():
        if image in positions and label in classes:
            labels[positions[image]] = classes.index(label)
    return labels


def relabelled_count(images: pd.DataFrame, classes: list[str], relabels: dict[str, str]) -> int:
    """How many of ``images`` the analyst's corrections give another label."""
    return int((apply_relabels(images, classes, relabels) != images["label_index"].to_numpy()).sum())


def rcs(core_acc: float, spurious_acc: float) -> float:
    """Relative core sensitivity; 0 when the model is at 0% or 100% under both noises."""
    alpha = (core_acc + spurious_acc) / 2
    span = 2 * min(alpha, 1 - alpha)
    return float((core_acc - spurious_acc) / span) if span > 0 else 0.0


@dataclass(frozen=True)
class Robustness:
    clean_acc: float
    core_acc: float
    spurious_acc: float
    rcs: float
    worst_group_acc: float
    worst_group: str
    regions: str
    sigma: float
    n_images: int
    group_acc: dict[str, float] = field(default_factory=dict)
    slice_acc: dict[int, float] = field(default_factory=dict)
    relabelled: int = 0  # images whose label the analyst's corrections changed: clean accuracy counts their new label

    def to_dict(self) -> dict:
        values = asdict(self)
        values["slice_acc"] = {str(s): a for s, a in self.slice_acc.items()}
        return values


def _group_accuracy(images: pd.DataFrame, classes: list[str], predictions: np.ndarray, labels: np.ndarray, slice_ids: np.ndarray | None) -> dict:
    """Accuracy per ground-truth group (against ``true_class`` when given), else per slice."""
    if "group" in images.columns:
        truth = images["true_class"].map({c: i for i, c in enumerate(classes)}).to_numpy() if "true_class" in images.columns else labels
        correct = pd.Series(predictions == truth)
        return correct.groupby(images["group"].to_numpy()).mean().to_dict()
    if slice_ids is None:
        return {}
    return {f"slice {s}": a for s, a in pd.Series(predictions == labels).groupby(slice_ids).mean().items()}


@torch.no_grad()
def _noisy_accuracy(module, pixels: torch.Tensor, region: torch.Tensor, labels: np.ndarray, normalize: str, sigma: float, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(pixels), _BATCH):
        batch = corrupt(pixels[start:start + _BATCH], region[start:start + _BATCH], sigma, generator)
        predicted = module(normalise(batch, normalize)).argmax(dim=1).numpy()
        correct += int((predicted == labels[start:start + _BATCH]).sum())
    return correct / max(1, len(pixels))


def evaluate(
    workspace: Workspace,
    regions: Regions,
    slice_ids: np.ndarray | None = None,
    relabels: dict[str, str] | None = None,
    sigma: float = DEFAULT_SIGMA,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Robustness:
    """The CoRM metrics of the model that built ``workspace`` on its images.

    Clean predictions come from the scan; the noisy ones run the model. The
    noise is seeded, so two versions evaluated with the same regions see the
    same noise and their numbers compare.
    """
    if sigma <= 0:
        raise SliceScopeError(f"noise sigma = {sigma} must be positive", "use e.g. 0.5 (pixel values are in [0, 1])")
    report = progress or silent
    images = workspace.images
    classes = workspace.classes
    labels = apply_relabels(images, classes, relabels or {})
    predictions = images["prediction_index"].to_numpy()
    model = load_workspace_model(workspace)
    size = model.image_size
    if regions.core.shape[1:] != (size, size):
        raise SliceScopeError(f"the regions are {regions.core.shape[1]} px but the model reads {size} px images", "compute the regions at the model's image size")
    normalize = workspace.manifest["transforms"]["normalize"]
    report("evaluating under noise", 0, 2)
    pixels = load_pixels(workspace, regions.rows, size)
    core_region = torch.from_numpy(regions.core)
    region_labels = labels[regions.rows]
    module = model.module.eval()
    core_acc = _noisy_accuracy(module, pixels, 1.0 - core_region, region_labels, normalize, sigma, seed)
    report("evaluating under noise", 1, 2)
    spurious_acc = _noisy_accuracy(module, pixels, core_region, region_labels, normalize, sigma, seed)
    report("evaluating under noise", 2, 2)
    group_acc = _group_accuracy(images, classes, predictions, labels, slice_ids)
    worst = min(group_acc, key=group_acc.get) if group_acc else ""
    slice_acc = {} if slice_ids is None else {int(s): float(a) for s, a in pd.Series(predictions == labels).groupby(slice_ids).mean().items()}
    return Robustness(
        clean_acc=float((predictions == labels).mean()),
        core_acc=core_acc,
        spurious_acc=spurious_acc,
        rcs=rcs(core_acc, spurious_acc),
        worst_group_acc=float(group_acc[worst]) if worst else float("nan"),
        worst_group=str(worst),
        regions=regions.description,
        sigma=sigma,
        n_images=len(images),
        group_acc={str(g): float(a) for g, a in group_acc.items()},
        slice_acc=slice_acc,
        relabelled=relabelled_count(images, classes, relabels or {}),
    )


def write_metrics(workspace: Workspace, robustness: Robustness) -> None:
    save_json(workspace.path / METRICS_FILE, robustness.to_dict())


def read_metrics(workspace: Workspace) -> dict | None:
    return read_json(workspace.path / METRICS_FILE)
