"""A simulated crowd, for the demo and the tests only: it answers a campaign's tasks from the demo's ground truth.

Nothing here is real crowd work. Every simulated worker is named ``sim-worker-NN``
and the demo's campaign is called "Simulated crowd (demo)", so simulated answers
can never pass for a real campaign's.

Each simulated worker looks at an image's saliency map (the campaign's own method
and parameters, recomputed) the way a person looks at the overlay: the *hot*
pixels (at least half the map's robust peak) are what catch the eye. The image has
up to three regions the demo's ground truth can name:

* the object: its visible mask's bounding box; named by its shape ("circle"…,
  sometimes "shape" or "object") with its colour as attribute;
* the watermark, when the image has one: the stamp's box; "stamp", "watermark" or
  "logo", attribute "white";
* the background: the window over its hottest part; named by the background
  ("water", or "sea", "lake"…; "grass", "sand", "rock") with attributes such as
  "blue" and "wavy".

A region is boxed when its share of the hot saliency reaches the worker's
threshold (about 0.3), and the region with the largest share always is, so every
image gets a box, as the store requires. The noise is seeded: per-worker
preferred synonyms, misspellings ("watr", "stmap"), plurals, grey/gray,
capitals, jittered boxes and a share of missed secondary regions. One worker per
campaign is lazy: a box per image, generic terms ("thing", "nice"), a second or
two per image; the store flags those answers as too fast, and the analysis leaves
them out.

Answers go through :meth:`CampaignStore.open_task` and :meth:`CampaignStore.submit`
like a worker's, never into the tables directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.crowd.campaigns import Box, Campaign, CampaignStore, TaskToken
from core.demo.dataset import IMAGE_SIZE, STAMP_BOX
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace

SIMULATED_PREFIX = "sim-worker-"
DEMO_CAMPAIGN_NAME = "Simulated crowd (demo)"
GROUND_TRUTH_COLUMNS = ("true_class", "colour", "background", "watermark", "mask_path")
HOT_LEVEL = 0.5  # a pixel catches the eye at half the map's (robust) peak
POOL_SIZE = 12  # simulated workers per campaign (fewer when there are fewer assignments)
RESULT_COLUMNS = ("task_id", "assignment_id", "worker_id", "lazy", "seconds", "boxes", "completion_code")

# Term → weight; the first term is the usual one. Per worker, one term of each list is their habit.
SHAPE_TERMS = {
    "circle": {"circle": 0.85, "disc": 0.08, "ball": 0.07},
    "square": {"square": 0.85, "rectangle": 0.1, "tile": 0.05},
    "triangle": {"triangle": 0.95, "wedge": 0.05},
    "star": {"star": 1.0},
}
GENERIC_SHAPES = ("shape", "object")
COLOUR_TERMS = {
    "red": {"red": 0.95, "crimson": 0.05},
    "yellow": {"yellow": 0.9, "golden": 0.1},
    "green": {"green": 0.95, "lime": 0.05},
    "blue": {"blue": 0.95, "navy": 0.05},
    "purple": {"purple": 0.8, "violet": 0.2},
}
BACKGROUND_TERMS = {
    "water": {"water": 0.75, "sea": 0.1, "lake": 0.07, "waves": 0.08},
    "grass": {"grass": 0.85, "lawn": 0.15},
    "sand": {"sand": 0.85, "beach": 0.15},
    "rock": {"rock": 0.7, "stone": 0.3},
}
BACKGROUND_ATTRIBUTES = {  # (attribute, probability), the first always given
    "water": (("blue", 1.0), ("wavy", 0.4)),
    "grass": (("green", 1.0), ("striped", 0.3)),
    "sand": (("beige", 1.0), ("grainy", 0.3)),
    "rock": (("grey", 1.0), ("rough", 0.3)),
}
WATERMARK_TERMS = {"stamp": 0.55, "watermark": 0.3, "logo": 0.15}
WATERMARK_ATTRIBUTES = (("white", 1.0), ("rectangular", 0.2))
LAZY_TYPES = ("thing", "object", "stuff")
LAZY_ATTRIBUTES = ("nice", "colorful", "normal")
COUNTABLE = frozenset({"circle", "disc", "ball", "square", "rectangle", "tile", "triangle", "wedge", "star", "stamp", "watermark", "logo",
                       "rock", "stone", "shape", "object"})
TYPOS = {"water": "watr", "stamp": "stmap", "circle": "circel", "triangle": "triangel", "square": "sqaure", "yellow": "yelow",
         "purple": "purpel", "watermark": "watermakr", "green": "gren"}


@dataclass(frozen=True)
class SimulatedWorker:
    """One simulated worker's habits (all drawn from the campaign's seed)."""

    worker_id: str
    lazy: bool
    threshold: float  # a region is boxed when its share of the hot saliency reaches this
    miss_rate: float  # chance of skipping a region that deserved a box (never the hottest one)
    typo_rate: float
    plural_rate: float
    generic_rate: float  # chance of "shape"/"object" instead of the shape's name
    capital_rate: float
    seconds_median: float
    grey: str  # "grey" or "gray"
    habits: Mapping[str, str]  # usual term per list (e.g. "water" → "sea" for a worker who says sea)


@dataclass(frozen=True)
class Region:
    """A part of the image the ground truth can name, with its box in image pixels and its share of the hot saliency."""

    kind: str  # "object", "watermark" or "background"
    box: tuple[float, float, float, float]
    share: float


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def _pick(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    terms = list(weights)
    probabilities = np.asarray([weights[term] for term in terms], dtype=float)
    return terms[int(rng.choice(len(terms), p=probabilities / probabilities.sum()))]


def simulated_workers(n_assignments: int, workers_per_task: int = 1, seed: int = 0) -> list[SimulatedWorker]:
    """The campaign's simulated workers: ``POOL_SIZE`` (fewer for fewer assignments, more for larger tasks), one of them lazy.

    Assignments go round the pool in order (:func:`simulate_campaign`), so the lazy worker, among the first
    ``n_assignments``, always gets one, and one task's workers are distinct.
    """
    rng = np.random.default_rng(_seed("workers", seed))
    size = max(1, workers_per_task, min(POOL_SIZE, n_assignments))
    lazy = int(rng.integers(size))
    lists = {**{f"shape:{name}": terms for name, terms in SHAPE_TERMS.items()},
             **{f"colour:{name}": terms for name, terms in COLOUR_TERMS.items()},
             **{f"background:{name}": terms for name, terms in BACKGROUND_TERMS.items()},
             "watermark": WATERMARK_TERMS}
    workers = []
    for number in range(size):
        habits = {key: _pick(rng, terms) for key, terms in lists.items()}
        workers.append(SimulatedWorker(
            worker_id=f"{SIMULATED_PREFIX}{number + 1:02d}", lazy=number == lazy, threshold=float(rng.uniform(0.25, 0.35)),
            miss_rate=float(rng.uniform(0.05, 0.25)), typo_rate=float(rng.uniform(0.0, 0.05)), plural_rate=float(rng.uniform(0.0, 0.12)),
            generic_rate=float(rng.uniform(0.0, 0.12)), capital_rate=float(rng.uniform(0.0, 0.2)), seconds_median=float(rng.uniform(8, 20)),
            grey=str(rng.choice(["grey", "gray"])), habits=habits,
        ))
    return workers


def _truth(workspace: Workspace) -> pd.DataFrame:
    missing = [column for column in GROUND_TRUTH_COLUMNS if column not in workspace.images.columns]
    if missing:
        raise SliceScopeError(f"the simulated crowd needs the demo's ground truth, and workspace {workspace.name} has no {', '.join(missing)} column",
                              "simulate campaigns on the built-in demo's workspaces only; real campaigns need real workers")
    return workspace.images.set_index("image_id")


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def image_regions(saliency: np.ndarray, mask: np.ndarray, watermark: bool) -> list[Region]:
    """The object, watermark and background regions of one image, for a saliency map already at the image's size."""
    height, width = mask.shape
    hot = np.where(saliency >= HOT_LEVEL, saliency, 0.0)
    total = float(hot.sum())
    if total <= 0:  # a flat or empty map: every pixel counts by its own value
        hot, total = saliency.astype(float), float(saliency.sum()) or 1.0
    regions = []
    covered = np.zeros_like(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys):
        pad = max(1, round(0.02 * max(width, height)))
        x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
        x1, y1 = min(width, xs.max() + 1 + pad), min(height, ys.max() + 1 + pad)
        covered[y0:y1, x0:x1] = True
        regions.append(Region("object", (float(x0), float(y0), float(x1), float(y1)), float(hot[y0:y1, x0:x1].sum() / total)))
    if watermark:
        sx, sy = width / IMAGE_SIZE, height / IMAGE_SIZE
        x0, y0, x1, y1 = (round(STAMP_BOX[0] * sx), round(STAMP_BOX[1] * sy), round(STAMP_BOX[2] * sx), round(STAMP_BOX[3] * sy))
        stamp = np.zeros_like(covered)
        stamp[y0:y1, x0:x1] = True
        regions.append(Region("watermark", (float(x0), float(y0), float(x1), float(y1)), float(hot[stamp & ~covered].sum() / total)))
        covered |= stamp
    background = ~covered
    if background.any():
        regions.append(Region("background", _hottest_window(np.where(background, hot, 0.0), background), float(hot[background].sum() / total)))
    return regions


