"""Crowd campaigns made from a workspace (SECA's C1–C2), and their annotations mined into concepts (C3–C5).

The campaign store (:mod:`core.crowd.campaigns`) knows tasks, tokens and boxes but no
model; this module connects it to a workspace:

* :func:`sample_images` picks the images to annotate (the paper annotates a random
  sample of about 300, §4 C1 and §6.2);
* :func:`create_workspace_campaign` computes their saliency maps of the predicted
  class (:mod:`core.crowd.saliency`), renders what workers see (the picture and its
  overlay, PNG at a display size) and stores the campaign with its pictures, so the
  worker app needs only the database and a token;
* :func:`task_links` turns the tokens, returned once, into links to hand out;
* :func:`campaign_tables` and :func:`mine_campaign` read the accepted annotations
  back, with each image's prediction and label from the workspace, and run
  :mod:`core.concepts` on them: the one pipeline the CLI and the Concepts page share;
* :func:`save_vocabulary` / :func:`saved_vocabulary` keep the analyst's edited
  vocabulary of a campaign with the workspace (``WS/concepts/``).

A campaign is scoped by the workspace's extraction fingerprint: its predictions
are this model's, so another version's workspace has campaigns of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from core.concepts import ANNOTATION_COLUMNS, ConceptTable, Embedder, Vocabulary, build_concept_table, mine_concepts, reconcile
from core.concepts.reconcile import dropped_terms
from core.crowd.campaigns import (
    INSTRUCTIONS_MAX_CHARS,
    MAX_IMAGES,
    MAX_IMAGES_PER_TASK,
    MAX_WORKERS_PER_TASK,
    Campaign,
    CampaignImage,
    CampaignSettings,
    CampaignStore,
    checked_number,
    checked_whole,
)
from core.crowd.saliency import SaliencyParams, load_image, overlay_png, picture_png, saliency_maps
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace, atomic_write

SAMPLINGS = ("random", "stratified")
LINK_COLUMNS = ("task_id", "assignment_id", "link", "expires_at")
IMAGE_TABLE_COLUMNS = ("image_id", "prediction", "label")

DEFAULT_INSTRUCTIONS = """\
**What to do.** Each picture has a heat map laid over it: the **red and yellow areas** are where a computer model \
looked to recognise the image. For every red or yellow area:

1. **Draw a box** around the thing the area highlights (an object, a part of it, the background, a mark…).
2. Give **one entity type**: a noun naming what is in the box, e.g. *stamp*, *water*, *circle*.
3. Give **at least one attribute**: an adjective describing it, e.g. *yellow*, *wavy*, *small*.

Draw at least one box on every image. Use precise, everyday words, one per term where you can. \
Take your time: answers given in a few seconds per image are rejected.

**Good example.** The red area covers a small white mark in a corner → a box around that mark; \
entity type *stamp*; attributes *white*, *rectangular*.

