"""InfEmbed slices (Wang, Adebayo et al., NeurIPS 2023, §3.3–3.4, §4.1): clustering influence embeddings.

* :func:`normalised_kmeans` is the paper's K-Means, whose centroids are scaled
  to unit length after every update.
* :func:`infembed_slices` is InfEmbed: that K-Means with K slices on the
  workspace's influence embeddings, cached like :func:`core.slicing.find_slices`.
* :func:`infembed_rule` is InfEmbed-Rule: instead of K, a rule — accuracy at
  most A on at least S images — and a branching factor B. The images are split
  recursively by B-way K-Means; a node that satisfies the rule is returned
  whole, so the largest slices satisfying the rule are found and never split
  further. Every slice carries its path in the split tree ("0/2/1").
* :func:`slice_coherence` / :func:`slicing_coherence` measure coherence, the
  K-Means objective on influence embeddings (§4.1), and
  :func:`compare_slicings` puts the slicings of F_W, F and influence
  embeddings side by side on that measure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core.errors import SliceScopeError
from core.influence.embeddings import InfluenceParams, influence_embeddings, influence_params, representation_source
from core.progress import ProgressFn, silent
from core.slicing import SliceParams, default_k, find_slices, slice_table
from core.workspace import Workspace


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and the squared distance to it."""
    distances = (vectors**2).sum(axis=1)[:, None] - 2.0 * vectors @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    labels = distances.argmin(axis=1)
    return labels, np.maximum(distances[np.arange(len(vectors)), labels], 0.0)


