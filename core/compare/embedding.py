"""Segment embeddings by an independent third model (IMACS §3–4), so that similar segments of both models cluster together.

Each compared model's own features are idiosyncratic to it, so IMACS embeds
segments with a third model and takes its last pooling layer's output. The
paper uses an ImageNet-trained Inception; SliceScope downloads nothing, so by
default it trains a small CNN here, once per workspace and settings (seeded,
a few epochs on a subsample of the workspace's training images, its
state_dict cached in the workspace's derived folder). It learns on random
crops of the training images resized to the full input size, because that is
what a segment tile is; predicting the image's class from a crop gives it a
reason to tell apart the textures, colours and marks that carry class
information, which are what a comparison looks for. It needs a few epochs to
learn more than colour: on the full demo (``benchmarks/compare.py``), after 2
epochs on 2,000 images the cluster richest in watermark segments is 28% stamp
and holds 25 of the 100 stamp segments; after 6 (about 8 s more on two
cores) it is 100% stamp and holds all of them. A user's torchvision model with
its checkpoint can be given instead (loaded with ``weights_only=True``). The embedding is the input of the model's last
``nn.Linear``: the penultimate layer's output.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from core.compare.attribution import SegmentAttributions
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace, atomic_write

EMBEDDER_KIND = "compare-embedder"
EMBEDDING_KIND = "compare-embedding"
_EMBED_BATCH = 256
_LEARNING_RATE = 3e-3
# Training crops span from this share of the side (a tile of an 8 × 8 grid) to the whole image.
_SMALLEST_CROP = 1 / 8


@dataclass(frozen=True)
class EmbeddingParams:
    """The third model: a small CNN trained here (default), or a torchvision ``arch`` with its ``checkpoint``.

    ``num_classes``: the torchvision model's outputs (ImageNet's 1000, as the paper's);
    ``image_size``: tiles are resized to it (None: the workspace model's input
    size for the small CNN, 224 for a torchvision model); ``normalize``: what a
    torchvision model expects (the small CNN reads pixels in [0, 1]); ``epochs``,
    ``train_images`` (a seeded subsample), ``batch_size`` and ``seed`` train the small CNN.
    """

    arch: str | None = None
    checkpoint: Path | None = None
    num_classes: int = 1000
    image_size: int | None = None
    normalize: str = "imagenet"
    epochs: int = 6
    train_images: int = 2000
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.arch is None) != (self.checkpoint is None):
            raise SliceScopeError("an embedding model needs both `arch` and `checkpoint`", "pass both (a torchvision name and its state_dict), or neither to train a small CNN")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise SliceScopeError(f"`image_size` = {self.image_size} px is too small for a tile", "set `image_size` to 8 or more, or None")
        if not isinstance(self.epochs, int) or self.epochs < 1 or not isinstance(self.train_images, int) or self.train_images < 1:
            raise SliceScopeError(f"the embedding model cannot train for {self.epochs} epochs on {self.train_images} images",
                                  "set `epochs` and `train_images` to 1 or more")


class TileCNN(nn.Module):
    """A four-block CNN whose global-average-pooled 4·``width`` features are the embedding.

    The shape of the demo's classifier (a strided stem, then blocks halving the
    resolution), written out here because the library never imports the demo.
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()

        def block(channels_in: int, channels_out: int) -> list[nn.Module]:
            return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]

        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.MaxPool2d(2),
            *block(4 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(images)), 1))


@dataclass
class Embedder:
    """The third model, ready to embed tiles; ``key`` says what it is, for cache keys."""

    module: nn.Module
    image_size: int
    normalize: str
    key: dict

    @torch.no_grad()
    def embed(self, tiles: torch.Tensor, progress: ProgressFn | None = None, step: str = "embedding segments") -> np.ndarray:
        """The penultimate features of tiles (T × 3 × s × s in [0, 1], s = ``image_size``): T × D float32."""
        from core.mitigation.robustness import normalise

        report = progress or silent
        head = _last_linear(self.module)
        captured: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().flatten(1)))
        self.module.eval()
        try:
            for start in range(0, len(tiles), _EMBED_BATCH):
                self.module(normalise(tiles[start:start + _EMBED_BATCH], self.normalize))
                report(step, min(len(tiles), start + _EMBED_BATCH), len(tiles))
        finally:
            handle.remove()
        return torch.cat(captured).numpy().astype(np.float32) if captured else np.zeros((0, head.in_features), np.float32)


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    if not linears:
        raise SliceScopeError(f"the embedding model {type(module).__name__} has no nn.Linear head whose input could serve as the embedding",
                              "pass a classifier `arch` (e.g. resnet18)")
    return linears[-1]


