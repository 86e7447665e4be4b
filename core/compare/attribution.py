"""Segment Shapley values (IMACS §4): how much each segment of an image adds to a model's score of the class.

An excluded segment takes the baseline's pixels; a coalition of segments is the
baseline with those segments' own pixels put back. Shapley values are estimated
by captum's ``ShapleyValueSampling`` (random permutations; every permutation's
marginal contributions sum to f(image) − f(baseline), so the estimate keeps
that sum exactly).

The baseline must be something the model does not read as the class, or a cue
it carries is never removed. IMACS (§4) blurs excluded segments rather than
greying them, since grey may tie to a class; a blur keeps every colour, though,
so a colour cue survives it: on the full demo, the biased model reads the
blurred images as circle (its shortcut is water, i.e. blue) with mean
probability 0.39 (the balanced one 0.40), and the water segments' mean
attribution for circle was 0.040 biased against −0.045 balanced. The default
baseline is therefore the dataset's mean colour, flat: it has no detail and no
colour of its own, and the two models read it as circle with probability 0.016
and 0.075, as triangle 0.19 and 0.29 (as star, their default, 0.78 and 0.43); with it the water segments get 0.34 biased against 0.05 balanced
(``benchmarks/compare.py``). ``blur`` stays available as the paper's choice.

The players are the segments themselves: captum perturbs a presence vector
(one entry per segment, 1 = its own pixels, 0 = the baseline's) and the forward
composes the image from it. Passing the pixels with a ``feature_mask`` gives
the same values, but captum walks the mask element by element in Python on
every permutation (``feat_tensor_index_map`` in its perturbation generator):
with a per-image mask (needed once ``top_n`` picks different segments per
image), 16 images of 64 × 64 pixels cost 0.44 s per permutation with a model
that only sums its input (0.05 s with one mask shared by all images), against
milliseconds here. ``perturbations_per_eval`` batches several coalitions
into one model call; by default a call holds about 16 images (one coalition of
16 images per call at the default ``images_per_call``): on the full demo's CNN
on 2 cores, larger calls cost more per image (0.33 ms at 64 images, 0.59 ms at
256: the activations outgrow the caches), and 200 images × 2 models took 4.4 s
one coalition per call against 4.6–6.6 s at 64 images per call and 7.9–8.6 s
with a whole permutation per call (``benchmarks/compare.py`` prints the three).
On a GPU, larger calls pay: set ``perturbations_per_eval`` there.

Optionally only the ``top_n`` segments with the most GradCAM mass are players
(the paper pre-selects 5 by XRAI); the others keep their own pixels throughout.
The scan's stored GradCAM map (of the predicted class) serves, so choosing them
runs no model.

SLIC gives each image its own number of segments, but captum needs one
presence vector width for all: every image's players are drawn from the ids
of the image with the most segments, so an image with fewer has players it
lacks. They cover no pixels, so their Shapley value is exactly 0 (no
coalition changes with them); their boxes are −1 (``SegmentAttributions.present``)
and the comparison drops them before embedding and clustering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
import torch
from torch.nn import functional

from core.compare.sampling import as_workspace, class_index
from core.compare.segments import SegmentParams, player_boxes, segment_id_count, segment_images
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace

OUTPUTS = ("probability", "logit")
BASELINES = ("mean_colour", "blur")
CACHE_KIND = "compare-shapley"
# Relative spread of a model's outputs below which every output counts as the same.
_CONSTANT_TOLERANCE = 1e-6
# Images (a seeded subsample) whose pixels give the dataset's mean colour: its third decimal no longer moves.
_COLOUR_IMAGES = 256
_IMAGES_PER_MODEL_CALL = 16  # the default batching's target: larger model calls were slower per image on CPU (module docstring)

Score = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ShapleyParams:
    """How segment Shapley values are estimated.

    ``n_samples``: random permutations per image (captum's; more is less noisy);
    ``output``: the class's ``logit`` or its softmax ``probability``. The logit is the
    default because a softmax saturates: a confident model's probability does not
    move when one segment is excluded, so its attributions vanish (a small network
    fitted to the tiny demo: mean |value| 0.0003 as probability, 0.016 as logit,
    against 0.00002 and 0.0001 untrained); probabilities are bounded, so two models'
    values share a scale, at that price. ``baseline``: what an excluded segment shows,
    ``mean_colour`` (the dataset's mean colour, the default; see the module's
    docstring for why) or ``blur`` (the image Gaussian-blurred, as IMACS does);
    ``blur_sigma``: that Gaussian's σ as a share of the image side (1/16: a quarter
    of a 4 × 4 grid cell); ``top_n``: only the segments
    with the most GradCAM mass are players (None: all); ``images_per_call``: images
    per captum call; ``perturbations_per_eval``: coalitions per model call (None:
    as many as keep a call near 16 images). The last two change speed and memory, not the values.
    """

    n_samples: int = 10
    output: str = "logit"
    baseline: str = "mean_colour"
    blur_sigma: float = 1 / 16
    top_n: int | None = None
    seed: int = 0
    images_per_call: int = 16
    perturbations_per_eval: int | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise SliceScopeError(f"unknown output '{self.output}'", f"use one of: {', '.join(OUTPUTS)}")
        if self.baseline not in BASELINES:
            raise SliceScopeError(f"unknown baseline '{self.baseline}'", f"set `baseline` to one of: {', '.join(BASELINES)}")
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise SliceScopeError(f"`n_samples` = {self.n_samples} permutations estimate nothing", "set `n_samples` to 1 or more (e.g. 10)")
        if not 0 < self.blur_sigma <= 1:
            raise SliceScopeError(f"`blur_sigma` = {self.blur_sigma} is not a share of the image side", "set `blur_sigma` between 0 and 1 (e.g. 0.0625)")
        if self.top_n is not None and (not isinstance(self.top_n, int) or self.top_n < 1):
            raise SliceScopeError(f"`top_n` = {self.top_n} segments per image leaves nothing to attribute", "set `top_n` to 1 or more, or None for all")
        if not isinstance(self.images_per_call, int) or self.images_per_call < 1:
            raise SliceScopeError(f"`images_per_call` = {self.images_per_call}", "set `images_per_call` to 1 or more")
        if self.perturbations_per_eval is not None and (not isinstance(self.perturbations_per_eval, int) or self.perturbations_per_eval < 1):
            raise SliceScopeError(f"`perturbations_per_eval` = {self.perturbations_per_eval}", "set `perturbations_per_eval` to 1 or more, or None")

    def record(self) -> dict:
        """What the values depend on (not how they are batched), for cache keys."""
        recorded = asdict(self)
        del recorded["perturbations_per_eval"]
        return recorded


@dataclass(frozen=True)
class ShapleyResult:
    values: np.ndarray  # N × n: each player's Shapley value
    scores: np.ndarray  # N: f(image)
    baseline_scores: np.ndarray  # N: f(the image with every player excluded); the values sum to scores − baseline_scores


@dataclass(frozen=True)
class SegmentAttributions:
    """One model's segment Shapley values on its sample; ``players`` and ``boxes`` name the segments (row per image)."""

    image_ids: list[str]
    rows: np.ndarray  # positions in the workspace's images
    players: np.ndarray  # N × n segment ids
    boxes: np.ndarray  # N × n × 4: x0, y0, x1, y1 at the model's input size, ends exclusive; −1 for a player its image lacks
    values: np.ndarray  # N × n
    scores: np.ndarray  # N
    baseline_scores: np.ndarray  # N
    image_size: int

    @property
    def present(self) -> np.ndarray:
        """N × n: whether each player is a segment of its image (False: padding of an image with fewer SLIC segments, value 0)."""
        return self.boxes[..., 0] >= 0


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of σ pixels (kernel ±3σ, reflected at the edges) of B × 3 × S × S images."""
    from torchvision.transforms.v2 import functional as vision

    radius = min(max(1, math.ceil(3 * sigma)), images.shape[-1] - 1)
    return vision.gaussian_blur(images, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])


def baseline_images(images: torch.Tensor, params: ShapleyParams, colour: torch.Tensor | None = None) -> torch.Tensor:
    """What each of ``images`` (B × 3 × S × S) shows with every segment excluded: ``colour`` (3; None: the images' own mean
    colour) everywhere, or the images blurred, as ``params.baseline`` says."""
    if params.baseline == "blur":
        return blur(images, params.blur_sigma * images.shape[-1])
    colour = images.mean(dim=(0, 2, 3)) if colour is None else colour
    return colour.to(images.dtype).view(1, 3, 1, 1).expand_as(images).clone()


def dataset_colour(workspace: Workspace, seed: int = 0) -> torch.Tensor:
    """The mean colour (3, in [0, 1]) of a seeded subsample of the workspace's images.

    Chosen by image id, so two scans of the same images give the same colour
    and both compared models are measured against the same baseline.
    """
    from core.mitigation.robustness import load_pixels

    rows = np.argsort(workspace.images["image_id"].astype(str).to_numpy(), kind="stable")
    if len(rows) > _COLOUR_IMAGES:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), _COLOUR_IMAGES, replace=False))]
    size = int(workspace.manifest["transforms"]["image_size"])
    return load_pixels(workspace, rows, size).mean(dim=(0, 2, 3))


def class_score(module: torch.nn.Module, column: int, normalize: str, output: str = "logit", device: str | torch.device = "cpu") -> Score:
    """f: pixels in [0, 1] (B × 3 × S × S) → the model's score of class ``column`` (B)."""
    from core.mitigation.robustness import normalise

    def score(pixels: torch.Tensor) -> torch.Tensor:
        logits = module(normalise(pixels, normalize).to(device))
        values = logits.softmax(dim=1) if output == "probability" else logits
        return values[:, column].float().cpu()

    return score