def normalised_kmeans(vectors: np.ndarray, k: int, seed: int = 0, n_init: int = 4, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """K-Means whose centroids are normalised to unit length at each iteration (InfEmbed §3.3): (labels, centroids).

    Images go to the nearest unit centroid in Euclidean distance, which is the
    one with the largest dot product; a centroid then becomes its members'
    normalised mean, the unit vector closest to them. The paper finds this
    lessens the pull of outlying embeddings. scikit-learn's KMeans cannot do it:
    it has no hook between its iterations and always moves a centroid to its
    members' plain mean, and normalising the embeddings instead (spherical
    K-Means) would throw away their lengths, which carry how strongly the
    training data pull on each image. Seeded k-means++ starts, ``n_init`` runs,
    the lowest objective wins; an emptied cluster restarts at the image worst
    served by its centroid.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if not 1 <= k <= n:
        raise SliceScopeError(f"k = {k} slices is not possible for {n} images", f"pass a k between 1 and {n}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centroids = _unit(vectors[[rng.integers(n)]])
        while len(centroids) < k:  # k-means++: the next start is drawn in proportion to the squared distance
            _, distance = _assign(vectors, centroids)
            total = distance.sum()
            pick = rng.choice(n, p=distance / total) if total > 0 else rng.integers(n)
            centroids = np.vstack([centroids, _unit(vectors[[pick]])])
        labels = None
        for _ in range(max_iter):
            new_labels, distance = _assign(vectors, centroids)
            if labels is not None and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, vectors)
            empty = np.flatnonzero(np.linalg.norm(sums, axis=1) == 0)
            for cluster, row in zip(empty, np.argsort(-distance)[: len(empty)]):
                sums[cluster] = vectors[row]
                labels[row] = cluster
            centroids = _unit(sums)
        labels, distance = _assign(vectors, centroids)
        objective = float(distance.sum())
        if best is None or objective < best[0]:
            best = (objective, labels, centroids)
    return best[1], best[2].astype(np.float32)


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Renumber clusters so that 0 is the largest, as :func:`core.slicing.find_slices` does."""
    sizes = np.bincount(labels, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    return renumber[labels]


def _embedding_key(workspace: Workspace, params: InfluenceParams | None) -> dict:
    return {"representation_source": representation_source(workspace, params or influence_params(workspace))}


def infembed_slices(
    workspace: Workspace,
    params: SliceParams = SliceParams(),
    influence: InfluenceParams | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """InfEmbed: slice id per image, normalised K-Means with ``params.k`` slices on the influence embeddings.

    Ids are ordered by size (0 is the largest); cached per K, seed and embedding source.
    """
    report = progress or silent

    def compute() -> np.ndarray:
        vectors = influence_embeddings(workspace, influence, progress)
        if params.k > len(vectors):
            raise SliceScopeError(f"k = {params.k} slices is more than the {len(vectors)} images", f"set `k` to {max(1, len(vectors) // 10)} or less")
        report(f"slicing influence embeddings (InfEmbed, k={params.k})", 0, 1)
        labels, _ = normalised_kmeans(vectors, params.k, params.seed)
        report(f"slicing influence embeddings (InfEmbed, k={params.k})", 1, 1)
        return _by_size(labels, params.k)

    return workspace.cached_array("infembed_slices", {**params.key(), **_embedding_key(workspace, influence)}, compute)


# The representation registry's hook (core.workspace.COMPUTED_REPRESENTATIONS): K-Means on influence embeddings is InfEmbed's.
kmeans_slices = infembed_slices


# -- InfEmbed-Rule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleParams:
    """The rule a slice must satisfy — accuracy ≤ ``max_accuracy`` (A) on ≥ ``min_size`` (S) images — and the tree's shape.

    The paper's values (§4): A = 0.4, S = 25, B = 3 (B = 2 and 3 gave the same
    kind of slices); ``max_depth`` bounds the recursion.
    """

    max_accuracy: float = 0.4
    min_size: int = 25
    branching: int = 3
    max_depth: int = 8
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.max_accuracy <= 1.0:
            raise SliceScopeError(f"accuracy threshold {self.max_accuracy} is not in [0, 1]", "set `max_accuracy` to e.g. 0.4")
        if self.min_size < 1:
            raise SliceScopeError(f"minimum slice size {self.min_size} is not possible", "set `min_size` to 1 or more (the paper uses 25)")
        if self.branching < 2:
            raise SliceScopeError(f"branching factor {self.branching} does not split anything", "set `branching` to 2 or more (the paper uses 3)")
        if self.max_depth < 1:
            raise SliceScopeError(f"maximum depth {self.max_depth} allows no split", "set `max_depth` to 1 or more")


@dataclass
class RuleSlices:
    """InfEmbed-Rule's result: a partition of the images into the leaves of the split tree.

    ``slice_ids``: slice per image. ``slices``: one row per slice — slice, path,
    size, accuracy, flagged (the rule holds: accuracy ≤ A; every slice has at
    least S images) — flagged slices first, each group largest first.
    ``tree``: one row per node, for drawing it — path ("" for the root, "0/2"
    for the root's first child's third child), parent (None for the root),
    depth, size, accuracy, leaf, flagged, slice (-1 for inner nodes).
    """

    slice_ids: np.ndarray
    slices: pd.DataFrame
    tree: pd.DataFrame

    @property
    def flagged(self) -> pd.DataFrame:
        return self.slices[self.slices["flagged"]]


def _rule_digits(vectors: np.ndarray, correct: np.ndarray, params: RuleParams) -> np.ndarray:
    """The split tree as a path per image: row i holds the child taken at each depth, -1 past its leaf."""
    digits = np.full((len(vectors), params.max_depth), -1, dtype=np.int64)
    stack = [(np.arange(len(vectors)), 0)]
    while stack:
        rows, depth = stack.pop()
        if correct[rows].mean() <= params.max_accuracy or depth == params.max_depth or len(rows) < 2 * params.min_size:
            continue  # satisfies the rule (kept whole), or cannot split into two slices of S images
        labels, centroids = normalised_kmeans(vectors[rows], min(params.branching, len(rows)), params.seed)
        sizes = np.bincount(labels, minlength=len(centroids))
        kept = np.flatnonzero(sizes >= params.min_size)
        if len(kept) < 2:
            continue
        # Children too small to be slices join the nearest kept centroid: every slice keeps S images.
        labels = kept[(vectors[rows] @ centroids[kept].T).argmax(axis=1)]
        sizes = np.bincount(labels, minlength=len(centroids))
        order = kept[np.lexsort((kept, -sizes[kept]))]  # child 0 is the largest
        for child, cluster in enumerate(order):
            members = rows[labels == cluster]
            digits[members, depth] = child
            stack.append((members, depth + 1))
    return digits


def _path(digits: np.ndarray) -> str:
    return "/".join(str(d) for d in digits if d >= 0)


def _rule_result(digits: np.ndarray, correct: np.ndarray, params: RuleParams) -> RuleSlices:
    depths = (digits >= 0).sum(axis=1)
    paths = np.array([_path(row) for row in digits], dtype=object)
    leaves = pd.DataFrame({"path": paths, "correct": correct}).groupby("path")["correct"].agg(size="size", accuracy="mean").reset_index()
    leaves["flagged"] = (leaves["accuracy"] <= params.max_accuracy) & (leaves["size"] >= params.min_size)
    leaves = leaves.sort_values(["flagged", "size", "path"], ascending=[False, False, True], ignore_index=True)
    leaves.insert(0, "slice", np.arange(len(leaves)))
    slice_of = dict(zip(leaves["path"], leaves["slice"]))
    flagged = dict(zip(leaves["path"], leaves["flagged"]))
    nodes = []
    for depth in range(int(depths.max()) + 1):
        reached = depths >= depth
        for prefix in np.unique(digits[reached, :depth], axis=0):
            inside = reached & (digits[:, :depth] == prefix).all(axis=1)
            path = _path(prefix)
            nodes.append({
                "path": path,
                "parent": path.rpartition("/")[0] if depth else None,
                "depth": depth,
                "size": int(inside.sum()),
                "accuracy": float(correct[inside].mean()),
                "leaf": path in slice_of,
                "flagged": bool(flagged.get(path, False)),
                "slice": int(slice_of.get(path, -1)),
            })
    return RuleSlices(np.array([slice_of[p] for p in paths], dtype=np.int64), leaves, pd.DataFrame(nodes))


def infembed_rule(vectors: np.ndarray, correct: np.ndarray, params: RuleParams = RuleParams()) -> RuleSlices:
    """InfEmbed-Rule on given embeddings and per-image correctness (the paper's Algorithm B.2)."""
    vectors, correct = np.asarray(vectors, dtype=np.float64), np.asarray(correct, dtype=bool)
    if len(vectors) < params.min_size:
        raise SliceScopeError(f"the rule's minimum slice size {params.min_size} is more than the {len(vectors)} images", f"set `min_size` to {max(1, len(vectors) // 4)} or less")
    return _rule_result(_rule_digits(vectors, correct, params), correct, params)


def rule_slices(
    workspace: Workspace,
    params: RuleParams = RuleParams(),
    influence: InfluenceParams | None = None,
    progress: ProgressFn | None = None,
) -> RuleSlices:
    """InfEmbed-Rule on the workspace's influence embeddings; the split tree is cached per rule and embedding source."""
    correct = workspace.images["correct"].to_numpy(dtype=bool)

    def compute() -> np.ndarray:
        vectors = influence_embeddings(workspace, influence, progress)
        if len(vectors) < params.min_size:
            raise SliceScopeError(f"the rule's minimum slice size {params.min_size} is more than the {len(vectors)} images", f"set `min_size` to {max(1, len(vectors) // 4)} or less")
        return _rule_digits(vectors.astype(np.float64), correct, params)

    digits = workspace.cached_array("infembed_rule", {**asdict(params), **_embedding_key(workspace, influence)}, compute)
    return _rule_result(digits, correct, params)


# -- coherence ------------------------------------------------------------------------------------


def slice_coherence(vectors: np.ndarray, slice_ids: np.ndarray) -> pd.DataFrame:
    """Per slice: size, coherence Σ‖μ − μ̄‖² (the K-Means objective within the slice, §4.1; lower is more coherent)
    and its mean per image."""
    vectors = np.asarray(vectors, dtype=np.float64)
    slice_ids = np.asarray(slice_ids)
    rows = []
    for slice_id in np.unique(slice_ids):
        members = vectors[slice_ids == slice_id]
        spread = float(((members - members.mean(axis=0)) ** 2).sum())
        rows.append({"slice": int(slice_id), "size": len(members), "coherence": spread, "mean_coherence": spread / len(members)})
    return pd.DataFrame(rows)


def slicing_coherence(vectors: np.ndarray, slice_ids: np.ndarray) -> float:
    """A slicing's coherence: the K-Means objective on influence embeddings, summed over its slices (lower is better)."""
    return float(slice_coherence(vectors, slice_ids)["coherence"].sum())


def compare_slicings(
    workspace: Workspace,
    k: int | None = None,
    seed: int = 0,
    influence: InfluenceParams | None = None,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """K slices from F_W (attribution), F (features) and influence embeddings (InfEmbed), judged on one footing.

    One row per representation: coherence and its share of the total spread
    (Σ‖μ − mean μ‖²; 1 is no better than one slice), both measured on the
    influence embeddings whatever the slices were found on, as the paper
    compares Domino with InfEmbed; the lowest slice accuracy; how many slices
    fall below the overall accuracy and what share of the errors they hold; and
    label homogeneity, the size-weighted share of each slice's most common
    (label, prediction) pair.
    """
    params = SliceParams(k=k or default_k(len(workspace.images)), seed=seed)
    vectors = influence_embeddings(workspace, influence, progress).astype(np.float64)
    total = float(((vectors - vectors.mean(axis=0)) ** 2).sum())
    images = workspace.images
    correct = images["correct"].to_numpy(dtype=bool)
    overall = correct.mean()
    slicings = {
        "attribution": find_slices(workspace, "attribution", params, progress),
        "features": find_slices(workspace, "features", params, progress),
        "influence": infembed_slices(workspace, params, influence, progress),
    }
    rows = []
    for name, slice_ids in slicings.items():
        coherence = slicing_coherence(vectors, slice_ids)
        frame = pd.DataFrame({"slice": slice_ids, "correct": correct, "cell": images["label"] + "→" + images["prediction"]})
        accuracy = frame.groupby("slice")["correct"].mean()
        low = accuracy.index[accuracy < overall]
        errors = ~correct
        homogeneity = frame.groupby("slice")["cell"].agg(lambda cells: cells.value_counts().iat[0]).sum() / len(frame)
        rows.append({
            "representation": name,
            "k": params.k,
            "coherence": coherence,
            "coherence_share": coherence / total if total > 0 else 0.0,
            "worst_accuracy": float(accuracy.min()),
            "low_slices": len(low),
            "errors_in_low_slices": float(errors[np.isin(slice_ids, low)].sum() / max(1, errors.sum())),
            "label_homogeneity": float(homogeneity),
        })
    return pd.DataFrame(rows)


def _with_coherence(workspace: Workspace, slice_ids: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    coherence = slice_coherence(influence_embeddings(workspace), slice_ids)[["slice", "mean_coherence"]]
    return table.merge(coherence, on="slice")


def infembed_table(workspace: Workspace, params: SliceParams = SliceParams()) -> tuple[np.ndarray, pd.DataFrame]:
    """InfEmbed's slice per image and its Slice Table (:func:`core.slicing.slice_table`), with each slice's ``mean_coherence``."""
    slice_ids = find_slices(workspace, "influence", params)
    return slice_ids, _with_coherence(workspace, slice_ids, slice_table(workspace.images, slice_ids))


def rule_table(workspace: Workspace, params: RuleParams = RuleParams()) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """InfEmbed-Rule's slice per image, its Slice Table (with each slice's ``path`` in the split tree, whether the rule
    holds on it and its ``mean_coherence``) and the split tree."""
    rule = rule_slices(workspace, params)
    rule_columns = rule.slices[["slice", "path", "flagged"]].rename(columns={"flagged": "rule_holds"})
    table = rule_columns.merge(slice_table(workspace.images, rule.slice_ids), on="slice")
    return rule.slice_ids, _with_coherence(workspace, rule.slice_ids, table), rule.tree
