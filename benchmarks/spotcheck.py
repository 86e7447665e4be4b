"""A SpotCheck-style blindspot-discovery benchmark (Plumb et al., TMLR 2023), written from the paper's description.

SpotCheck evaluates blindspot discovery methods on synthetic data whose true
blindspots are known, because they are planted: a model is trained on images
whose labels are wrong exactly on some feature conjunctions, so it learns to
be wrong there.

**The data.** Every image is drawn from independent semantic features:

========== ============================ ===================================================
feature    values                       drawn as
========== ============================ ===================================================
square     yes, no                      the object; the binary label ``square``/``no_square``
size       small, large (none)          the square's side (none without a square)
colour     orange, blue, green (none)   the square's colour (none without a square)
circle     yes, no                      a distractor disc in a random palette colour
triangle   yes, no                      a distractor triangle in a random palette colour
background light, dark                  the background's brightness
texture    plain, stripes, speckle      the background's pattern
========== ============================ ===================================================

Each feature value is equally likely and the features are independent; the
distractors take the same colours as the square, so only its shape tells it apart.

**The blindspots.** A configuration samples 1–3 true blindspots, each the
conjunction ``square=yes`` and 2–3 other feature values (e.g. ``square=yes &
circle=yes & texture=stripes``), kept only when its expected share of the images
lies in [``MIN_BLINDSPOT_SHARE``, ``MAX_BLINDSPOT_SHARE``] = [2.5 %, 8.5 %], all
blindspots together holding at most ``MAX_TOTAL_SHARE`` = 12 % (so that the test
split has some tens of images of each and the model stays about 0.9 accurate
overall), and when it contradicts every other blindspot on a shared feature, so that an image
belongs to at most one blindspot. As in SpotCheck, every ``train`` and ``val``
image in a blindspot is labelled ``no_square`` (100 % label noise there); ``test``
keeps the true labels, so a model that learnt the noise fails on the blindspots.

**The metrics**, for one slicing of the test images (slice id per image) of
which some slices are *flagged* as hypothesised blindspots (only flagged slices
with at least one image count). For a flagged slice h and a true blindspot b,
precision(h, b) = |h ∩ b| / |h| and coverage(h, b) = |h ∩ b| / |b| (b's test images):

* h *belongs to* b when precision(h, b) ≥ 0.8 (``PRECISION``);
* b is *discovered* when some flagged h belongs to b and coverage(h, b) ≥ 0.5 (``COVERAGE``);
* DR (discovery rate) = discovered true blindspots / true blindspots;
* FDR (false discovery rate) = flagged slices that belong to no true blindspot /
  flagged slices (0 when nothing is flagged). This is the paper's: a pure slice
  holding a third of a blindspot is not a false discovery, though it alone would
  not discover it;
* P@10 (precision at 10) = the mean, over flagged slices, of the share of the
  slice's 10 most typical images that lie in some true blindspot. The most typical
  are the 10 members nearest the mean of the slice's members in the representation
  the method sliced (Euclidean, ties by image order); without a representation,
  the slice's first 10 images in the method's order (the workspace's row order).
  A slice of fewer than 10 images uses all of them. With nothing flagged P@10 is
  undefined (NaN) and the suite's means leave it out.

**The harness.** A method maps a workspace (the scanned test split) to a slice
id per image and a flag per slice id; :data:`METHODS` registers them by name,
with the representation whose geometry P@10 uses. The baselines are K-Means on
F_W (``attribution``) and on F (``features``), flagged by the held-out rule of
:func:`flag_low_accuracy`. ``python -m benchmarks.discovery`` runs the suite.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F

from core.demo.model import DemoCNN
from core.descriptions import describe_members
from core.extract import ScanConfig, scan
from core.models import ModelSpec
from core.slicing import SliceParams, find_slices, slice_table
from core.workspace import Workspace

# -- the data -----------------------------------------------------------------------------------------

CLASSES = ("no_square", "square")  # sorted, as the scan orders a manifest's classes
NONE = "none"
FEATURES: dict[str, tuple[str, ...]] = {
    "square": ("yes", "no"),
    "size": ("small", "large"),
    "colour": ("orange", "blue", "green"),
    "circle": ("yes", "no"),
    "triangle": ("yes", "no"),
    "background": ("light", "dark"),
    "texture": ("plain", "stripes", "speckle"),
}
SQUARE_FEATURES = ("size", "colour")  # "none" on images without a square
MANIFEST_COLUMNS = ("path", "label", "true_label", "split", *FEATURES, "blindspot")
SPLITS = ("train", "val", "test")
MIN_BLINDSPOT_SHARE, MAX_BLINDSPOT_SHARE = 0.025, 0.085
MAX_TOTAL_SHARE = 0.12  # of all blindspots together, so the model stays about 0.9 accurate overall
BLINDSPOT_SIZES = (2, 3)  # feature values besides square=yes
METADATA = "spotcheck.json"

PALETTE = {"orange": (240, 130, 25), "blue": (45, 105, 215), "green": (40, 165, 70)}
BACKGROUND_LEVELS = {"light": 225.0, "dark": 70.0}
SQUARE_SIDE = {"small": 0.2, "large": 0.32}  # share of the image side
DISTRACTOR_SIZE = (0.2, 0.32)  # the distractors span both square sizes, so size alone is no cue
STRIPE_PERIOD = 0.125  # of the image side
STRIPE_CONTRAST = 40.0
SPECKLE_SHARE = 0.12


@dataclass(frozen=True)
class SpotCheckConfig:
    """How many blindspots to plant and how many images to draw at which size."""

    n_blindspots: int = 2
    image_size: int = 64
    n_train: int = 2000
    n_val: int = 400
    n_test: int = 800

    def __post_init__(self):
        if not 1 <= self.n_blindspots <= 3:
            raise ValueError(f"a configuration has 1–3 blindspots, not {self.n_blindspots}")
        if self.image_size < 16:
            raise ValueError(f"images of {self.image_size} px are too small to draw the shapes")


Blindspot = tuple[tuple[str, str], ...]  # sorted (feature, value) pairs, square=yes among them


def blindspot_name(blindspot: Blindspot) -> str:
    return " & ".join(f"{feature}={value}" for feature, value in blindspot)


def expected_share(blindspot: Blindspot) -> float:
    """The share of all images that satisfy ``blindspot`` (features are independent and uniform)."""
    return float(np.prod([1 / len(FEATURES[feature]) for feature, _ in blindspot]))


def _contradicts(first: Blindspot, second: Blindspot) -> bool:
    values = dict(first)
    return any(feature in values and values[feature] != value for feature, value in second)


def sample_blindspots(n_blindspots: int, rng: np.random.Generator) -> list[Blindspot]:
    """``n_blindspots`` disjoint conjunctions of square=yes and 2–3 other feature values, of bounded share."""
    others = [feature for feature in FEATURES if feature != "square"]
    blindspots: list[Blindspot] = []
    for _ in range(10_000):
        if len(blindspots) == n_blindspots:
            return blindspots
        chosen = rng.choice(others, size=rng.choice(BLINDSPOT_SIZES), replace=False)
        candidate = tuple(sorted([("square", "yes"), *((str(f), str(rng.choice(FEATURES[f]))) for f in chosen)]))
        share = expected_share(candidate)
        if (MIN_BLINDSPOT_SHARE <= share <= MAX_BLINDSPOT_SHARE and share + sum(map(expected_share, blindspots)) <= MAX_TOTAL_SHARE
                and all(_contradicts(candidate, b) for b in blindspots)):
            blindspots.append(candidate)
        elif rng.random() < 0.01:
            blindspots = []  # the first choices may leave no room for the rest: start over now and then


def sample_features(n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row of independent, uniformly drawn feature values per image."""
    table = pd.DataFrame({feature: rng.choice(values, size=n_images) for feature, values in FEATURES.items()})
    for feature in SQUARE_FEATURES:
        table.loc[table["square"] == "no", feature] = NONE
    return table


