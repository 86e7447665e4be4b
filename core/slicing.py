"""Slice finding (AttributionScanner §3.4.2): UMAP layout, K-Means slices, metrics.

Slices are K-Means clusters of a representation (F_W gives the attribution
space, F the original feature space), over-clustered (k = 50 by default) so rare
failure modes get their own slice. The 2-D layout is UMAP of the same
representation. Both are cached in the workspace under their parameters.

Above :data:`SCALED_PIPELINE_THRESHOLD` images both are fitted on a seeded sample
of :data:`FIT_SAMPLE_IMAGES` and applied to the rest (UMAP's ``transform``,
MiniBatchKMeans, a mixture's ``predict``), so a 200,000-image workspace is sliced
and laid out in minutes on two cores (docs/ARCHITECTURE.md, "The scaled pipeline").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core.descriptions import describe_by_columns
from core.errors import SliceScopeError
from core.evidence import FlagParams, slice_evidence
from core.progress import ProgressFn, silent
from core.workspace import REPRESENTATIONS, Workspace, representation_provider

UMAP_METRICS = ("euclidean", "cosine", "manhattan", "correlation")

# The scaled pipeline (benchmarks/scale.py, docs/BENCHMARKS.md "Workspaces of 200,000 images"). Up to the threshold
# every result is computed on all images exactly as before, under the same cache keys; above it, the layout and the
# slices are fitted on a seeded sample of FIT_SAMPLE_IMAGES and applied to the rest, and their cache keys record the
# sample size. The app's defaults (UMAP + the domino mixture) on every image of a synthetic 64-d workspace took 67 s
# at 50,000 images on 2 quiet cores but 286 s while other work loaded them (load average 6): the threshold keeps a
# workspace that is fitted whole within the 5-minute budget even on a busy machine, and fitting the
# 20,000-image sample (42 s at 10,000 whole, 181 s at 20,000 when busy) leaves most of that budget for placing the rest.
SCALED_PIPELINE_THRESHOLD = 50_000
FIT_SAMPLE_IMAGES = 20_000
# Above the threshold and for the euclidean metric, UMAP runs on this many randomized principal components (fitted
# on the sample): distances keep most of their variance, and the neighbour search costs this many dimensions
# instead of a backbone's 512-2048. Other metrics keep the original columns, since centring and rotating change them.
SCALED_PCA_COMPONENTS = 50
# Images placed per UMAP.transform call: a progress report every few seconds, with bounded memory.
TRANSFORM_CHUNK_IMAGES = 10_000
# MiniBatchKMeans' batch: about 80 images per centroid at k = 50 (scikit-learn's default is 1,024).
MINIBATCH_IMAGES = 4_096


@dataclass(frozen=True)
class ProjectionParams:
    """UMAP settings; the paper used n_neighbors 5–20 and min_dist 0.01–0.05."""

    n_neighbors: int = 15
    min_dist: float = 0.05
    metric: str = "euclidean"
    seed: int = 0

    def __post_init__(self):
        if self.metric not in UMAP_METRICS:
            raise SliceScopeError(f"unknown UMAP metric '{self.metric}'", f"use one of: {', '.join(UMAP_METRICS)}")
        if self.n_neighbors < 2:
            raise SliceScopeError("UMAP n_neighbors must be at least 2", "set `n_neighbors` to 2 or more")
        if not 0.0 <= self.min_dist <= 1.0:
            raise SliceScopeError("UMAP min_dist must lie in [0, 1]", "set `min_dist` to e.g. 0.05")


# How slices are cut from a representation. K-Means is AttributionScanner's (and, on influence embeddings,
# InfEmbed's); the other two are error-aware: they see each image's label and how the model did on it, so
# that images the model gets wrong in the same way are pulled into the same slice.
SLICING_METHODS = {
    "kmeans": "K-Means on the representation (AttributionScanner; InfEmbed's normalised K-Means on influence embeddings)",
    "domino": "Domino-style error-aware mixture: PCA of the representation + label + predicted probabilities, Gaussian mixture, size by BIC",
    "planespot": "PlaneSpot: the 2-D layout + the model's confidence in the true label, Gaussian mixture, size by BIC",
}


@dataclass(frozen=True)
class SliceParams:
    """``k``: the number of K-Means slices, or for the mixture methods the most components BIC may choose."""

    k: int = 50
    seed: int = 0
    method: str = "kmeans"

    def __post_init__(self):
        if self.k < 1:
            raise SliceScopeError(f"k = {self.k} slices is not possible", "set `k` to 1 or more (50 is the paper's choice)")
        if self.method not in SLICING_METHODS:
            raise SliceScopeError(f"unknown slicing method '{self.method}'", f"use one of: {', '.join(SLICING_METHODS)}")

    def key(self) -> dict:
        """What a cached slicing is keyed by; K-Means keeps the key it had before there were other methods."""
        return {"k": self.k, "seed": self.seed} | ({} if self.method == "kmeans" else {"method": self.method})


# What `python -m core slices` uses when not told otherwise: the best of benchmarks/discovery.py.
DEFAULT_REPRESENTATION = "attribution"
DEFAULT_SLICING = SliceParams(k=50, method="domino")


def default_k(n_images: int) -> int:
    """The paper's k = 50, lowered for small datasets so slices keep ~10 images."""
    return min(SliceParams().k, max(2, n_images // 10))


def default_slice_params(n_images: int) -> SliceParams:
    """The slicing the app opens on and the CLI assumes without flags: :data:`DEFAULT_SLICING` with :func:`default_k`."""
    return SliceParams(k=default_k(n_images), method=DEFAULT_SLICING.method, seed=DEFAULT_SLICING.seed)


def slicing_name(representation: str, params: SliceParams) -> str:
    """A stable name for one slicing, e.g. ``attribution:k=50:seed=0``: slice ids mean something only within it."""
    _check_representation(representation)
    method = "" if params.method == "kmeans" else f"{params.method}:"
    return f"{representation}:{method}k={params.k}:seed={params.seed}"


def _check_representation(representation: str) -> None:
    if representation not in REPRESENTATIONS:
        raise SliceScopeError(f"unknown slicing method '{representation}'", f"use one of: {', '.join(REPRESENTATIONS)}")


def is_scaled(n_images: int) -> bool:
    """Whether a workspace of ``n_images`` gets the scaled pipeline: fits on a sample, applied to the rest."""
    return n_images > SCALED_PIPELINE_THRESHOLD


def seeded_sample(n_rows: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct row numbers of ``n_rows`` (all of them if fewer), sorted, the same for the same seed."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def project(workspace: Workspace, representation: str, params: ProjectionParams = ProjectionParams(), progress: ProgressFn | None = None) -> np.ndarray:
    """The 2-D UMAP layout (N × 2) of a representation, computed once; above :data:`SCALED_PIPELINE_THRESHOLD`
    images UMAP is fitted on a seeded sample and places the other images with ``transform``."""
    _check_representation(representation)
    report = progress or silent
    scaled = is_scaled(len(workspace.images))

    def compute() -> np.ndarray:
        vectors = np.asarray(workspace.representation(representation), dtype=np.float32)
        if len(vectors) < 4:
            raise SliceScopeError(f"a 2-D layout needs at least 4 images, the workspace has {len(vectors)}", "scan more images")
        if scaled:
            return umap_fitted_on_a_sample(vectors, params, f"projecting {representation}", report)
        step = f"projecting {representation} (UMAP)"
        report(step, 0, 1)
        layout = umap_reducer(params, len(vectors)).fit_transform(vectors).astype(np.float32)
        report(step, 1, 1)
        return layout

    key = asdict(params) | ({"fit_sample": FIT_SAMPLE_IMAGES, "pca_components": SCALED_PCA_COMPONENTS} if scaled else {})
    return workspace.cached_array(f"projection-{representation}", key, compute)


def umap_reducer(params: ProjectionParams, n_points: int):
    """An unfitted ``umap.UMAP`` with ``params`` for ``n_points`` points."""
    # umap-learn is imported here: its numba start-up costs seconds that a
    # page showing cached results should not pay.
    import umap

    return umap.UMAP(
        n_components=2,
        n_neighbors=min(params.n_neighbors, n_points - 1),
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=params.seed,
        n_jobs=1,
    )


def umap_fitted_on_a_sample(vectors: np.ndarray, params: ProjectionParams, step: str, report: ProgressFn) -> np.ndarray:
    """The layout of ``vectors`` from UMAP fitted on a seeded sample of :data:`FIT_SAMPLE_IMAGES` rows (after randomized
    PCA for the euclidean metric); the other rows are placed by ``transform``, :data:`TRANSFORM_CHUNK_IMAGES` at a time.

    UMAP's neighbour graph and layout optimisation grow faster than linearly with the points fitted, and every fitted
    point is held in memory with its neighbours; ``transform`` places a new point against the fitted layout alone, so the
    rest costs time linear in its size and memory of one chunk.
    """
    sample = seeded_sample(len(vectors), FIT_SAMPLE_IMAGES, params.seed)
    fitted = np.asarray(vectors[sample])
    reduce = _identity
    if params.metric == "euclidean" and vectors.shape[1] > SCALED_PCA_COMPONENTS:
        from sklearn.decomposition import PCA

        reduce = PCA(n_components=SCALED_PCA_COMPONENTS, svd_solver="randomized", random_state=params.seed).fit(fitted).transform
    fit_step = f"{step} (UMAP fitted on {len(sample):,} of {len(vectors):,} images)"
    report(fit_step, 0, 1)
    reducer = umap_reducer(params, len(sample)).fit(reduce(fitted))
    report(fit_step, 1, 1)
    layout = np.empty((len(vectors), 2), dtype=np.float32)
    layout[sample] = reducer.embedding_
    rest = np.setdiff1d(np.arange(len(vectors)), sample, assume_unique=True)
    place_step = f"{step} (UMAP placing the other {len(rest):,} images)"
    report(place_step, 0, len(rest))
    for start in range(0, len(rest), TRANSFORM_CHUNK_IMAGES):
        rows = rest[start:start + TRANSFORM_CHUNK_IMAGES]
        layout[rows] = reducer.transform(reduce(np.asarray(vectors[rows])))
        report(place_step, start + len(rows), len(rest))
    return layout


def _identity(rows: np.ndarray) -> np.ndarray:
    return rows


def find_slices(workspace: Workspace, representation: str, params: SliceParams = SliceParams(), progress: ProgressFn | None = None) -> np.ndarray:
    """Slice id per image: K-Means on the representation, ids ordered by slice size.

    A computed representation may bring its own K-Means (``kmeans_slices``, see
    ``core.workspace.COMPUTED_REPRESENTATIONS``): influence embeddings are sliced as
    InfEmbed does, with centroids normalised at each iteration
    (:func:`core.influence.infembed_slices`), so every slicing named ``influence:k=…`` is the paper's.
    """
    _check_representation(representation)
    if params.method != "kmeans":
        return _mixture_slices(workspace, representation, params, progress)
    own_kmeans = getattr(representation_provider(representation), "kmeans_slices", None)
    if own_kmeans is not None:
        return own_kmeans(workspace, params, progress=progress)
    report = progress or silent
    scaled = is_scaled(len(workspace.images))

    def compute() -> np.ndarray:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        vectors = sliceable_vectors(workspace, representation, params.k)
        step = f"slicing {representation} ({'MiniBatchKMeans' if scaled else 'K-Means'}, k={params.k})"
        report(step, 0, 1)
        # Full K-Means passes over every image in every iteration of each of its 4 starts; MiniBatchKMeans moves the
        # centroids after each batch of MINIBATCH_IMAGES, so it settles within a few passes over the data.
        kmeans = (MiniBatchKMeans(n_clusters=params.k, batch_size=MINIBATCH_IMAGES, n_init=4, random_state=params.seed) if scaled
                  else KMeans(n_clusters=params.k, n_init=4, random_state=params.seed))
        clusters = kmeans.fit_predict(vectors)
        report(step, 1, 1)
        return largest_first(clusters)

    return workspace.cached_array(f"slices-{representation}", params.key() | ({"minibatch": MINIBATCH_IMAGES} if scaled else {}), compute)


def largest_first(clusters: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0, 1, ... by decreasing size (ties by first label), with no gaps.

    Slice ids then mean the same thing across runs with the same parameters and read naturally in the table.
    """
    labels, clusters = np.unique(clusters, return_inverse=True)
    sizes = np.bincount(clusters, minlength=len(labels))
    order = np.lexsort((np.arange(len(labels)), -sizes))
    renumber = np.empty(len(labels), dtype=np.int64)
    renumber[order] = np.arange(len(labels))
    return renumber[clusters]


# Domino's default weights of the label and prediction terms against the embedding's (Eyuboglu et al. 2022).
_DOMINO_LABEL_WEIGHT = 10.0
_DOMINO_PCA_DIMENSIONS = 32
# PlaneSpot's weight of the confidence against the standardised 2-D layout (Plumb et al. 2023 tune it per dataset).
_PLANESPOT_CONFIDENCE_WEIGHT = 2.0


def _mixture_slices(workspace: Workspace, representation: str, params: SliceParams, progress: ProgressFn | None) -> np.ndarray:
    report = progress or silent
    fit_sample = FIT_SAMPLE_IMAGES if is_scaled(len(workspace.images)) else None

    def compute() -> np.ndarray:
        step = f"slicing {representation} ({params.method}, up to {params.k} slices by BIC)"
        report(step, 0, 1)
        if params.method == "domino":
            features = domino_features(workspace.images, sliceable_vectors(workspace, representation, min(params.k, 2)), workspace.array("logits"),
                                       workspace.classes, params.seed)
        else:
            features = planespot_features(workspace.images, project(workspace, representation, ProjectionParams(seed=params.seed), progress),
                                          workspace.array("logits"), workspace.classes)
        clusters = bic_mixture(features, params.k, params.seed, fit_sample, progress)
        report(step, 1, 1)
        return largest_first(clusters)

    return workspace.cached_array(f"slices-{representation}", params.key() | ({"fit_sample": fit_sample} if fit_sample else {}), compute)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64), axis=1)


def domino_features(images: pd.DataFrame, vectors: np.ndarray, logits: np.ndarray, classes: list[str], seed: int = 0) -> np.ndarray:
    """Domino's error-aware inputs as one matrix: the representation's whitened top principal components, the
    one-hot label and the predicted probabilities, the last two weighted as Domino weighs their likelihoods.

    Domino fits its own mixture with categorical label and prediction terms; a diagonal Gaussian mixture over
    these columns (scikit-learn's) is the close approximation that needs no hand-written EM.
    """
    from sklearn.decomposition import PCA

    dimensions = max(1, min(_DOMINO_PCA_DIMENSIONS, vectors.shape[1], len(vectors) - 1))
    embedded = PCA(n_components=dimensions, whiten=True, random_state=seed).fit_transform(np.asarray(vectors, dtype=np.float64))
    labels = np.eye(len(classes))[images["label_index"].to_numpy()]
    weight = np.sqrt(_DOMINO_LABEL_WEIGHT)
    return np.hstack([embedded, weight * labels, weight * _probabilities(logits)])


def planespot_features(images: pd.DataFrame, layout: np.ndarray, logits: np.ndarray, classes: list[str]) -> np.ndarray:
    """PlaneSpot's inputs: the standardised 2-D layout and the model's confidence in each image's true label."""
    layout = np.asarray(layout, dtype=np.float64)
    standardised = (layout - layout.mean(axis=0)) / np.maximum(layout.std(axis=0), 1e-12)
    true_class = _probabilities(logits)[np.arange(len(images)), images["label_index"].to_numpy()]
    return np.hstack([standardised, _PLANESPOT_CONFIDENCE_WEIGHT * true_class[:, None]])


def bic_mixture(features: np.ndarray, max_components: int, seed: int = 0, fit_sample: int | None = None,
                progress: ProgressFn | None = None) -> np.ndarray:
    """Cluster labels of the diagonal Gaussian mixture whose number of components (2 … max) has the lowest BIC.

    With ``fit_sample``, the mixtures are fitted and compared on that many seeded rows and then assign every row:
    each EM iteration of each candidate costs time linear in the rows fitted, up to 12 candidates × 200 iterations.
    """
    from sklearn.mixture import GaussianMixture

    fitted = features if fit_sample is None else features[seeded_sample(len(features), fit_sample, seed)]
    upper = max(1, min(max_components, len(fitted) // 5))
    candidates = np.unique(np.geomspace(min(2, upper), upper, num=min(12, upper)).round().astype(int))
    report = progress or silent
    step = f"choosing the number of slices by BIC ({len(fitted):,} images)"
    best, best_bic = None, np.inf
    for done, components in enumerate(candidates):
        report(step, done, len(candidates))
        mixture = GaussianMixture(n_components=int(components), covariance_type="diag", reg_covar=1e-4, random_state=seed, max_iter=200)
        mixture.fit(fitted)
        bic = mixture.bic(fitted)
        if bic < best_bic:
            best, best_bic = mixture, bic
    report(step, len(candidates), len(candidates))
    return best.predict(features)


def sliceable_vectors(workspace: Workspace, representation: str, k: int) -> np.ndarray:
    """The representation as float32 rows, once it is checked to be something k slices can be cut from."""
    vectors = np.asarray(workspace.representation(representation), dtype=np.float32)
    if k > len(vectors):
        raise SliceScopeError(f"k = {k} slices is more than the {len(vectors)} images", f"set `k` to {max(1, len(vectors) // 10)} or less")
    broken = ~np.isfinite(vectors).all(axis=1)
    if broken.any():
        raise SliceScopeError(
            f"the {representation} representation is NaN or infinite for {int(broken.sum())} of {len(vectors)} images",
            "the model produced non-finite values: check its checkpoint and the scan's `normalize`, then rescan",
        )
    distinct = distinct_rows(vectors)
    if distinct < k:
        raise SliceScopeError(
            f"the {representation} representation has only {distinct} distinct value(s) over {len(vectors)} images, fewer than k = {k} slices",
            f"set `k` to {max(1, distinct)} or less, or check the target layer (`target_layer`): a constant layer cannot tell images apart",
        )
    return vectors


# Rows hashed at a time by distinct_rows: 16,384 × 512 float32 is 32 MB of rounded copy.
_HASH_CHUNK_ROWS = 16_384


def distinct_rows(vectors: np.ndarray) -> int:
    """How many distinct rows ``vectors`` has at 6 decimals: the count of ``np.unique(vectors.round(6), axis=0)``, in linear time.

    np.unique(axis=0) sorts the rows as wide records, comparing them element by element, so rows sharing a long prefix
    (the dead channels of post-ReLU features) are slow to tell apart: at 200,000 × 512 float32 with 384 constant
    columns it took 35.8 s and 406 MB more memory (3.4 s on random rows; both timed on shared cores). Here each
    rounded row becomes one 64-bit hash (pandas' row hash, a fixed, well-mixed function of the row's bytes) and the
    hashes are counted: 1.1 s on either, in chunks of _HASH_CHUNK_ROWS. Rows equal at 6 decimals have equal bytes
    once −0.0 is made 0.0 (no NaN reaches here), so they hash alike; two distinct rows share a hash with probability
    2⁻⁶⁴, so about 10⁻⁹ that any two of 200,000 rows collide.
    """
    hashes = [
        pd.util.hash_pandas_object(pd.DataFrame(vectors[start:start + _HASH_CHUNK_ROWS].round(6) + np.float32(0)), index=False).to_numpy()
        for start in range(0, len(vectors), _HASH_CHUNK_ROWS)
    ]
    return len(np.unique(np.concatenate(hashes))) if hashes else 0


def slice_table(images: pd.DataFrame, slice_ids: np.ndarray, flag_params: FlagParams = FlagParams()) -> pd.DataFrame:
    """One row per slice: size, accuracy, confidence, errors, dominant label → prediction, the evidence
    that it is a problem (:func:`core.evidence.slice_evidence`: ``flagged``, interval, q-value, ...) and
    a ``description`` in words: the dominant label → prediction, and for flagged slices the metadata columns
    that set them apart (``metadata_description``, :func:`core.descriptions.describe_members`; "" without)."""
    frame = images[["label", "prediction", "confidence", "correct"]].assign(slice=np.asarray(slice_ids))
    grouped = frame.groupby("slice")
    table = pd.DataFrame({
        "size": grouped.size(),
        "accuracy": grouped["correct"].mean(),
        "mean_confidence": grouped["confidence"].mean(),
        "errors": grouped["correct"].size() - grouped["correct"].sum(),
    })
    for column in ("label", "prediction"):
        counts = frame.groupby(["slice", column]).size().rename("n").reset_index()
        top = counts.sort_values(["slice", "n", column], ascending=[True, False, True]).drop_duplicates("slice").set_index("slice")
        table[f"dominant_{column}"] = top[column]
        table[f"dominant_{column}_share"] = top["n"] / table["size"]
    cells = confusion_counts(images, slice_ids)
    table["confusion"] = cells.groupby("slice").apply(
        lambda rows: " · ".join(f"{l}→{p}: {n}" for l, p, n in zip(rows["label"], rows["prediction"], rows["count"])),
        include_groups=False,
    )
    evidence = slice_evidence(images["correct"].to_numpy(), np.asarray(slice_ids), flag_params)
    table = table.join(evidence.drop(columns=["size", "errors", "accuracy"]))
    table["description"] = describe_slices(images, slice_ids, table)
    # Only the flagged slices: a tree per slice is cheap, but the table is drawn on every rerun of a page.
    table["metadata_description"] = describe_by_columns(images, slice_ids, table.index[table["flagged"]]).reindex(table.index, fill_value="")
    table = table.reset_index()
    table["errors"] = table["errors"].astype(int)
    return table


def describe_slices(images: pd.DataFrame, slice_ids: np.ndarray, table: pd.DataFrame) -> pd.Series:
    """Each slice in words: its most common label → prediction and how over-represented that pair is.

    "star → circle: 81% of the slice, 4% of all images (×20)"; the ratio is what
    makes a slice a finding, so it is stated rather than left to the reader.
    """
    pairs = images["label"].astype(str) + " → " + images["prediction"].astype(str)
    overall = pairs.value_counts(normalize=True)
    frame = pd.DataFrame({"slice": np.asarray(slice_ids), "pair": pairs})
    counts = frame.groupby(["slice", "pair"]).size().rename("n").reset_index()
    top = counts.sort_values(["slice", "n", "pair"], ascending=[True, False, True]).drop_duplicates("slice").set_index("slice")
    share = top["n"] / table["size"]
    base = top["pair"].map(overall)
    return pd.Series(
        [f"{pair}: {s:.0%} of the slice, {b:.0%} of all images (×{s / b:.1f})" for pair, s, b in zip(top["pair"], share, base)],
        index=top.index,
    )


def confusion_counts(images: pd.DataFrame, slice_ids: np.ndarray) -> pd.DataFrame:
    """Images per (slice, label, prediction) cell, largest cells first within a slice."""
    frame = images[["label", "prediction"]].assign(slice=np.asarray(slice_ids))
    counts = frame.groupby(["slice", "label", "prediction"]).size().rename("count").reset_index()
    return counts.sort_values(["slice", "count"], ascending=[True, False]).reset_index(drop=True)


def slices_frame(
    workspace: Workspace,
    representation: str,
    slice_params: SliceParams = SliceParams(),
    projection_params: ProjectionParams = ProjectionParams(),
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Per image: ``path,label,prediction,confidence,slice,flagged``, its slice's evidence columns, and ``x,y`` (the CLI's CSV)."""
    slice_ids = find_slices(workspace, representation, slice_params, progress)
    layout = project(workspace, representation, projection_params, progress)
    return image_frame(workspace.images, slice_ids, layout)


# Per-slice columns the CLI's CSV repeats on every image of the slice.
FRAME_EVIDENCE_COLUMNS = {"accuracy": "slice_accuracy", "rest_accuracy": "rest_accuracy", "accuracy_low": "slice_accuracy_low",
                          "accuracy_high": "slice_accuracy_high", "q_value": "q_value", "description": "slice_description",
                          "metadata_description": "slice_metadata"}


def image_frame(images: pd.DataFrame, slice_ids: np.ndarray, layout: np.ndarray, flag_params: FlagParams = FlagParams()) -> pd.DataFrame:
    """One row per image of ``images`` with its slice, whether that slice is flagged and why, and its 2-D position."""
    per_slice = slice_table(images, slice_ids, flag_params).set_index("slice")
    slice_ids = np.asarray(slice_ids)
    frame = pd.DataFrame({column: images[column].to_numpy() for column in ("path", "label", "prediction", "confidence")})
    frame["slice"] = slice_ids
    frame["flagged"] = per_slice["flagged"].reindex(slice_ids).to_numpy()
    for column, name in FRAME_EVIDENCE_COLUMNS.items():
        frame[name] = per_slice[column].reindex(slice_ids).to_numpy()
    frame["x"], frame["y"] = layout[:, 0], layout[:, 1]
    return frame