**Bad example.** One box around the whole picture; entity type *picture*; attribute *nice*: \
it does not say what the red area shows."""


@dataclass(frozen=True)
class CampaignPlan:
    """What a campaign asks of the crowd (defaults: the paper's §6.1.2 set-up, 300 images, tasks of 10, 3 workers each).

    ``n_images`` larger than the workspace is clamped to the workspace's size (a
    300-image plan on a 64-image workspace annotates all 64). ``display_size`` is the
    longer side, in pixels, of the pictures workers see.
    """

    n_images: int = 300
    sampling: str = "random"
    saliency: SaliencyParams = field(default_factory=SaliencyParams)
    images_per_task: int = 10
    workers_per_task: int = 3
    min_seconds_per_image: float = 5.0
    hours_valid: float = 72.0
    instructions: str = DEFAULT_INSTRUCTIONS
    seed: int = 0
    display_size: int = 320

    def __post_init__(self):
        checked_whole(self.n_images, "the number of images", 1, MAX_IMAGES)
        if self.sampling not in SAMPLINGS:
            raise SliceScopeError(f"unknown sampling {str(self.sampling)[:40]!r}", f"use one of: {', '.join(SAMPLINGS)}")
        if not isinstance(self.saliency, SaliencyParams):
            raise SliceScopeError(f"the saliency settings must be SaliencyParams, not {type(self.saliency).__name__}", "build them with SaliencyParams(...)")
        checked_whole(self.images_per_task, "images per task", 1, MAX_IMAGES_PER_TASK)
        checked_whole(self.workers_per_task, "workers per task", 1, MAX_WORKERS_PER_TASK)
        checked_number(self.min_seconds_per_image, "the minimum seconds per image", 0, 3600)
        checked_number(self.hours_valid, "the hours a task link stays valid", 0.01, 24 * 365)
        if not isinstance(self.instructions, str) or len(self.instructions) > INSTRUCTIONS_MAX_CHARS:
            raise SliceScopeError(f"the instructions must be text of at most {INSTRUCTIONS_MAX_CHARS} characters", "shorten them")
        checked_whole(self.seed, "the sampling seed", 0, 2**32 - 1)
        checked_whole(self.display_size, "the display size", 16, 2048)

    def settings(self) -> CampaignSettings:
        """The store's record of this plan."""
        return CampaignSettings(
            images_per_task=self.images_per_task, workers_per_task=self.workers_per_task,
            min_seconds_per_image=float(self.min_seconds_per_image), hours_valid=float(self.hours_valid),
            instructions=self.instructions, sampling=self.sampling, saliency_method=self.saliency.method,
            saliency_params=self.saliency.as_dict(),
        )


def sample_images(images: pd.DataFrame, n: int, sampling: str = "random", seed: int = 0) -> list[str]:
    """``n`` image ids of ``images`` (columns ``image_id`` and, for ``stratified``, ``prediction``), in task order.

    ``random``: a uniform sample. ``stratified``: each predicted class gets its share
    of ``n`` (largest remainders), at least one image each when ``n`` allows. An ``n``
    above the number of images is clamped to it. The result depends only on the set
    of images, ``n``, ``sampling`` and ``seed`` (not on the table's row order), and
    comes shuffled so that every task mixes classes.
    """
    if sampling not in SAMPLINGS:
        raise SliceScopeError(f"unknown sampling {str(sampling)[:40]!r}", f"use one of: {', '.join(SAMPLINGS)}")
    checked_whole(n, "the number of images", 1, MAX_IMAGES)
    if "image_id" not in images.columns or (sampling == "stratified" and "prediction" not in images.columns):
        raise SliceScopeError("the images table needs image_id (and prediction, to stratify) columns", "pass the workspace's images table")
    table = images.drop_duplicates("image_id").sort_values("image_id", kind="stable").reset_index(drop=True)
    if table.empty:
        raise SliceScopeError("there are no images to sample from", "scan a dataset into the workspace first")
    n = min(n, len(table))
    rng = np.random.default_rng(seed)
    if sampling == "random":
        return table["image_id"].iloc[rng.choice(len(table), size=n, replace=False)].tolist()
    predictions = table["prediction"].astype(str)
    sizes = predictions.value_counts().sort_index()
    quotas = _stratified_quotas(sizes.to_numpy(), n)
    chosen = []
    for name, quota in zip(sizes.index, quotas):
        members = np.flatnonzero((predictions == name).to_numpy())
        chosen.extend(members[rng.permutation(len(members))[:quota]].tolist())
    chosen = np.asarray(chosen)[rng.permutation(len(chosen))]
    return table["image_id"].iloc[chosen].tolist()


def _stratified_quotas(sizes: np.ndarray, n: int) -> np.ndarray:
    """Per class, its share of ``n`` by largest remainders, at least 1 each when ``n`` ≥ the number of classes."""
    exact = sizes * n / sizes.sum()
    quotas = np.floor(exact).astype(int)
    order = np.lexsort((np.arange(len(sizes)), -(exact - quotas)))  # largest remainder first, ties to the first class
    quotas[order[: n - quotas.sum()]] += 1
    if n >= len(sizes):
        for empty in np.flatnonzero(quotas == 0):
            # From the class most over its exact share that keeps at least one image.
            donor = int(np.argmax(np.where(quotas > 1, quotas - exact, -np.inf)))
            quotas[donor] -= 1
            quotas[empty] = 1
    return np.minimum(quotas, sizes)