def _presence_forward(score: Score) -> Callable[..., torch.Tensor]:
    """The forward captum perturbs: a presence per player → the composed image → its score."""

    def forward(presence: torch.Tensor, images: torch.Tensor, baseline: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        # ``where`` maps each pixel to its player's column, or to an extra column of ones for pixels of no player.
        always = presence.new_ones(len(presence), 1)
        keep = torch.cat([presence, always], dim=1).gather(1, where).view(len(presence), 1, *images.shape[2:])
        return score(baseline + keep * (images - baseline))

    return forward


def _player_columns(segments: torch.Tensor, players: torch.Tensor) -> torch.Tensor:
    """Per pixel (N × S·S), the column of its segment in ``players``, or n for a segment that is no player."""
    n_images, n_players = players.shape
    # Wide enough for padding players too: ids beyond an image's (and possibly every image's) segments.
    n_ids = max(int(segments.max()), int(players.max())) + 1
    lookup = torch.full((n_images, n_ids), n_players, dtype=torch.long)
    lookup.scatter_(1, players, torch.arange(n_players).expand(n_images, -1))
    return lookup.gather(1, segments.flatten(1))


@torch.no_grad()
def shapley_values(
    score: Score, images: torch.Tensor, segments: torch.Tensor, players: torch.Tensor, params: ShapleyParams | None = None,
    progress: ProgressFn | None = None, step: str = "Shapley values", colour: torch.Tensor | None = None,
) -> ShapleyResult:
    """Shapley values of the ``players`` segments of each image (N × n), with f(image) and f(baseline).

    ``images``: N × 3 × S × S in [0, 1]; ``segments``: N × S × S segment ids;
    ``players``: N × n segment ids whose values are wanted; ``colour``: the
    mean-colour baseline's colour (3; None: the mean colour of ``images``).
    Seeded by ``params.seed`` without touching the caller's random state.
    """
    from captum.attr import ShapleyValueSampling

    report, params = progress or silent, params or ShapleyParams()
    n_images, n_players = players.shape
    baseline = baseline_images(images, params, colour)
    where = _player_columns(segments.long(), players.long())
    forward = _presence_forward(score)
    sampler = ShapleyValueSampling(forward)
    per_eval = params.perturbations_per_eval or max(1, min(n_players, _IMAGES_PER_MODEL_CALL // params.images_per_call))
    values, scores, baseline_scores = [], [], []
    report(step, 0, n_images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        for start in range(0, n_images, params.images_per_call):
            chunk = slice(start, start + params.images_per_call)
            presence = torch.ones(len(images[chunk]), n_players)
            context = (images[chunk], baseline[chunk], where[chunk])
            values.append(sampler.attribute(presence, baselines=torch.zeros_like(presence), additional_forward_args=context,
                                            n_samples=params.n_samples, perturbations_per_eval=per_eval))
            scores.append(score(images[chunk]))
            baseline_scores.append(forward(torch.zeros_like(presence), *context))
            report(step, min(n_images, start + params.images_per_call), n_images)
    if not values:
        return ShapleyResult(np.zeros((0, n_players), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    return ShapleyResult(torch.cat(values).numpy().astype(np.float32), torch.cat(scores).numpy(), torch.cat(baseline_scores).numpy())


def gradcam_players(cams: np.ndarray, segments: np.ndarray, n_segments: int, top_n: int | None) -> np.ndarray:
    """Per image, the ``top_n`` of ids 0..``n_segments``−1 holding the most GradCAM mass (ascending ids; all when None).

    ``cams``: N × h × w maps, upsampled bilinearly to the segments' S × S.
    An id an image lacks holds no mass, and ties go to the lower id, so it is
    picked only when the image has fewer than ``top_n`` segments (SLIC's ids
    are 0..k−1 per image).
    """
    n_images = len(segments)
    if top_n is None or top_n >= n_segments:
        return np.tile(np.arange(n_segments), (n_images, 1))
    size = segments.shape[-2:]
    maps = functional.interpolate(torch.from_numpy(np.asarray(cams, dtype=np.float32))[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    ids = torch.from_numpy(segments).long().flatten(1)
    mass = torch.zeros(n_images, n_segments).scatter_add_(1, ids, maps.flatten(1).clamp_min(0))
    order = torch.argsort(mass, dim=1, descending=True, stable=True)[:, :top_n]
    return np.sort(order.numpy(), axis=1)


def image_rows(workspace: Workspace, image_ids: list[str]) -> np.ndarray:
    """The positions of ``image_ids`` in the workspace's images."""
    positions = {image: row for row, image in enumerate(workspace.images["image_id"].astype(str))}
    missing = [image for image in image_ids if image not in positions]
    if missing:
        raise SliceScopeError(f"workspace {workspace.name} has no image {missing[0]}", "sample images from the workspaces being compared")
    return np.array([positions[image] for image in image_ids], dtype=np.int64)


def refuse_constant_model(workspace: Workspace, module: torch.nn.Module, pixels: torch.Tensor, normalize: str, device) -> None:
    """Refuse a model whose outputs are the same for every input (its attributions would all be 0), or not finite."""
    from core.mitigation.robustness import normalise

    with torch.no_grad():
        logits = module(normalise(pixels, normalize).to(device)).float().cpu()
    if not torch.isfinite(logits).all():
        raise SliceScopeError(f"the model of workspace {workspace.name} returns NaN or infinite scores", "compare a model whose outputs are finite numbers")
    spread = (logits - logits[:1]).abs().max()
    if spread <= _CONSTANT_TOLERANCE * max(1.0, float(logits.abs().max())):
        raise SliceScopeError(
            f"the model of workspace {workspace.name} gives the same output for every image, so every segment's attribution would be 0",
            "compare a model that responds to its input (check that its checkpoint holds trained weights)",
        )


def cache_params(other: Workspace, class_name: str, images_key: str, segments: SegmentParams, params: ShapleyParams) -> dict:
    """What one model's Shapley values depend on besides its own scan: the comparison's other model, images, segments and settings."""
    return {"other": other.fingerprint, "class": class_name, "images": images_key, "segments": segments.record(), **params.record()}


def workspace_attributions(
    workspace: Workspace | str, other: Workspace | str, image_ids: list[str], class_name: str, images_key: str,
    segments: SegmentParams | None = None, params: ShapleyParams | None = None, progress: ProgressFn | None = None,
    step: str = "Shapley values",
) -> SegmentAttributions:
    """The segment Shapley values of ``workspace``'s model on ``image_ids`` for ``class_name``, computed once.

    Stored in the workspace's derived cache under everything they depend on
    (``cache_params``), written only once complete. ``images_key`` names the
    images in order (``Sample.key``).
    """
    from core.extract import load_workspace_model
    from core.mitigation.robustness import load_pixels

    workspace, other = as_workspace(workspace), as_workspace(other)
    segments, params = segments or SegmentParams(), params or ShapleyParams()
    column = class_index(workspace, class_name)
    rows = image_rows(workspace, image_ids)
    size = int(workspace.manifest["transforms"]["image_size"])
    normalize = workspace.manifest["transforms"]["normalize"]

    @cache
    def sample_pixels() -> torch.Tensor:
        return load_pixels(workspace, rows, size)

    # SLIC's masks are found again on every call rather than cached: about 3 ms an image at 64 px, reading included.
    masks = segment_images(len(rows), size, segments, sample_pixels() if segments.method == "slic" else None)
    players = gradcam_players(np.asarray(workspace.array("gradcam"))[rows], masks, segment_id_count(masks, segments), params.top_n)
    n_players = players.shape[1]

    def compute() -> np.ndarray:
        if not len(rows):
            return np.zeros((0, n_players + 2), np.float32)
        model = load_workspace_model(workspace)
        pixels = sample_pixels()
        module = model.module.eval()
        colour = dataset_colour(workspace) if params.baseline == "mean_colour" else None
        refuse_constant_model(workspace, module, torch.cat([pixels, baseline_images(pixels, params, colour)]), normalize, model.device)
        result = shapley_values(class_score(module, column, normalize, params.output, model.device), pixels, torch.from_numpy(masks),
                                torch.from_numpy(players), params, progress, step, colour)
        return np.column_stack([result.values, result.scores, result.baseline_scores]).astype(np.float32)

    stored = workspace.cached_array(CACHE_KIND, cache_params(other, class_name, images_key, segments, params), compute)
    return SegmentAttributions(list(image_ids), rows, players, player_boxes(masks, players), stored[:, :n_players], stored[:, n_players], stored[:, n_players + 1], size)
