"""IMACS end to end (Schoop et al., 2022): compare two model versions by what they attribute, in aggregate.

sample (balanced confusion matrix per model, or disagreements) → segments
(grid, or SLIC superpixels) → segment Shapley values, each model on its own sample → tiles embedded
by a third model → pooled K-Means → per-cluster attribution per model and its
disparity. :func:`compare_versions` runs it and returns the tables;
:func:`estimate_seconds` says how long it will take before it starts.
Attributions, the embedding model and the embeddings are cached in the
workspaces, so running it again with the same inputs recomputes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from core.compare.attribution import (
    CACHE_KIND,
    SegmentAttributions,
    ShapleyParams,
    cache_params,
    class_score,
    gradcam_players,
    image_rows,
    shapley_values,
    workspace_attributions,
)
from core.compare.clusters import CLUSTER_MEANS, SEGMENT_COLUMNS, cluster_segments, cluster_summary
from core.compare.embedding import (
    Embedder,
    EmbeddingParams,
    TileCNN,
    embedding_model,
    estimate_training_seconds,
    segment_embeddings,
    segment_tiles,
)
from core.compare.sampling import MODELS, STRATEGIES, Sample, as_workspace, class_index, draw_sample
from core.compare.segments import SegmentParams, player_boxes, segment_id_count, segment_images
from core.errors import SliceScopeError
from core.progress import ProgressFn, silent
from core.workspace import Workspace


@dataclass(frozen=True)
class CompareParams:
    """Everything a comparison depends on; the defaults are the paper's where it gives one (100 images per model, 4 × 4 grid).

    ``cluster_mean``: whether a cluster's mean attributions are per image
    showing the pattern (its segments there summed; the default) or per segment
    (:mod:`core.compare.clusters` says why).
    """

    per_model: int = 100
    sampling: str = "balanced"
    k: int = 8
    seed: int = 0
    cluster_mean: str = "image"
    segments: SegmentParams = field(default_factory=SegmentParams)
    shapley: ShapleyParams = field(default_factory=ShapleyParams)
    embedding: EmbeddingParams = field(default_factory=EmbeddingParams)

    def __post_init__(self) -> None:
        if self.sampling not in STRATEGIES:
            raise SliceScopeError(f"unknown sampling '{self.sampling}'", f"set `sampling` to one of: {', '.join(STRATEGIES)}")
        if self.cluster_mean not in CLUSTER_MEANS:
            raise SliceScopeError(f"unknown cluster mean '{self.cluster_mean}'", f"set `cluster_mean` to one of: {', '.join(CLUSTER_MEANS)}")


@dataclass(frozen=True)
class Comparison:
    """The result: ``segments`` (one row per segment: segment, image_id, box, model, attribution, cluster, cell, score),
    ``clusters`` (:func:`~core.compare.clusters.cluster_summary`), the ``sample`` they came from and the segments' embeddings."""

    class_name: str
    workspace_a: str
    workspace_b: str
    sample: Sample
    segments: pd.DataFrame
    clusters: pd.DataFrame
    embeddings: np.ndarray
    params: CompareParams


def _segment_frame(model: str, attributions: SegmentAttributions, sample: Sample) -> pd.DataFrame:
    """One row per segment of the model's sample, image by image; padding players (no segment of their image) left out."""
    n_players = attributions.players.shape[1]
    present = attributions.present.ravel()
    cells = sample.images.loc[sample.images["model"] == model, "cell"].to_numpy()
    boxes = attributions.boxes.reshape(-1, 4)[present]
    return pd.DataFrame({
        "segment": attributions.players.ravel()[present],
        "image_id": np.repeat(np.asarray(attributions.image_ids, dtype=object), n_players)[present],
        "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
        "model": model,
        "attribution": attributions.values.ravel()[present].astype(np.float64),
        "cell": np.repeat(cells, n_players)[present],
        "score": np.repeat(attributions.scores, n_players)[present].astype(np.float64),
    })