def _hottest_window(hot: np.ndarray, allowed: np.ndarray) -> tuple[float, float, float, float]:
    """The square window (3/8 of the shorter side) holding the most hot saliency among ``allowed`` pixels."""
    height, width = hot.shape
    side = max(2, round(0.375 * min(height, width)))
    integral = np.pad(hot, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    area = np.pad(allowed.astype(float), ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def sums(table: np.ndarray) -> np.ndarray:
        return table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]

    mass, room = sums(integral), sums(area)
    mass = np.where(room >= 0.5 * side * side, mass, -1.0)  # a window mostly over the object or the stamp is not "the background"
    y, x = np.unravel_index(int(np.argmax(mass)), mass.shape)
    return float(x), float(y), float(x + side), float(y + side)


def _typo(word: str, rng: np.random.Generator) -> str:
    if word in TYPOS and rng.random() < 0.3:
        return TYPOS[word]
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    operation = rng.integers(3)
    if operation == 0:
        return word[:i] + word[i + 1:]  # a letter dropped
    if operation == 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # two letters swapped
    return word[:i] + word[i] + word[i:]  # a letter doubled


def _written(term: str, worker: SimulatedWorker, rng: np.random.Generator, noun: bool) -> str:
    """The term as this worker types it this time: maybe plural, misspelt, capitalised."""
    if noun and term in COUNTABLE and rng.random() < worker.plural_rate:
        term += "s"
    if rng.random() < worker.typo_rate:
        term = _typo(term, rng)
    if rng.random() < worker.capital_rate:
        term = term.capitalize()
    return term


def _usual(worker: SimulatedWorker, key: str, terms: Mapping[str, float], rng: np.random.Generator) -> str:
    """Mostly the worker's habit, sometimes another term of the list."""
    return worker.habits.get(key, next(iter(terms))) if rng.random() < 0.85 else _pick(rng, terms)


def _terms(region: Region, truth: pd.Series, worker: SimulatedWorker, rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    if region.kind == "object":
        shape = str(truth["true_class"])
        if shape in SHAPE_TERMS and rng.random() >= worker.generic_rate:
            entity = _usual(worker, f"shape:{shape}", SHAPE_TERMS[shape], rng)
        else:
            entity = str(rng.choice(GENERIC_SHAPES))
        colour = str(truth["colour"])
        attributes = [_usual(worker, f"colour:{colour}", COLOUR_TERMS[colour], rng) if colour in COLOUR_TERMS else colour]
        if rng.random() < 0.15:
            attributes.append("small")
    elif region.kind == "watermark":
        entity = _usual(worker, "watermark", WATERMARK_TERMS, rng)
        attributes = [term for term, chance in WATERMARK_ATTRIBUTES if rng.random() < chance]
    else:
        background = str(truth["background"])
        entity = _usual(worker, f"background:{background}", BACKGROUND_TERMS.get(background, {background: 1.0}), rng)
        attributes = [term for term, chance in BACKGROUND_ATTRIBUTES.get(background, ((background, 1.0),)) if rng.random() < chance]
        attributes = [worker.grey if term == "grey" else term for term in attributes]
    return _written(entity, worker, rng, noun=True), tuple(_written(term, worker, rng, noun=False) for term in attributes)


def _jittered(box: tuple[float, float, float, float], width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    spread = 0.03 * max(width, height)
    x0, y0, x1, y1 = (value + rng.uniform(-spread, spread) for value in box)
    x0, x1 = sorted((min(max(x0, 0.0), width - 1.0), min(max(x1, 1.0), float(width))))
    y0, y1 = sorted((min(max(y0, 0.0), height - 1.0), min(max(y1, 1.0), float(height))))
    return round(x0, 1), round(y0, 1), round(max(x1, x0 + 1), 1), round(max(y1, y0 + 1), 1)


def answer_image(image_id: str, regions: Sequence[Region], truth: pd.Series, size: tuple[int, int], worker: SimulatedWorker,
                 rng: np.random.Generator) -> list[Box]:
    """The boxes ``worker`` draws on one image."""
    width, height = size
    hottest = max(regions, key=lambda region: region.share)
    if worker.lazy:
        box = (0.0, 0.0, float(width), float(height)) if rng.random() < 0.5 else _jittered(hottest.box, width, height, rng)
        return [Box(image_id, *box, str(rng.choice(LAZY_TYPES)), (str(rng.choice(LAZY_ATTRIBUTES)),))]
    chosen = [region for region in regions
              if region is hottest or (region.share >= worker.threshold and rng.random() >= worker.miss_rate)]
    boxes = []
    for region in chosen:
        entity, attributes = _terms(region, truth, worker, rng)
        boxes.append(Box(image_id, *_jittered(region.box, width, height, rng), entity, attributes))
    return boxes


def _seconds(worker: SimulatedWorker, n_boxes: int, minimum: float, rng: np.random.Generator) -> float:
    if worker.lazy:
        return round(float(rng.uniform(0.6, 0.5 * minimum)) if minimum > 1.2 else 0.6, 1)
    spent = worker.seconds_median * float(np.exp(rng.normal(0, 0.35))) + 2.0 * n_boxes
    return round(max(spent, minimum + 0.5 + float(rng.uniform(0, 2))), 1)


def _load_mask(workspace: Workspace, relative: str) -> np.ndarray:
    path = workspace.image_path(relative)
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > 127
    except OSError as error:
        raise SliceScopeError(f"cannot read the object mask {path} ({error})", "restore the demo's data folder") from None


def campaign_maps(workspace: Workspace, campaign: Campaign, image_ids: Sequence[str], progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
    """The saliency maps of ``image_ids`` computed as the campaign's settings say."""
    from core.crowd.saliency import SaliencyParams, saliency_maps

    params = SaliencyParams.from_dict({**campaign.settings.saliency_params, "method": campaign.settings.saliency_method})
    return dict(zip(image_ids, saliency_maps(workspace, list(image_ids), params, progress)))


def simulate_campaign(workspace: Workspace, store: CampaignStore, campaign: Campaign, seed: int = 0, progress: ProgressFn | None = None,
                      maps: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Answer every open assignment of ``campaign`` with simulated workers; one row per submitted assignment (``RESULT_COLUMNS``).

    ``campaign`` must carry its tokens (as :func:`core.crowd.pipeline.create_workspace_campaign` returns it).
    ``maps`` (image id → saliency map) spares recomputing them; by default they are computed with the
    campaign's own method and parameters. Assignments already submitted are skipped, so an interrupted
    simulation can be run again with the same tokens.
    """
    report = progress or silent
    if not campaign.tokens:
        raise SliceScopeError(f"campaign {campaign.name!r} carries no tokens, so no simulated worker can open its tasks",
                              "simulate the Campaign that create_workspace_campaign returned")
    truth = _truth(workspace)
    submitted = set(store.progress(campaign.id).query("status == 'submitted'")["assignment_id"])
    workers = simulated_workers(len(campaign.tokens), campaign.settings.workers_per_task, seed)
    order = {token.assignment_id: position for position, token in enumerate(campaign.tokens)}
    pending = [token for token in campaign.tokens if token.assignment_id not in submitted]
    views = {token.assignment_id: store.open_task(token.token) for token in pending}
    image_ids = list(dict.fromkeys(image_id for view in views.values() for image_id in view.image_ids))
    missing = [image_id for image_id in image_ids if image_id not in truth.index]
    if missing:
        raise SliceScopeError(f"campaign image {missing[0]!r} is not in workspace {workspace.name}", "simulate the campaign on the workspace it was made from")
    if maps is None:
        maps = campaign_maps(workspace, campaign, image_ids, progress)
    regions = {}
    for image_id in image_ids:
        row = truth.loc[image_id]
        mask = _load_mask(workspace, row["mask_path"])
        saliency = np.asarray(maps[image_id], dtype=np.float32)
        if saliency.shape != mask.shape:
            saliency = np.asarray(Image.fromarray(saliency).resize(mask.shape[::-1], Image.Resampling.BILINEAR))
        regions[image_id] = (image_regions(saliency, mask, _flag(row["watermark"])), (mask.shape[1], mask.shape[0]))

    minimum = campaign.settings.min_seconds_per_image
    rows = []
    report("simulating the crowd", 0, len(pending))
    for done, token in enumerate(pending, start=1):
        worker = workers[order[token.assignment_id] % len(workers)]
        rng = np.random.default_rng(_seed("answer", seed, token.assignment_id))
        boxes, seconds = [], {}
        for image_id in views[token.assignment_id].image_ids:
            image_regions_, size = regions[image_id]
            drawn = answer_image(image_id, image_regions_, truth.loc[image_id], size, worker, rng)
            boxes.extend(drawn)
            seconds[image_id] = _seconds(worker, len(drawn), minimum, rng)
        code = store.submit(token.token, boxes, seconds, worker_id=worker.worker_id)
        rows.append({"task_id": token.task_id, "assignment_id": token.assignment_id, "worker_id": worker.worker_id, "lazy": worker.lazy,
                     "seconds": round(sum(seconds.values()), 1), "boxes": len(boxes), "completion_code": code})
        report("simulating the crowd", done, len(pending))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


# -- the demo's campaign -------------------------------------------------------------------------------------------
def _save_tokens(path: Path, campaign: Campaign) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"campaign_id": campaign.id, "tokens": [
        {"task_id": t.task_id, "assignment_id": t.assignment_id, "token": t.token, "expires_at": t.expires_at.isoformat()}
        for t in campaign.tokens]}))


def _read_tokens(path: Path, campaign: Campaign) -> Campaign | None:
    from dataclasses import replace
    from datetime import datetime

    try:
        saved = json.loads(path.read_text())
        if saved.get("campaign_id") != campaign.id:
            return None
        tokens = tuple(TaskToken(t["task_id"], t["assignment_id"], t["token"], datetime.fromisoformat(t["expires_at"])) for t in saved["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return replace(campaign, tokens=tokens)


def ensure_demo_campaign(workspace: Workspace, n_images: int = 300, samples: int = 25, state_path: Path | None = None,
                         progress: ProgressFn | None = None, seed: int = 0) -> Campaign | None:
    """Give the demo's workspace one finished simulated campaign, unless its database already holds a campaign.

    Resumable: the tokens are kept in ``state_path`` (simulated tasks, so nothing secret) while the simulation
    runs; an interrupted build finds them there and answers the rest. Returns the campaign it created or
    finished, or None when there was nothing to do.
    """
    from core.crowd.pipeline import CampaignPlan, create_workspace_campaign
    from core.crowd.saliency import SaliencyParams
    from core.store import database_url

    state_path = Path(state_path) if state_path is not None else workspace.path / "simulated-crowd-tokens.json"
    store = CampaignStore(database_url(workspace.path))
    try:
        existing = store.campaigns(workspace.fingerprint)
        if existing:
            resumed = _read_tokens(state_path, existing[-1]) if state_path.is_file() else None
            if resumed is None:
                return None
            campaign = resumed
        else:
            plan = CampaignPlan(n_images=n_images, sampling="stratified", saliency=SaliencyParams(samples=samples), seed=seed)
            campaign = create_workspace_campaign(workspace, store, DEMO_CAMPAIGN_NAME, plan, progress)
            _save_tokens(state_path, campaign)
        simulate_campaign(workspace, store, campaign, seed=seed, progress=progress)
        state_path.unlink(missing_ok=True)
        return campaign
    finally:
        store.close()