def render_pictures(workspace: Workspace, image_ids: Sequence[str], maps: np.ndarray, display_size: int = 320,
                    progress: ProgressFn | None = None) -> dict[str, CampaignImage]:
    """What workers see for each image: the picture and its overlay at ``display_size``, with the original size."""
    report = progress or silent
    rows = pd.Series(np.arange(len(workspace.images)), index=workspace.images["image_id"])
    pictures = {}
    for done, (image_id, saliency) in enumerate(zip(image_ids, maps, strict=True), start=1):
        rgb = np.asarray(load_image(workspace, int(rows[image_id])), dtype=np.uint8)
        height, width = rgb.shape[:2]
        pictures[image_id] = CampaignImage(width, height, picture_png(rgb, display_size), overlay_png(rgb, saliency, display_size))
        report("rendering pictures", done, len(image_ids))
    return pictures


def create_workspace_campaign(workspace: Workspace, store: CampaignStore, name: str, plan: CampaignPlan = CampaignPlan(),
                              progress: ProgressFn | None = None, image_ids: Sequence[str] | None = None) -> Campaign:
    """Sample, compute saliency, render the pictures and store the campaign; the returned Campaign holds the tokens (shown once).

    ``image_ids`` annotates exactly these images, in this task order, instead of sampling (the plan's
    ``n_images``, ``sampling`` and ``seed`` are then unused, and the campaign records its sampling as "given").
    """
    if not isinstance(plan, CampaignPlan):
        raise SliceScopeError(f"the campaign plan must be a CampaignPlan, not {type(plan).__name__}", "build it with CampaignPlan(...)")
    settings = plan.settings()
    if image_ids is None:
        image_ids = sample_images(workspace.images, plan.n_images, plan.sampling, plan.seed)
    else:
        image_ids = list(image_ids)
        settings = replace(settings, sampling="given")
    maps = saliency_maps(workspace, image_ids, plan.saliency, progress)
    pictures = render_pictures(workspace, image_ids, maps, plan.display_size, progress)
    return store.create_campaign(workspace.fingerprint, name, image_ids, settings, pictures=pictures)


def task_links(campaign: Campaign, base_url: str) -> pd.DataFrame:
    """One row per assignment: ``task_id, assignment_id, link, expires_at``; the link is ``{base_url}/?token=…``."""
    if not campaign.tokens:
        raise SliceScopeError(f"campaign {campaign.name!r} carries no tokens: they are returned once, when it is created",
                              "use the links written then, or create a new campaign")
    if not isinstance(base_url, str) or not base_url.strip().lower().startswith(("http://", "https://")):
        raise SliceScopeError(f"{str(base_url)[:80]!r} is not the address of the worker app", "give it as http(s)://host:port, e.g. http://localhost:8502")
    base = base_url.strip().rstrip("/")
    return pd.DataFrame([
        {"task_id": token.task_id, "assignment_id": token.assignment_id, "link": f"{base}/?token={quote(token.token, safe='')}",
         "expires_at": token.expires_at}
        for token in campaign.tokens
    ], columns=list(LINK_COLUMNS))


def latest_campaign(workspace: Workspace, store: CampaignStore) -> Campaign | None:
    """The workspace's most recently created campaign, or None."""
    found = store.campaigns(workspace.fingerprint)
    return found[-1] if found else None


def _campaign_of(workspace: Workspace, store: CampaignStore, campaign_id: int) -> Campaign:
    campaign = store.campaign(campaign_id)
    if campaign.scope != workspace.fingerprint:
        raise SliceScopeError(f"campaign {campaign_id} ({campaign.name}) was made on another workspace or model version than {workspace.name}",
                              "open the workspace the campaign was created on, or pick one of this workspace's campaigns")
    return campaign


