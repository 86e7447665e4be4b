"""Pooled clusters of both models' segments and how differently the two models attribute each (IMACS §4–5.2).

Segments of both models' samples are clustered together by their third-model
embeddings (K-Means, K given), so a cluster is one visual pattern whatever
model's sample it came from. Per cluster, the mean attribution per model and
their difference (disparity = mean_A − mean_B) say whether the two models weigh
that pattern differently; clusters are ordered by |disparity|, largest first,
as the paper's Concept Cluster Visualization orders them.

The mean is taken per image by default: over the images showing the pattern,
the sum of that image's segments' attributions in the cluster (Shapley values
add up, so this is what the pattern as a whole adds to the image's score). A
mean per segment, the paper's literal reading, divides a pattern's weight by
the number of grid cells it spans. On the full demo (``benchmarks/compare.py``)
the biased model's water background adds 4.9 logits of circle per water image
(the balanced model's 0.7), about what the balanced model's object adds (4.2),
but over some 15 cells against one or two: per segment that is 0.35 against
0.05 and the water cluster ranked 6th of 8, behind clusters of a few object
segments each; per image it ranks 1st. ``per="segment"`` keeps the paper's reading.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import SliceScopeError

SEGMENT_COLUMNS = ("segment", "image_id", "x0", "y0", "x1", "y1", "model", "attribution", "cluster")
CLUSTER_MEANS = ("image", "segment")


def cluster_segments(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster ids (0..k−1) of pooled segment embeddings, by K-Means."""
    from sklearn.cluster import KMeans

    if not isinstance(k, int) or k < 1:
        raise SliceScopeError(f"`k` = {k} clusters", "set `k` to 1 or more (e.g. 8)")
    if k > len(embeddings):
        raise SliceScopeError(f"`k` = {k} clusters for only {len(embeddings)} segments", f"set `k` to {max(1, len(embeddings))} or less, or sample more images")
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(np.asarray(embeddings, dtype=np.float64)).astype(np.int64)


def cluster_summary(segments: pd.DataFrame, k: int | None = None, per: str = "image") -> pd.DataFrame:
    """Per cluster: size_A, size_B (segments), mean_A, mean_B, disparity (mean_A − mean_B), abs_disparity, images_A, images_B
    (images with a segment there); largest |disparity| first.

    ``per``: what the means average: ``image`` (per image with a segment in the
    cluster, the sum of its segments' attributions there) or ``segment``. A
    model with no segment in a cluster has mean 0 there (its sample holds
    nothing of that pattern, so it attributes nothing to it) and size 0 says why.
    """
    if per not in CLUSTER_MEANS:
        raise SliceScopeError(f"unknown cluster mean per '{per}'", f"use one of: {', '.join(CLUSTER_MEANS)}")
    if k is None:
        k = int(segments["cluster"].max()) + 1 if len(segments) else 0
    clusters = range(k)

    def by_model(values: pd.Series, fill: float) -> pd.DataFrame:
        return values.unstack("model").reindex(index=clusters, columns=["A", "B"]).fillna(fill)

    per_image = segments.groupby(["cluster", "model", "image_id"])["attribution"].sum()
    sizes = by_model(segments.groupby(["cluster", "model"]).size(), 0).astype(int)
    images = by_model(per_image.groupby(["cluster", "model"]).size(), 0).astype(int)
    averaged = per_image if per == "image" else segments.set_index(["cluster", "model"])["attribution"]
    means = by_model(averaged.groupby(["cluster", "model"]).mean(), 0.0)
    summary = pd.DataFrame({
        "cluster": list(clusters),
        "size_A": sizes["A"].to_numpy(), "size_B": sizes["B"].to_numpy(),
        "mean_A": means["A"].to_numpy(), "mean_B": means["B"].to_numpy(),
    })
    summary["disparity"] = summary["mean_A"] - summary["mean_B"]
    summary["abs_disparity"] = summary["disparity"].abs()
    summary["images_A"], summary["images_B"] = images["A"].to_numpy(), images["B"].to_numpy()
    return summary.sort_values(["abs_disparity", "cluster"], ascending=[False, True], kind="stable").reset_index(drop=True)