def blindspot_membership(table: pd.DataFrame, blindspots: list[Blindspot]) -> np.ndarray:
    """Per row, the name of the blindspot it satisfies, or '' (blindspots are disjoint)."""
    membership = np.full(len(table), "", dtype=object)
    for blindspot in blindspots:
        inside = np.logical_and.reduce([table[feature].to_numpy() == value for feature, value in blindspot])
        membership[inside] = blindspot_name(blindspot)
    return membership


# -- drawing ------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int, brightness: str, texture: str) -> np.ndarray:
    level = BACKGROUND_LEVELS[brightness] + rng.uniform(-12, 12)
    pixels = np.full((size, size, 3), level, dtype=np.float32) + rng.normal(0, 4, (size, size, 3)).astype(np.float32)
    if texture == "stripes":
        period = max(4, round(size * STRIPE_PERIOD))
        rows, columns = np.mgrid[:size, :size]
        diagonal = rows + columns if rng.random() < 0.5 else rows - columns
        stripe = ((diagonal + rng.integers(period)) // (period // 2)) % 2 == 1
        # Lighter stripes on dark ground and darker on light keep them visible on both.
        pixels[stripe] += STRIPE_CONTRAST if brightness == "dark" else -STRIPE_CONTRAST
    elif texture == "speckle":
        pixels[rng.random((size, size)) < SPECKLE_SHARE] = 128.0
    return pixels


def _layout(rng: np.random.Generator, size: int, extents: list[int]) -> list[tuple[int, int]]:
    """Top-left corners for boxes of the given extents, each 2 px clear of the others.

    Boxes are placed one by one at random; a layout that paints itself into a
    corner is drawn again from scratch rather than searched for a gap.
    """
    for _ in range(100):
        corners: list[tuple[int, int]] = []
        for extent in extents:
            for _ in range(50):
                top, left = (int(v) for v in rng.integers(1, size - extent, size=2))
                if all(top > t + e + 1 or t > top + extent + 1 or left > l + e + 1 or l > left + extent + 1
                       for (t, l), e in zip(corners, extents)):
                    corners.append((top, left))
                    break
            else:
                break
        if len(corners) == len(extents):
            return corners
    raise RuntimeError(f"no room for shapes of {extents} px in a {size}-px image")


def _paint(pixels: np.ndarray, mask: np.ndarray, top: int, left: int, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    extent = mask.shape[0]
    region = pixels[top:top + extent, left:left + extent]
    region[mask] = np.clip(np.asarray(colour, np.float32) + rng.uniform(-15, 15, 3), 0, 255)


def _disc(extent: int) -> np.ndarray:
    centre = (extent - 1) / 2
    rows, columns = np.mgrid[:extent, :extent]
    return (rows - centre) ** 2 + (columns - centre) ** 2 <= (extent / 2) ** 2


def _triangle(extent: int) -> np.ndarray:
    """An upright isosceles triangle filling the box: apex at the top centre."""
    rows, columns = np.mgrid[:extent, :extent]
    half_width = (rows + 0.5) / extent * (extent / 2)
    return np.abs(columns + 0.5 - extent / 2) <= half_width


def render(row: pd.Series, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image (size × size × 3, uint8) showing ``row``'s feature values."""
    pixels = _background(rng, size, row["background"], row["texture"])
    shapes: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    if row["square"] == "yes":
        side = max(4, round(size * SQUARE_SIDE[row["size"]]))
        shapes.append((np.ones((side, side), bool), PALETTE[row["colour"]]))
    for feature, mask_of in (("circle", _disc), ("triangle", _triangle)):
        if row[feature] == "yes":
            extent = max(4, round(size * rng.uniform(*DISTRACTOR_SIZE)))
            shapes.append((mask_of(extent), PALETTE[str(rng.choice(list(PALETTE)))]))
    for (mask, colour), (top, left) in zip(shapes, _layout(rng, size, [mask.shape[0] for mask, _ in shapes])):
        _paint(pixels, mask, top, left, colour, rng)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def generate(config: SpotCheckConfig, out_dir: Path, seed: int) -> Path:
    """Draw one configuration into ``out_dir``: PNGs, ``manifest.csv`` and ``spotcheck.json``; return the manifest.

    The blindspots and every split are drawn from ``seed``. ``label`` is what the
    model is trained on (``no_square`` inside a blindspot in train and val),
    ``true_label`` is the truth; in test they agree. ``spotcheck.json`` is written
    last, so its presence means the configuration is complete.
    """
    out_dir = Path(out_dir)
    (out_dir / METADATA).unlink(missing_ok=True)
    blindspots = sample_blindspots(config.n_blindspots, np.random.default_rng([seed, 0]))
    frames = []
    for split_number, (split, n_images) in enumerate(zip(SPLITS, (config.n_train, config.n_val, config.n_test)), start=1):
        rng = np.random.default_rng([seed, split_number])
        table = sample_features(n_images, rng)
        table.insert(0, "split", split)
        table["blindspot"] = blindspot_membership(table, blindspots)
        table.insert(0, "true_label", np.where(table["square"] == "yes", "square", "no_square"))
        planted = (table["blindspot"] != "") & (split != "test")
        table.insert(0, "label", np.where(planted, "no_square", table["true_label"]))
        table.insert(0, "path", [f"{split}/{i:05d}.png" for i in range(n_images)])
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for path, (_, row) in zip(table["path"], table.iterrows()):
            Image.fromarray(render(row, config.image_size, rng)).save(out_dir / path, compress_level=1)
        frames.append(table)
    manifest = pd.concat(frames, ignore_index=True)[list(MANIFEST_COLUMNS)]
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    metadata = {
        "config": asdict(config),
        "seed": seed,
        "blindspots": [{"name": blindspot_name(b), "definition": dict(b), "expected_share": expected_share(b)} for b in blindspots],
    }
    (out_dir / METADATA).write_text(json.dumps(metadata, indent=2))
    return out_dir / "manifest.csv"


def generated_metadata(out_dir: Path) -> dict | None:
    """What :func:`generate` recorded in ``out_dir``, or None when it has not finished there."""
    path = Path(out_dir) / METADATA
    return json.loads(path.read_text()) if path.is_file() else None


# -- the model ----------------------------------------------------------------------------------------

EPOCHS = 25
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4


def build_spotcheck_cnn(num_classes: int = len(CLASSES)) -> DemoCNN:
    """The demo CNN with a hidden layer in its head; the factory the benchmark's checkpoints load with.

    A blindspot such as ``square=yes & circle=yes`` joins objects far apart in the
    image, which the demo CNN's linear head over pooled features can only
    approximate by adding their evidence: it then also fails on every square near
    a circle. One hidden layer lets it learn the conjunction itself.
    """
    model = DemoCNN(num_classes=num_classes)
    width = model.classifier.in_features
    model.classifier = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))
    return model


def build_spotcheck_resnet18(num_classes: int = len(CLASSES)) -> nn.Module:
    """torchvision's ResNet-18 from scratch, the model of the held-out SpotCheck benchmark (random weights, no download)."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


# The networks a run can train, by the name --model takes.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"cnn": build_spotcheck_cnn, "resnet18": build_spotcheck_resnet18}


def factory_name(architecture: str) -> str:
    """The ``module:function`` a workspace's manifest names to rebuild the ``architecture``."""
    return f"benchmarks.spotcheck:{ARCHITECTURES[architecture].__name__}"


def load_split(manifest: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images as one float tensor (N, 3, S, S) in [0, 1] and its training labels as class indices."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rows = table[table["split"] == split]
    pixels = np.stack([np.asarray(Image.open(Path(manifest).parent / path).convert("RGB")) for path in rows["path"]])
    labels = torch.tensor([CLASSES.index(label) for label in rows["label"]], dtype=torch.long)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0), labels


def train_model(manifest: Path, out_dir: Path, seed: int, epochs: int = EPOCHS, architecture: str = "cnn") -> Path:
    """Train the ``architecture`` (a key of :data:`ARCHITECTURES`) from scratch on ``train``; save its state_dict as ``model.pt``.

    The demo's recipe (AdamW, one-cycle schedule) with random mirroring, long enough
    for the network to fit the planted label noise as well as the square. Records
    the per-epoch loss and val accuracy (against the noisy val labels) in ``training.json``.
    """
    images, labels = load_split(manifest, "train")
    val_images, val_labels = load_split(manifest, "val")
    steps_per_epoch = -(-len(labels) // BATCH_SIZE)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[architecture]()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.1)
        shuffler = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            model.train()
            total_loss = 0.0
            for batch in torch.randperm(len(labels), generator=shuffler).split(BATCH_SIZE):
                # Mirrored images show the same feature values (the triangle stays upright), so mirroring is free data.
                mirrored = torch.rand(len(batch), generator=shuffler) < 0.5
                batch_images = torch.where(mirrored[:, None, None, None], images[batch].flip(3), images[batch])
                loss = F.cross_entropy(model(batch_images), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(batch)
            model.eval()
            with torch.no_grad():
                val_accuracy = (torch.cat([model(batch) for batch in val_images.split(256)]).argmax(1) == val_labels).float().mean().item()
            history.append({"epoch": epoch, "train_loss": total_loss / len(labels), "val_accuracy": val_accuracy, "seconds": time.perf_counter() - started})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "model.pt"
    (out_dir / "training.json").write_text(json.dumps({"seed": seed, "epochs": epochs, "architecture": architecture, "history": history}, indent=2))
    torch.save(model.state_dict(), checkpoint)
    return checkpoint


def scan_test_split(manifest: Path, checkpoint: Path, out: Path, image_size: int, architecture: str = "cnn") -> Workspace:
    """The test split scanned into a workspace at ``out`` (reused as is when its inputs are unchanged)."""
    spec = ModelSpec(checkpoint=checkpoint, factory=factory_name(architecture), num_classes=len(CLASSES))
    config = ScanConfig(data=manifest, model=spec, out=out, split="test", image_size=image_size, normalize="none",
                        batch_size=128, workers=0, overwrite=True)
    return scan(config)


def model_accuracy(workspace: Workspace) -> dict[str, float]:
    """Test accuracy overall, outside the blindspots, and on each blindspot (keyed by its name)."""
    images = workspace.images
    correct = images["correct"].to_numpy(dtype=bool)
    inside = images["blindspot"].to_numpy() != ""
    accuracy = {"overall": float(correct.mean()), "outside blindspots": float(correct[~inside].mean())}
    accuracy.update({name: float(correct[images["blindspot"].to_numpy() == name].mean()) for name in sorted(set(images["blindspot"]) - {""})})
    return accuracy


# -- scoring ------------------------------------------------------------------------------------------

PRECISION, COVERAGE, TOP = 0.8, 0.5, 10


def score(slice_ids: np.ndarray, flagged: np.ndarray, blindspot_labels: np.ndarray, representation_vectors: np.ndarray | None = None) -> dict:
    """DR, FDR and P@10 of a slicing (see the module docstring for the exact definitions).

    ``slice_ids``: a slice id (0 … len(flagged) − 1) per image; ``flagged``: per
    slice id, whether the method hypothesises it is a blindspot;
    ``blindspot_labels``: per image, the name of its true blindspot or '';
    ``representation_vectors``: per image, the vector the method sliced (None:
    typicality is the images' order). Returns ``dr``, ``fdr``, ``p_at_10`` and ``n_flagged``.
    """
    slice_ids = np.asarray(slice_ids)
    labels = np.asarray(blindspot_labels, dtype=str)
    truths = sorted(set(labels) - {""})
    if not truths:
        raise ValueError("the images hold no true blindspot: discovery rate is undefined")
    truth_sizes = {name: int((labels == name).sum()) for name in truths}
    hypotheses = [slice_id for slice_id in np.flatnonzero(np.asarray(flagged, dtype=bool)) if (slice_ids == slice_id).any()]
    discovered, false_discoveries, typical_shares = set(), 0, []
    for slice_id in hypotheses:
        members = np.flatnonzero(slice_ids == slice_id)
        belongs = False
        for name in truths:
            overlap = int((labels[members] == name).sum())
            if overlap / len(members) >= PRECISION:
                belongs = True
                if overlap / truth_sizes[name] >= COVERAGE:
                    discovered.add(name)
        false_discoveries += not belongs
        typical_shares.append(float((labels[_most_typical(members, representation_vectors)] != "").mean()))
    return {
        "dr": len(discovered) / len(truths),
        "fdr": false_discoveries / len(hypotheses) if hypotheses else 0.0,
        "p_at_10": float(np.mean(typical_shares)) if typical_shares else float("nan"),
        "n_flagged": len(hypotheses),
    }


def _most_typical(members: np.ndarray, vectors: np.ndarray | None) -> np.ndarray:
    if vectors is None:
        return members[:TOP]
    points = np.asarray(vectors, dtype=np.float64)[members]
    distances = ((points - points.mean(axis=0)) ** 2).sum(axis=1)
    return members[np.argsort(distances, kind="stable")[:TOP]]


# -- methods ------------------------------------------------------------------------------------------

MIN_FLAGGED_SIZE, ACCURACY_GAP = 5, 0.20


def flag_low_accuracy(correct: np.ndarray, slice_ids: np.ndarray, n_slices: int) -> np.ndarray:
    """The held-out rule: a slice is flagged when it has ≥ 5 images and accuracy ≥ 20 points under the overall."""
    correct = np.asarray(correct, dtype=np.float64)
    sizes = np.bincount(slice_ids, minlength=n_slices)
    accuracy = np.bincount(slice_ids, weights=correct, minlength=n_slices) / np.maximum(sizes, 1)
    return (sizes >= MIN_FLAGGED_SIZE) & (accuracy <= correct.mean() - ACCURACY_GAP)


def kmeans_flagged(workspace: Workspace, representation: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """K-Means slices of ``representation`` (the library's :func:`find_slices`), flagged by :func:`flag_low_accuracy`."""
    k = min(k, len(workspace.images))
    slice_ids = find_slices(workspace, representation, SliceParams(k=k))
    return slice_ids, flag_low_accuracy(workspace.images["correct"].to_numpy(dtype=bool), slice_ids, k)


@dataclass(frozen=True)
class Method:
    """A blindspot discovery method: ``find(workspace) -> (slice id per image, flag per slice id)``.

    ``representation`` names the workspace representation whose geometry P@10
    measures typicality in (the one the method sliced); None: the method's own image order.
    """

    find: Callable[[Workspace], tuple[np.ndarray, np.ndarray]]
    representation: str | None = None


def library_flagged(workspace: Workspace, representation: str, method: str, k: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The library's slicing ``method`` (:class:`core.slicing.SliceParams`), flagged by its own evidence
    (:func:`core.evidence.slice_evidence`): what ``python -m core slices`` writes."""
    slice_ids = find_slices(workspace, representation, SliceParams(k=min(k, len(workspace.images)), method=method))
    table = slice_table(workspace.images, slice_ids).set_index("slice")
    return slice_ids, table["flagged"].reindex(np.arange(slice_ids.max() + 1), fill_value=False).to_numpy()


# Every registered method is run on every configuration; add one by name here. The baselines are K-Means
# flagged by the held-out rule; the library's methods are flagged by their own evidence.
METHODS: dict[str, Method] = {
    **{
        f"kmeans{k}-{representation}": Method(partial(kmeans_flagged, representation=representation, k=k), representation)
        for k in (20, 50)
        for representation in ("attribution", "features")
    },
    **{
        f"{method}+evidence-{representation}": Method(partial(library_flagged, representation=representation, method=method), representation)
        for method in ("kmeans", "domino", "planespot")
        for representation in ("attribution", "features")
    },
    # Influence embeddings with the library's default settings (core.influence.default_layers): InfEmbed's own
    # normalised K-Means flagged by the held-out rule, and the default mixture flagged by its evidence.
    "infembed50-influence": Method(partial(kmeans_flagged, representation="influence", k=50), "influence"),
    "domino+evidence-influence": Method(partial(library_flagged, representation="influence", method="domino"), "influence"),
}
# The method the suite's last line reports (a key of METHODS): the library's default (core.slicing.DEFAULT_SLICING on
# DEFAULT_REPRESENTATION), the best by DR − FDR on 5 configurations of 64-px images and on the demo's failure modes.
DEFAULT_METHOD = "domino+evidence-attribution"


def evaluate(workspace: Workspace, method: Method, targets: np.ndarray | None = None) -> dict:
    """:func:`score` of ``method`` on ``workspace``, with the seconds it took.

    The truth is the workspace's planted ``blindspot`` column, or ``targets`` (a name per image, '' for none)
    for a workspace that has no such column, such as the demo's.

    The method runs on a scratch copy of the workspace without its ``derived/``
    cache, so its seconds include all its work and a changed method never reads
    results its earlier version cached under the same parameters.
    """
    with tempfile.TemporaryDirectory(prefix="spotcheck-") as scratch:
        copy = Path(scratch) / workspace.path.name
        shutil.copytree(workspace.path, copy, ignore=shutil.ignore_patterns("derived", "*.sqlite*", ".rescan"))
        fresh = Workspace(copy)
        started = time.perf_counter()
        slice_ids, flagged = method.find(fresh)
        seconds = time.perf_counter() - started
        vectors = None if method.representation is None else np.asarray(fresh.representation(method.representation))
        truth = fresh.images["blindspot"].to_numpy(dtype=str) if targets is None else targets
        result = score(slice_ids, flagged, truth, vectors)
        named = naming_rate(fresh.images, slice_ids, flagged) if targets is None else float("nan")
    return {**result, "named": named, "seconds": seconds}


# The manifest's columns that hold the truth: a description may not use them.
TRUTH_COLUMNS = ("blindspot", "true_label")


def naming_rate(images: pd.DataFrame, slice_ids: np.ndarray, flagged: np.ndarray) -> float:
    """The share of the discovered blindspots whose discovering slice the library names right.

    The name is :func:`core.descriptions.describe_members` over the images' feature columns
    (the truth columns left out), as the Slice Table shows it; it is right when it states every
    feature value of the blindspot besides ``square = yes`` (which the slice's label says).
    NaN when nothing is discovered.
    """
    labels = images["blindspot"].to_numpy(dtype=str)
    features = images.drop(columns=list(TRUTH_COLUMNS))
    named, discovered = set(), set()
    for slice_id in np.flatnonzero(np.asarray(flagged, dtype=bool)):
        members = slice_ids == slice_id
        if not members.any():
            continue
        for name in sorted(set(labels) - {""}):
            overlap = int((labels[members] == name).sum())
            if overlap / members.sum() >= PRECISION and overlap / (labels == name).sum() >= COVERAGE:
                discovered.add(name)
                words = describe_members(features, members)
                wanted = [f"{feature} = {value}" for feature, value in (part.split("=") for part in name.split(" & ")) if feature != "square"]
                if all(condition in words for condition in wanted):
                    named.add(name)
    return len(named) / len(discovered) if discovered else float("nan")