def campaign_tables(workspace: Workspace, store: CampaignStore, campaign_id: int, include_rejected: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(annotations in ``ANNOTATION_COLUMNS``, images ``image_id, prediction, label`` of the campaign's images), ready for core.concepts."""
    _campaign_of(workspace, store, campaign_id)
    annotations = store.annotations_frame(campaign_id, include_rejected)
    image_ids = store.image_ids(campaign_id)
    table = workspace.images.set_index("image_id")
    missing = [image_id for image_id in image_ids if image_id not in table.index]
    if missing:
        raise SliceScopeError(f"campaign {campaign_id}'s image {missing[0]!r} is not in workspace {workspace.name}",
                              "open the workspace the campaign was created on")
    images = table.loc[image_ids, ["prediction", "label"]].astype(str).reset_index()
    return annotations[list(ANNOTATION_COLUMNS)], images[list(IMAGE_TABLE_COLUMNS)]


@dataclass(frozen=True)
class CampaignConcepts:
    """A campaign's annotations mined: the vocabulary (with the terms it dropped, and why), the images × concepts table
    and every finding (unfiltered: :func:`core.concepts.filter_results` applies the paper's p < 0.05 and Cramér's V ≥ 0.2)."""

    campaign: Campaign
    vocabulary: Vocabulary
    table: ConceptTable
    findings: pd.DataFrame
    annotations: pd.DataFrame
    images: pd.DataFrame


def mine_campaign(workspace: Workspace, store: CampaignStore, campaign_id: int, embedder: Embedder | None = None,
                  vocabulary: Vocabulary | None = None, progress: ProgressFn | None = None,
                  include_rejected: bool = False) -> CampaignConcepts:
    """Reconcile (unless ``vocabulary`` is given), tabulate and mine the campaign's accepted annotations."""
    campaign = _campaign_of(workspace, store, campaign_id)
    annotations, images = campaign_tables(workspace, store, campaign_id, include_rejected)
    if annotations.empty:
        raise SliceScopeError(f"campaign {campaign_id} ({campaign.name}) has no accepted annotations yet",
                              "wait for workers to submit their tasks (python -m core campaign … --simulate fills a demo campaign)")
    if vocabulary is None:
        vocabulary = reconcile(annotations, embedder, progress=progress)
    else:
        # A saved vocabulary keeps only its terms; the annotations' wordless terms are still dropped and still shown.
        vocabulary = replace(vocabulary, dropped=dropped_terms(annotations))
    table = build_concept_table(annotations, images, vocabulary)
    findings = mine_concepts(table)
    return CampaignConcepts(campaign, vocabulary, table, findings, annotations, images)


def vocabulary_path(workspace: Workspace, campaign_id: int) -> Path:
    """Where the analyst's edits of a campaign's vocabulary are kept: with the workspace, so they survive a restart."""
    return workspace.path / "concepts" / f"campaign-{int(campaign_id)}-vocabulary.csv"


def saved_vocabulary(workspace: Workspace, campaign_id: int) -> Vocabulary | None:
    """The campaign's edited vocabulary, or None when the analyst has not edited it (it is then reconciled afresh)."""
    path = vocabulary_path(workspace, campaign_id)
    return Vocabulary.read_csv(path) if path.is_file() else None


def save_vocabulary(workspace: Workspace, campaign_id: int, vocabulary: Vocabulary | None) -> None:
    """Keep ``vocabulary`` as the campaign's; None discards the edits."""
    path = vocabulary_path(workspace, campaign_id)
    if vocabulary is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: vocabulary.terms.to_csv(temporary, index=False))


def worker_summary(progress: pd.DataFrame) -> pd.DataFrame:
    """Per worker, from a campaign's progress (``CampaignStore.progress``): answers, boxes, seconds, rejected answers, seconds per box.

    A worker without a platform id is told apart by their assignment ("assignment 12"), so anonymous answers are not pooled.
    """
    submitted = progress[progress["status"] == "submitted"]
    worker = submitted["worker_id"].where(submitted["worker_id"] != "", "assignment " + submitted["assignment_id"].astype(str))
    summary = submitted.assign(worker=worker).groupby("worker").agg(
        answers=("assignment_id", "size"), boxes=("boxes", "sum"), seconds=("seconds", "sum"), rejected=("rejection", lambda values: int((values != "").sum()))
    )
    summary["seconds per box"] = summary["seconds"] / summary["boxes"].clip(lower=1)
    return summary
