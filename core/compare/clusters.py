"""Pooled clusters of both models' segments and how differently the two models attribute each (IMACS §4–5.2).

Segments of both models' samples are clustered together by their third-model
embeddings (K-Means, K given), so a cluster is one visual pattern whatever
model's sample it came from. Per cluster, the mean attribution per model and
their difference (disparity = mean_A − mean_B) say whether the two models weigh
that pattern differently; clusters are ordered by |disparity|, largest first,
as the paper's Concept Cluster Visualization orders them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import SliceScopeError

SEGMENT_COLUMNS = ("segment", "image_id", "x0", "y0", "x1", "y1", "model", "attribution", "cluster")


def cluster_segments(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster ids (0..k−1) of pooled segment embeddings, by K-Means."""
    from sklearn.cluster import KMeans

    if not isinstance(k, int) or k < 1:
        raise SliceScopeError(f"`k` = {k} clusters", "set `k` to 1 or more (e.g. 8)")
    if k > len(embeddings):
        raise SliceScopeError(f"`k` = {k} clusters for only {len(embeddings)} segments", f"set `k` to {max(1, len(embeddings))} or less, or sample more images")
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(np.asarray(embeddings, dtype=np.float64)).astype(np.int64)


def cluster_summary(segments: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Per cluster: size_A, size_B, mean_A, mean_B, disparity (mean_A − mean_B), abs_disparity; largest |disparity| first.

    A model with no segment in a cluster has mean 0 there (its sample holds
    nothing of that pattern, so it attributes nothing to it) and size 0 says why.
    """
    if k is None:
        k = int(segments["cluster"].max()) + 1 if len(segments) else 0
    clusters = range(k)
    grouped = segments.groupby(["cluster", "model"])["attribution"]
    sizes = grouped.size().unstack("model").reindex(index=clusters, columns=["A", "B"]).fillna(0).astype(int)
    means = grouped.mean().unstack("model").reindex(index=clusters, columns=["A", "B"]).fillna(0.0)
    summary = pd.DataFrame({
        "cluster": list(clusters),
        "size_A": sizes["A"].to_numpy(), "size_B": sizes["B"].to_numpy(),
        "mean_A": means["A"].to_numpy(), "mean_B": means["B"].to_numpy(),
    })
    summary["disparity"] = summary["mean_A"] - summary["mean_B"]
    summary["abs_disparity"] = summary["disparity"].abs()
    return summary.sort_values(["abs_disparity", "cluster"], ascending=[False, True], kind="stable").reset_index(drop=True)