def crop_resize(pixels: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop k of image k of ``pixels`` (N × 3 × S × S) at ``boxes`` (N × 4: x0, y0, x1, y1, fractional), resized to ``size`` × ``size``.

    One batched bilinear ``roi_align``, for random training crops (it samples a
    little across a box's edge, which does not matter there).
    """
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes.float()], dim=1)
    return roi_align(pixels.float(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True).clamp_(0.0, 1.0)


def segment_tiles(pixels: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Every segment's tile: its box cropped from its image and resized (T × 3 × size × size, image by image).

    ``boxes``: N × n × 4; a box of −1 (a padding player, no segment of its
    image) has no tile, so T is N·n less those. Cropped exactly, then resized
    with the crop's own edge pixels repeated, so no tile takes colour from its
    neighbours (``roi_align`` samples across a box's edge); boxes shared by
    many images (a grid's) are resized in one call.
    """
    n_images, n_segments = boxes.shape[:2]
    present = boxes.reshape(-1, 4)[:, 0] >= 0
    flat = boxes.reshape(-1, 4)[present]
    image_of = np.repeat(np.arange(n_images), n_segments)[present]
    tiles = torch.empty(len(flat), 3, size, size)
    for box in np.unique(flat, axis=0):
        x0, y0, x1, y1 = (int(value) for value in box)
        positions = np.flatnonzero((flat == box).all(axis=1))
        crops = pixels[torch.from_numpy(image_of[positions])][:, :, y0:y1, x0:x1].float()
        tiles[torch.from_numpy(positions)] = functional.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tiles.clamp_(0.0, 1.0)


def _random_crops(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random square crop per image, from an eighth of the side to all of it, resized back to the full size."""
    n_images, size = len(pixels), pixels.shape[-1]
    sides = size * (_SMALLEST_CROP + (1 - _SMALLEST_CROP) * torch.rand(n_images, generator=generator))
    x0 = (size - sides) * torch.rand(n_images, generator=generator)
    y0 = (size - sides) * torch.rand(n_images, generator=generator)
    return crop_resize(pixels, torch.stack([x0, y0, x0 + sides, y0 + sides], dim=1), size)


def train_tile_cnn(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, params: EmbeddingParams,
                   progress: ProgressFn | None = None, step: str = "training the embedding model") -> TileCNN:
    """A :class:`TileCNN` fitted to predict each image's label from random crops of it (``pixels``: uint8 N × 3 × S × S).

    Seeded by ``params.seed`` without touching the caller's random state.
    """
    report = progress or silent
    steps = params.epochs * -(-len(labels) // params.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = TileCNN(num_classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=_LEARNING_RATE, total_steps=steps, pct_start=0.1)
        generator = torch.Generator().manual_seed(params.seed)
        model.train()
        done = 0
        report(step, 0, steps)
        for _epoch in range(params.epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(params.batch_size):
                crops = _random_crops(pixels[batch].float().div_(255.0), generator)
                loss = functional.cross_entropy(model(crops), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
                report(step, done, steps)
    return model.eval()


def _training_subset(workspace: Workspace, params: EmbeddingParams):
    """The seeded subsample of the workspace's training images the small CNN learns from (an index, not decoded)."""
    from core.data import load_index
    from core.training import default_training_data

    training = default_training_data(workspace)
    index = load_index(training.data, training.split)
    table = index.table.sort_values("image_id").reset_index(drop=True)
    if len(table) > params.train_images:
        chosen = np.sort(np.random.default_rng(params.seed).choice(len(table), params.train_images, replace=False))
        table = table.iloc[chosen].reset_index(drop=True)
    return replace(index, table=table)


def embedder_source(workspace: Workspace, params: EmbeddingParams) -> dict:
    """What the small CNN depends on: its training images (files, labels, sizes, times) and settings."""
    subset = _training_subset(workspace, params)
    return {"training": subset.fingerprint(), "classes": workspace.classes, "image_size": _tile_size(workspace, params), **_training_record(params)}


def _training_record(params: EmbeddingParams) -> dict:
    recorded = asdict(params)
    for unused in ("arch", "checkpoint", "num_classes", "image_size", "normalize"):
        del recorded[unused]
    return recorded


def _tile_size(workspace: Workspace, params: EmbeddingParams) -> int:
    if params.image_size is not None:
        return params.image_size
    return int(workspace.manifest["transforms"]["image_size"]) if params.arch is None else 224


def embedding_model(workspace: Workspace, params: EmbeddingParams | None = None, progress: ProgressFn | None = None) -> Embedder:
    """The third model: ``params``' torchvision model, or the small CNN trained on ``workspace``'s training images (once)."""
    params = params or EmbeddingParams()
    size = _tile_size(workspace, params)
    if params.arch is not None:
        return _torchvision_embedder(params, size)
    source = embedder_source(workspace, params)
    path = workspace.derived_path(EMBEDDER_KIND, source, ".pt")
    model = TileCNN(len(workspace.classes))
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return Embedder(model.eval(), size, "none", {"kind": "trained", **source})
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
            path.unlink(missing_ok=True)  # a damaged cache is trained again
    model = _train_on_workspace(workspace, params, size, progress)
    try:
        atomic_write(path, lambda target: torch.save(model.state_dict(), target))
    except OSError:
        pass  # a read-only workspace trains it again next time
    return Embedder(model, size, "none", {"kind": "trained", **source})


def _train_on_workspace(workspace: Workspace, params: EmbeddingParams, size: int, progress: ProgressFn | None) -> TileCNN:
    from core.mitigation.trainset import load_images

    report = progress or silent
    loaded = load_images(_training_subset(workspace, params), size, {}, workspace.classes, report, "reading training images for the embedding model")
    return train_tile_cnn(loaded.pixels, loaded.labels, len(workspace.classes), params, report)


def _torchvision_embedder(params: EmbeddingParams, size: int) -> Embedder:
    from core.models import ModelSpec, file_sha256, load_module

    # load_module reads the state_dict with weights_only=True and names the right `num_classes` when it does not fit.
    module = load_module(ModelSpec(checkpoint=Path(params.checkpoint).expanduser(), arch=params.arch, num_classes=params.num_classes))
    key = {"kind": "torchvision", "arch": params.arch, "checkpoint": file_sha256(Path(params.checkpoint).expanduser()), "image_size": size,
           "normalize": params.normalize}
    return Embedder(module, size, params.normalize, key)


def segment_embeddings(workspace: Workspace, attributions: SegmentAttributions, embedder: Embedder, progress: ProgressFn | None = None,
                       step: str = "embedding segments") -> np.ndarray:
    """The embedding of every present segment of ``attributions`` (image by image, padding left out), computed once per embedder and segments."""
    from core.mitigation.robustness import load_pixels

    segments = hashlib.sha256("\n".join(attributions.image_ids).encode() + attributions.boxes.astype(np.int64).tobytes()).hexdigest()[:16]

    def compute() -> np.ndarray:
        if not len(attributions.rows):
            width = _last_linear(embedder.module).in_features
            return np.zeros((0, width), np.float32)
        pixels = load_pixels(workspace, attributions.rows, attributions.image_size)
        return embedder.embed(segment_tiles(pixels, attributions.boxes, embedder.image_size), progress, step)

    return workspace.cached_array(EMBEDDING_KIND, {"embedder": embedder.key, "segments": segments, "image_size": attributions.image_size}, compute)


def estimate_training_seconds(workspace: Workspace, params: EmbeddingParams | None = None) -> float:
    """About how long :func:`embedding_model` takes here: 0 when it needs no training or is cached, else reading + steps, timed."""
    from core.data import read_image

    params = params or EmbeddingParams()
    if params.arch is not None:
        return 0.0
    source = embedder_source(workspace, params)
    if workspace.derived_path(EMBEDDER_KIND, source, ".pt").is_file():
        return 0.0
    subset = _training_subset(workspace, params)
    size = _tile_size(workspace, params)
    probe = subset.table["path"].head(16)
    started = time.perf_counter()
    for path in probe:
        try:
            read_image(subset.absolute_path(path))
        except (OSError, ValueError):
            pass  # an unreadable file is skipped by the training too
    per_read = (time.perf_counter() - started) / max(1, len(probe))
    pixels = torch.randint(0, 256, (params.batch_size, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, len(workspace.classes), (params.batch_size,))
    one_step = replace(params, epochs=1)
    train_tile_cnn(pixels[:2], labels[:2], len(workspace.classes), one_step)  # the first step pays for torch's one-time set-up
    started = time.perf_counter()
    train_tile_cnn(pixels, labels, len(workspace.classes), one_step)
    per_step = time.perf_counter() - started
    steps = params.epochs * -(-len(subset.table) // params.batch_size)
    return len(subset.table) * per_read + steps * per_step
