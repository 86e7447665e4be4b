"""The analyst's loop in one place: annotations → spuriousness → mitigation → evaluated versions.

The CLI and the app both call these functions, so a mitigation started from
either reads the same annotations and every version of a model line is
evaluated the same way: with the root version's slicing, its annotations'
regions (or the dataset's ground-truth masks) and the same seeded noise, which
is what makes the numbers of two versions comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import SliceScopeError
from core.mitigation.batches import read_batch
from core.mitigation.corm import (
    DEFAULT_THRESHOLD,
    MitigationJob,
    TrainingParams,
    check_methods,
    choose_treated_slices,
    run_mitigation,
)
from core.mitigation.robustness import DEFAULT_SIGMA, Robustness, choose_regions, evaluate, read_metrics, write_metrics
from core.mitigation.spuriousness import PropagationParams, slice_spuriousness
from core.progress import ProgressFn
from core.slicing import DEFAULT_REPRESENTATION, SliceParams, default_slice_params, find_slices, slicing_name
from core.store import AnnotationStore
from core.training import TrainingData, default_training_data
from core.versions import read_version, version_family, version_root
from core.workspace import Workspace


@dataclass(frozen=True)
class Slicing:
    """Which slices annotations refer to: a representation and how it was sliced."""

    representation: str = DEFAULT_REPRESENTATION
    params: SliceParams | None = None  # None: the app's default for the workspace (core.slicing.default_slice_params)

    def resolve(self, workspace: Workspace) -> tuple[str, np.ndarray]:
        params = self.params or default_slice_params(len(workspace.images))
        return slicing_name(self.representation, params), find_slices(workspace, self.representation, params)

    @classmethod
    def from_name(cls, name: str) -> Slicing:
        """The slicing that :func:`core.slicing.slicing_name` calls ``name``, e.g. ``attribution:k=50:seed=0``."""
        try:
            representation, *method, k, seed = name.split(":")
            if len(method) > 1:
                raise ValueError(name)
            params = SliceParams(k=int(k.removeprefix("k=")), seed=int(seed.removeprefix("seed=")), method=method[0] if method else "kmeans")
            return cls(representation, params)
        except ValueError:
            raise SliceScopeError(f"'{name}' does not name a slicing", "expected e.g. attribution:k=50:seed=0") from None


@dataclass(frozen=True)
class AnnotationState:
    """What the analyst has said about a workspace's slicing, read once from the store."""

    slicing: str
    slice_ids: np.ndarray
    kinds: dict[int, str]
    notes: dict[int, str]
    relabels: dict[str, str] = field(default_factory=dict)


def read_annotations(store: AnnotationStore, workspace: Workspace, slicing: Slicing = Slicing()) -> AnnotationState:
    name, slice_ids = slicing.resolve(workspace)
    annotations = store.slice_annotations(workspace.fingerprint, name)
    relabels = {image: relabel.label for image, relabel in store.relabels(workspace.dataset_fingerprint).items()}
    return AnnotationState(
        name, slice_ids,
        {s: a.kind for s, a in annotations.items()},
        {s: a.note for s, a in annotations.items()},
        relabels,
    )


def spuriousness(workspace: Workspace, state: AnnotationState, params: PropagationParams = PropagationParams()) -> np.ndarray:
    """Spuriousness per slice (NaN everywhere until a slice is annotated core or spurious)."""
    return slice_spuriousness(np.asarray(workspace.array("attribution_features")), state.slice_ids, state.kinds, params)


def plan_mitigation(
    workspace: Workspace,
    state: AnnotationState,
    source: str,
    out: Path,
    threshold: float = DEFAULT_THRESHOLD,
    params: TrainingParams = TrainingParams(),
    training: TrainingData | None = None,
    propagation: PropagationParams = PropagationParams(),
    treated: Sequence[int] | None = None,
    methods: Sequence[str] = ("corm",),
    batches: Sequence[str] = (),
    group_column: str | None = None,
) -> MitigationJob:
    """The job that retrains with ``methods`` (see :data:`core.mitigation.corm.METHODS`) and, for CoRM, treats the slices
    ``source`` picks (annotations, or propagation ≥ threshold), or exactly ``treated``.

    An explicit ``treated`` list is how the app hands the CLI the slices the analyst saw
    (with the propagation settings of their page) and how a job is resumed unchanged.
    ``batches`` are accepted augmentation batches of the line (for ``augment``); ``group_column``
    makes ``reweight`` balance a column of the training data (known groups) instead of the slices.
    """
    methods = check_methods(tuple(methods), params, tuple(batches), group_column)
    root = version_root(workspace)
    hashes = tuple(read_batch(root, batch_id).sha256 for batch_id in batches)
    if treated is None and "corm" not in methods:
        treated = []
    elif treated is None:
        scores = spuriousness(workspace, state, propagation) if source == "propagation" else None
        treated = choose_treated_slices(state.kinds, scores, source, threshold)
    else:
        treated = sorted({int(s) for s in treated})
        n_slices = int(state.slice_ids.max()) + 1
        if (not treated and "corm" in methods) or (treated and (treated[0] < 0 or treated[-1] >= n_slices)):
            raise SliceScopeError(f"slices {', '.join(map(str, treated)) or '(none)'} are not all in {state.slicing}", f"name slices from 0 to {n_slices - 1}")
    return MitigationJob(
        parent=workspace.path, out=Path(out).expanduser().resolve(), source=source, treated_slices=tuple(treated),
        slicing=state.slicing, relabels=dict(state.relabels), training=training or default_training_data(workspace), params=params,
        methods=methods, batches=tuple(batches), batch_hashes=hashes, group_column=group_column,
    )


