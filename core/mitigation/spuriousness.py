"""Spuriousness propagation: from a few annotated slices to a probability for every slice.

The analyst marks some slices "core" (spuriousness 0) or "spurious" (1); Label
Spreading (Zhou et al., as in scikit-learn) spreads those labels over a graph of
slices whose nodes are the slices' mean attribution-weighted features (F_W), so
slices that attend to the same things get similar scores. Annotated slices
keep their annotated value.

Label Spreading needs both classes: with only one kind annotated every
connected slice would get probability 1 of that kind. In that case the score is
the kernel's similarity to the nearest annotated slice (one step of the same
spreading, before normalisation), which keeps the paper's promise that a single
annotation is enough to rank the other slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import SliceScopeError

KERNELS = ("rbf", "knn")
CORE, SPURIOUS = 0.0, 1.0
KIND_VALUES = {"core": CORE, "spurious": SPURIOUS}


@dataclass(frozen=True)
class PropagationParams:
    """Label Spreading settings. ``gamma=None`` picks the median heuristic (1 / median squared distance)."""

    kernel: str = "rbf"
    gamma: float | None = None
    n_neighbors: int = 5
    alpha: float = 0.2
    max_iter: int = 1000

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise SliceScopeError(f"unknown propagation kernel '{self.kernel}'", f"use one of: {', '.join(KERNELS)}")
        if not 0.0 < self.alpha < 1.0:
            raise SliceScopeError(f"alpha = {self.alpha} is outside (0, 1)", "use a clamping factor such as 0.2")
        if self.gamma is not None and self.gamma <= 0:
            raise SliceScopeError(f"gamma = {self.gamma} must be positive", "leave it empty for the median heuristic")
        if self.n_neighbors < 1:
            raise SliceScopeError(f"n_neighbors = {self.n_neighbors} must be at least 1", "use 5 or so")


def slice_embeddings(attribution_features: np.ndarray, slice_ids: np.ndarray) -> np.ndarray:
    """Mean F_W per slice (rows ordered by slice id), standardised per dimension.

    Standardising keeps one high-variance channel from deciding every distance.
    """
    features = np.asarray(attribution_features, dtype=np.float64)
    n_slices = int(np.max(slice_ids)) + 1
    counts = np.bincount(slice_ids, minlength=n_slices).astype(np.float64)
    sums = np.zeros((n_slices, features.shape[1]))
    np.add.at(sums, slice_ids, features)
    means = sums / np.maximum(counts, 1.0)[:, None]
    spread = means.std(axis=0)
    return (means - means.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _gamma(embeddings: np.ndarray, params: PropagationParams) -> float:
    if params.gamma is not None:
        return params.gamma
    squared = ((embeddings[:, None, :] - embeddings[None, :, :]) ** 2).sum(axis=2)
    positive = squared[squared > 0]
    return 1.0 / float(np.median(positive)) if positive.size else 1.0


def annotated_values(kinds: dict[int, str]) -> dict[int, float]:
    """Slice id → 0 (core) or 1 (spurious); other annotation kinds carry no spuriousness."""
    return {slice_id: KIND_VALUES[kind] for slice_id, kind in kinds.items() if kind in KIND_VALUES}


def propagate(embeddings: np.ndarray, annotated: dict[int, float], params: PropagationParams = PropagationParams()) -> np.ndarray:
    """Spuriousness in [0, 1] for every slice, or all NaN when nothing is annotated."""
    n_slices = len(embeddings)
    scores = np.full(n_slices, np.nan)
    annotated = {s: v for s, v in annotated.items() if 0 <= s < n_slices}
    if not annotated:
        return scores
    gamma = _gamma(embeddings, params)
    if len(set(annotated.values())) == 2:
        from sklearn.semi_supervised import LabelSpreading

        labels = np.full(n_slices, -1)
        for slice_id, value in annotated.items():
            labels[slice_id] = int(value)
        model = LabelSpreading(
            kernel=params.kernel, gamma=gamma, n_neighbors=min(params.n_neighbors, n_slices - 1),
            alpha=params.alpha, max_iter=params.max_iter,
        ).fit(embeddings, labels)
        distributions = model.label_distributions_
        # A slice the graph does not reach gets 0/0 from scikit-learn: it stays unknown (NaN).
        scores = distributions[:, list(model.classes_).index(1)]
    else:
        value = next(iter(annotated.values()))
        anchors = embeddings[list(annotated)]
        squared = ((embeddings[:, None, :] - anchors[None, :, :]) ** 2).sum(axis=2)
        if params.kernel == "rbf":
            similarity = np.exp(-gamma * squared).max(axis=1)
        else:
            # Within the anchors' n nearest slices: 1, farther: 0 (the knn graph's own weights).
            rank = np.argsort(np.argsort(squared, axis=0), axis=0)
            similarity = (rank <= params.n_neighbors).any(axis=1).astype(np.float64)
        scores = similarity if value == SPURIOUS else 1.0 - similarity
    for slice_id, value in annotated.items():
        scores[slice_id] = value
    return np.clip(scores, 0.0, 1.0)


def slice_spuriousness(attribution_features: np.ndarray, slice_ids: np.ndarray, kinds: dict[int, str], params: PropagationParams = PropagationParams()) -> np.ndarray:
    """Spuriousness per slice from the analyst's annotation kinds (slice id → kind)."""
    return propagate(slice_embeddings(attribution_features, slice_ids), annotated_values(kinds), params)
