"""Counterfactual augmentation (DASH's T2, without a GAN): keep an image's object, change its context.

DASH (Bertucci et al.) has analysts pick a *style* (a cluster of training
images) and *source* images, and generates images that keep each source's
class evidence in the style's look. Its generator is a GAN; here the look is
transferred by compositing, which needs no training and keeps the object's
pixels exact:

1. the source's object (foreground) is cut out by a mask;
2. the donor (an image of the style, of *another* class) loses its own object
   (inpainted, OpenCV's Telea) and keeps everything else: its background, its
   stamps, its clutter;
3. optionally the object takes the donor object's colour (Lab mean and spread
   transfer, Reinhard et al. 2001), for shortcuts that live on the object;
4. the object is blended onto the donor's background with a feathered mask.

The result keeps the source's label. Sources of class c on the style of other
classes break "cue → c" from both sides when run both ways (circles onto land,
squares onto water).

Foregrounds come, in the order the issue ranks them, from crowd workers' boxes
(GrabCut inside the box), from attribution maps of images the analyst called
*core* (GrabCut seeded by the map), or from GrabCut seeded by the boundary
prior alone (the frame is background; on the demo's training images this
reaches IoU 0.80 with the ground-truth masks once only its largest connected
part is kept (0.68 without), against 0.14 for thresholded GradCAM and 0.31 for
GrabCut seeded by a biased model's GradCAM). Ground-truth
masks are never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import SliceScopeError

FOREGROUND_SOURCES = ("crowd", "attribution", "segmentation")
_BORDER_PX = 3  # the boundary prior: the outermost pixels are background
_GRABCUT_ITERATIONS = 5
_MIN_OBJECT_SHARE, _MAX_OBJECT_SHARE = 0.002, 0.6  # a mask outside this range is no object
_SEED_QUANTILE = 0.85  # an attribution map's top 15% seeds the probable foreground


@dataclass(frozen=True)
class AugmentParams:
    """How counterfactuals are made from sources and a style."""

    background: bool = True  # the object onto the donor's background
    colour: bool = True  # the object takes the donor object's colour
    per_source: int = 1  # counterfactuals per source image
    feather_px: float = 1.0  # blur of the mask's edge
    seed: int = 0

    def __post_init__(self):
        if not (self.background or self.colour):
            raise SliceScopeError("the augmentation changes nothing", "turn on `background` or `colour` (or both)")
        if not 1 <= self.per_source <= 20:
            raise SliceScopeError(f"per_source = {self.per_source} is out of range", "make 1 to 20 counterfactuals per source image")
        if self.feather_px < 0:
            raise SliceScopeError(f"feather_px = {self.feather_px} is negative", "use e.g. 1.0")


# ---------------------------------------------------------------------------- foregrounds


def _grabcut(image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """GrabCut (OpenCV) from a seed mask of GC_* labels, its largest connected part; the seeds' probable foreground if it cannot run."""
    labels = seeds.copy()
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), labels, None, background_model, foreground_model, _GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # one colour everywhere, or no seed of one kind: nothing to separate
        return seeds == cv2.GC_PR_FGD
    return largest_component((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 8-connected part: the object, without the clutter GrabCut also finds distinct from the frame.

    On the demo's training images this lifts IoU with the ground-truth masks from 0.68 to 0.80.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _frame_seeds(size: int) -> np.ndarray:
    seeds = np.full((size, size), cv2.GC_PR_FGD, dtype=np.uint8)
    seeds[:_BORDER_PX], seeds[-_BORDER_PX:], seeds[:, :_BORDER_PX], seeds[:, -_BORDER_PX:] = (cv2.GC_BGD,) * 4
    return seeds


def segment_foreground(image: np.ndarray, box: tuple[int, int, int, int] | None = None, attribution: np.ndarray | None = None) -> np.ndarray:
    """The object of one H × W × 3 uint8 image as a boolean mask, by GrabCut.

    Seeded, in that order of trust, by a box (x0, y0, x1, y1; outside it is
    background), by an attribution map (H × W; its top 15% probable foreground),
    or by the boundary prior alone.
    """
    size = image.shape[0]
    seeds = _frame_seeds(size)
    if box is not None:
        x0, y0, x1, y1 = (round(v) for v in box)
        inside = np.zeros_like(seeds, dtype=bool)
        inside[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
        if not inside.any():
            raise SliceScopeError(f"the box {box} lies outside the {size} px image", "use boxes drawn on this image")
        seeds = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    elif attribution is not None:
        hot = attribution >= np.quantile(attribution, _SEED_QUANTILE)
        seeds = np.where(hot & (seeds != cv2.GC_BGD), cv2.GC_PR_FGD, np.where(seeds == cv2.GC_BGD, cv2.GC_BGD, cv2.GC_PR_BGD)).astype(np.uint8)
    return _grabcut(image, seeds)


def usable_mask(mask: np.ndarray) -> bool:
    """A mask that covers (almost) nothing or (almost) everything marks no object."""
    share = float(mask.mean())
    return _MIN_OBJECT_SHARE <= share <= _MAX_OBJECT_SHARE


# ---------------------------------------------------------------------------- compositing


def remove_object(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the masked object inpainted from its surroundings (the donor's background)."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2)
    return cv2.inpaint(np.ascontiguousarray(image), grown, 3, cv2.INPAINT_TELEA)


def transfer_colour(image: np.ndarray, mask: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray) -> np.ndarray:
    """The masked pixels of ``image`` with the mean and spread of the donor's masked pixels, in Lab (Reinhard et al.)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    donor_lab = cv2.cvtColor(donor, cv2.COLOR_RGB2LAB).astype(np.float32)
    source, target = lab[mask], donor_lab[donor_mask]
    scale = (target.std(axis=0) + 1.0) / (source.std(axis=0) + 1.0)
    lab[mask] = (source - source.mean(axis=0)) * scale + target.mean(axis=0)
    recoloured = image.copy()  # only the object changes: a Lab round trip would shift the other pixels by a unit or two
    recoloured[mask] = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)[mask]
    return recoloured


def composite(source: np.ndarray, source_mask: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray, params: AugmentParams) -> np.ndarray:
    """One counterfactual: the source's object, in the donor's context (and colour), as H × W × 3 uint8."""
    obj = transfer_colour(source, source_mask, donor, donor_mask) if params.colour else source
    if not params.background:
        return np.where(source_mask[..., None], obj, source)
    alpha = source_mask.astype(np.float32)
    if params.feather_px > 0:
        alpha = np.maximum(alpha, cv2.GaussianBlur(alpha, (0, 0), params.feather_px))
    alpha = alpha[..., None]
    blended = alpha * obj.astype(np.float32) + (1 - alpha) * remove_object(donor, donor_mask).astype(np.float32)
    return np.rint(blended).astype(np.uint8)


def pair_donors(source_labels: np.ndarray, donor_labels: np.ndarray, per_source: int, rng: np.random.Generator) -> np.ndarray:
    """For each source (repeated ``per_source`` times), a donor of another class, spread evenly over the pool.

    Refused when some source's class is the only class the style has.
    """
    classes = np.unique(source_labels)
    pools = {c: np.flatnonzero(donor_labels != c) for c in classes}
    lacking = [int(c) for c, pool in pools.items() if len(pool) == 0]
    if lacking:
        raise SliceScopeError("the style has no images of another class than the sources'",
                              "pick a style cluster or slice with images of other classes (or other sources)")
    donors = np.empty(len(source_labels) * per_source, dtype=np.int64)
    repeated = np.repeat(source_labels, per_source)
    for c, pool in pools.items():
        where = np.flatnonzero(repeated == c)
        donors[where] = pool[rng.permutation(np.resize(rng.permutation(len(pool)), len(where)))]
    return donors