def compare_versions(workspace_a: Workspace | str, workspace_b: Workspace | str, class_name: str, params: CompareParams | None = None,
                     progress: ProgressFn | None = None) -> Comparison:
    """Compare model A (``workspace_a``) with model B (``workspace_b``) on ``class_name``, IMACS-style.

    Both workspaces must be scans of the same images with the same classes. The
    third model is trained on (or loaded for) A's training data.

    >>> result = compare_versions("demo/workspace", "demo/workspace-balanced", "circle")  # doctest: +SKIP
    >>> result.clusters.head()  # doctest: +SKIP
    """
    report, params = progress or silent, params or CompareParams()
    workspace_a, workspace_b = as_workspace(workspace_a), as_workspace(workspace_b)
    report("sampling images", 0, 1)
    sample = draw_sample(workspace_a, workspace_b, class_name, params.sampling, params.per_model, params.seed)
    report("sampling images", 1, 1)
    embedder = embedding_model(workspace_a, params.embedding, report)
    frames, embeddings = [], []
    for model, workspace, other in zip(MODELS, (workspace_a, workspace_b), (workspace_b, workspace_a)):
        attributions = workspace_attributions(workspace, other, sample.image_ids(model), class_name, sample.key(model), params.segments,
                                              params.shapley, report, f"Shapley values, model {model}")
        frames.append(_segment_frame(model, attributions, sample))
        embeddings.append(segment_embeddings(workspace, attributions, embedder, report, f"embedding segments, model {model}"))
    segments = pd.concat(frames, ignore_index=True)
    pooled = np.concatenate(embeddings)
    report("clustering segments", 0, 1)
    segments["cluster"] = cluster_segments(pooled, params.k, params.seed)
    report("clustering segments", 1, 1)
    segments = segments[[*SEGMENT_COLUMNS, "cell", "score"]]
    return Comparison(class_name, workspace_a.name, workspace_b.name, sample, segments, cluster_summary(segments, params.k, params.cluster_mean), pooled, params)


def estimate_seconds(workspace_a: Workspace | str, workspace_b: Workspace | str, class_name: str, params: CompareParams | None = None) -> float:
    """About how many seconds :func:`compare_versions` will take here (0 for what is cached), from small timed batches.

    Per model: one permutation of Shapley values on one call's images (read from
    disk, as the real run reads them, and segmented) and their tiles' embedding, scaled to the
    sample and ``n_samples``; plus the embedding model's training when it is not cached.
    """
    params = params or CompareParams()
    workspace_a, workspace_b = as_workspace(workspace_a), as_workspace(workspace_b)
    sample = draw_sample(workspace_a, workspace_b, class_name, params.sampling, params.per_model, params.seed)
    total = estimate_training_seconds(workspace_a, params.embedding)
    for model, workspace, other in zip(MODELS, (workspace_a, workspace_b), (workspace_b, workspace_a)):
        image_ids = sample.image_ids(model)
        key = cache_params(other, class_name, sample.key(model), params.segments, params.shapley)
        if image_ids and not workspace.has_cached(CACHE_KIND, key):
            total += _timed_images(workspace, image_ids, class_name, params) * len(image_ids)
    return total


def _timed_images(workspace: Workspace, image_ids: list[str], class_name: str, params: CompareParams) -> float:
    """Seconds per image of reading, segmenting, Shapley values (all ``n_samples`` permutations) and tile embedding, from one timed call."""
    from core.extract import load_workspace_model
    from core.mitigation.robustness import load_pixels

    size = int(workspace.manifest["transforms"]["image_size"])
    normalize = workspace.manifest["transforms"]["normalize"]
    rows = image_rows(workspace, image_ids[:params.shapley.images_per_call])
    model = load_workspace_model(workspace)
    started = time.perf_counter()
    pixels = load_pixels(workspace, rows, size)
    reading = time.perf_counter() - started
    started = time.perf_counter()
    masks = segment_images(len(rows), size, params.segments, pixels)
    segmenting = time.perf_counter() - started
    players = gradcam_players(np.asarray(workspace.array("gradcam"))[rows], masks, segment_id_count(masks, params.segments), params.shapley.top_n)
    score = class_score(model.module.eval(), class_index(workspace, class_name), normalize, params.shapley.output, model.device)
    segments, one_permutation = torch.from_numpy(masks), replace(params.shapley, n_samples=1)

    def timed_call() -> float:
        started = time.perf_counter()
        shapley_values(score, pixels, segments, torch.from_numpy(players), one_permutation)
        return time.perf_counter() - started

    # The faster of two: the first call also pays for torch's one-time set-up at these batch sizes.
    timed = min(timed_call(), timed_call())
    # Model evaluations per image: the baseline, the image and the empty coalition, then one per player (padding too) per permutation.
    n_players = players.shape[1]
    shapley = timed * (3 + n_players * params.shapley.n_samples) / (3 + n_players)
    # An untrained network of the same shape embeds as fast as the trained one, which may not exist yet.
    embedder = embedding_model(workspace, params.embedding) if params.embedding.arch else Embedder(
        TileCNN(len(workspace.classes)), params.embedding.image_size or size, "none", {})
    tiles = segment_tiles(pixels, player_boxes(masks, players), embedder.image_size)
    embedder.embed(tiles[:1])
    started = time.perf_counter()
    embedder.embed(tiles)
    embedding = time.perf_counter() - started
    return (reading + segmenting + shapley + embedding) / len(rows)