def mitigate_arguments(job: MitigationJob) -> list[str]:
    """The ``python -m core`` arguments that plan ``job`` again (its treated slices named explicitly) and run it.

    An unfinished job resumes from its last epoch; annotations changed since only
    matter through the relabels, and a changed job is refused by the CLI.

    The weight decay and seed of ``job.params`` have no CLI flag: a job must keep their defaults to be run this way.
    """
    slicing = Slicing.from_name(job.slicing)
    params, training = job.params, job.training
    arguments = [
        "mitigate", str(job.parent), "--from", job.source, "--out", str(job.out), "--method", ",".join(m.replace("_", "-") for m in job.methods),
        "--epochs", str(params.epochs), "--lr", repr(params.learning_rate), "--batch-size", str(params.batch_size),
        "--sigma", repr(params.sigma), "--noise-region", params.noise_region.replace("_", "-"), "--train-data", str(training.data),
        "--representation", slicing.representation, "--slicing-method", slicing.params.method, "--k", str(slicing.params.k),
        "--seed", str(slicing.params.seed),
    ]
    if job.treated_slices:
        arguments += ["--slices", ",".join(map(str, job.treated_slices))]
    if job.batches:
        arguments += ["--batches", ",".join(job.batches)]
    if job.group_column is not None:
        arguments += ["--group-column", job.group_column]
    if params.from_scratch:
        arguments.append("--from-scratch")
    if training.split is not None:
        arguments += ["--train-split", training.split]
    if training.validation_split is not None:
        arguments += ["--val-split", training.validation_split]
    return arguments


def mitigate(job: MitigationJob, state: AnnotationState, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> Workspace:
    return run_mitigation(job, state.slice_ids, progress, should_stop)


def evaluate_version(
    workspace: Workspace,
    store: AnnotationStore,
    slicing: Slicing = Slicing(),
    regions: str = "auto",
    sigma: float = DEFAULT_SIGMA,
    progress: ProgressFn | None = None,
) -> Robustness:
    """Evaluate ``workspace`` against its line's root (slices, regions, relabels) and write metrics.json."""
    root = version_root(workspace)
    state = read_annotations(store, root, slicing)
    size = int(root.manifest["transforms"]["image_size"])
    chosen = choose_regions(root, state.slice_ids, state.kinds, size, regions)
    robustness = evaluate(workspace, chosen, _root_slices_for(workspace, root, state.slice_ids), state.relabels, sigma, progress=progress)
    write_metrics(workspace, robustness)
    return robustness


def _root_slices_for(workspace: Workspace, root: Workspace, root_slice_ids: np.ndarray) -> np.ndarray:
    """The root's slice of each of ``workspace``'s images (matched by image id; same images, maybe another order)."""
    if workspace.path == root.path:
        return root_slice_ids
    by_image = pd.Series(root_slice_ids, index=root.images["image_id"])
    return by_image.reindex(workspace.images["image_id"]).fillna(-1).astype(int).to_numpy()


def version_board(workspace: Workspace) -> pd.DataFrame:
    """One row per version of ``workspace``'s line with what it was trained with and its metrics (NaN where not evaluated yet).

    ``group: NAME`` columns hold per-group accuracy when the dataset has ground-truth groups.
    """
    rows = []
    for member in version_family(workspace):
        info = read_version(member) or {}
        metrics = read_metrics(member) or {}
        job = info.get("job", {})
        rows.append({
            "version": info.get("number", 1),
            "name": member.name,
            "path": str(member.path),
            "parent": Path(info["parent"]).name if info else "",
            "mitigation": training_recipe(job) if job else "original model",
            "treated_slices": len(job.get("treated_slices", [])),
            "batches": ", ".join(job.get("batches", [])),
            "created": info.get("created", member.manifest.get("created", "")),
            **{key: metrics.get(key, np.nan) for key in ("clean_acc", "core_acc", "spurious_acc", "rcs", "worst_group_acc", "relabelled")},
            "worst_group": metrics.get("worst_group", ""),
            "regions": metrics.get("regions", ""),
            **{f"group: {group}": accuracy for group, accuracy in metrics.get("group_acc", {}).items() if not group.startswith("slice ")},
        })
    return pd.DataFrame(rows)


def training_recipe(job: dict) -> str:
    """A version's retraining in words, from its recorded job: "augment + reweight (from scratch)", "corm (propagation)"…"""
    methods = job.get("methods", ["corm"])  # jobs of older versions were CoRM only
    words = " + ".join(method.replace("_", "-") for method in methods)
    details = []
    if "corm" in methods:
        details.append(job.get("source", "annotations") + (", noise outside object masks" if job.get("params", {}).get("noise_region") == "object_masks" else ""))
    if job.get("group_column"):
        details.append(f"balanced by {job['group_column']}")
    if job.get("params", {}).get("from_scratch"):
        details.append("from scratch")
    return words + (f" ({'; '.join(details)})" if details else "")


def slice_changes(before: Workspace, after: Workspace, threshold: float = 0.05) -> pd.DataFrame:
    """Per slice of the line's root: accuracy before and after, and whether it improved or regressed.

    Both versions must be evaluated (their metrics.json holds per-slice accuracy).
    """
    old, new = read_metrics(before) or {}, read_metrics(after) or {}
    old_acc, new_acc = old.get("slice_acc", {}), new.get("slice_acc", {})
    frame = pd.DataFrame({"slice": [int(s) for s in old_acc], "before": list(old_acc.values())})
    frame["after"] = frame["slice"].astype(str).map(new_acc)
    frame = frame[frame["slice"] >= 0].dropna()
    frame["change"] = frame["after"] - frame["before"]
    frame["verdict"] = np.select([frame["change"] >= threshold, frame["change"] <= -threshold], ["improved", "regressed"], "unchanged")
    return frame.sort_values("change").reset_index(drop=True)
