"""Mitigation on the demo: CoRM, counterfactual augmentation, slice-balanced and last-layer retraining, against references.

    python -m benchmarks.mitigation [--demo DIR] [--waterbirds-demo DIR | --no-waterbirds] [--out DIR] [--epochs N]

``--demo DIR`` runs on a demo built (or resumed) there with the "full" preset;
``--waterbirds-demo DIR`` does the same for the Waterbirds-like variant (preset
"waterbirds": larger objects, 5% of the other shapes on water). Both tables are
printed; the last line sums up the first (the demo).

The analyst is simulated with what a user has: the Slice Table of the app's
default slicing. They annotate as spurious at most five slices whose images
all share one look and one prediction — the kind of slice whose description
reads "background = water (95% of the slice)" and whose mosaic tile shows water:
one cue value (water background, red colour, a watermark) in ≥ 90% of the
slice, one prediction in ≥ 90%, at least 20 images. They read the Slice Table
from the top, problem slices first: for each cue the first such slice (problem
slices before the others, larger before smaller), then the next ones. Nothing else about the ground truth
reaches a non-diagnostic row: the counterfactuals' objects are cut out by
GrabCut on the boundary prior, never by the demo's masks.

Rows (Annotation: the annotated slices; Propagation: every slice whose
propagated spuriousness reaches the threshold):

* Baseline: the biased model (ERM).
* CoRM (Annotation / Propagation): today's CoRM, fine-tuned from the baseline.
* Augmentation (Annotation / Propagation): two batches per annotated slice,
  made as an analyst makes them on the Augment page: the slice's training
  images onto the rest of the training set's backgrounds and colours ("circles
  onto land"), and the rest's images onto the slice's ("squares onto water"),
  at most 1,000 images each; for Propagation, each annotated slice brings the
  propagated slices nearest to it. Retrained from scratch with the batches and
  group-balanced sampling over (label, slice).
* Slice-balanced: group-balanced sampling over (label, slice), from scratch, no annotation needed.
* Last layer: DFR, the last layer refitted on the baseline's frozen features with slice-balanced sampling.
* Last layer + augmentation: the same, on the original and the Propagation batches' images.
* References: group-balanced training with the demo's true groups (upper bound, uses
  ground truth) and the balanced model (trained on data without the shortcuts).

Every model is evaluated on the held-out images against the true class, per
ground-truth group, with RCS (core = the ground-truth object) at the same
seeded noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core.demo import build_demo, default_demo_dir
from core.mitigation import (
    DEFAULT_SIGMA,
    DEFAULT_THRESHOLD,
    AugmentParams,
    ImageGroup,
    MitigationJob,
    TrainingParams,
    accept_batch,
    choose_regions,
    choose_treated_slices,
    evaluate,
    load_training_view,
    make_batch,
    run_mitigation,
    slice_centroids,
    slice_spuriousness,
)
from core.progress import tqdm_progress
from core.slicing import DEFAULT_REPRESENTATION, default_slice_params, find_slices, slice_table, slicing_name
from core.training import default_training_data
from core.workspace import Workspace

CUES = {"background": "water", "colour": "red", "watermark": "true"}
_ANALYST = {"cue": 0.9, "prediction": 0.9, "min_size": 20, "count": 5}
BATCH_IMAGES = 1000


def analyst_slices(images: pd.DataFrame, slice_ids: np.ndarray) -> list[int]:
    """The simulated analyst's spurious slices (see the module's docstring)."""
    frame = images.assign(slice=slice_ids)
    sizes = frame.groupby("slice").size()
    prediction_share = frame.groupby("slice")["prediction"].agg(lambda v: v.value_counts(normalize=True).iloc[0])
    flagged = slice_table(images, slice_ids).set_index("slice")["flagged"].reindex(sizes.index, fill_value=False)
    candidates: list[list[int]] = []
    for column, value in CUES.items():
        share = frame[column].astype(str).str.lower().eq(value).groupby(frame["slice"]).mean()
        ok = (share >= _ANALYST["cue"]) & (prediction_share >= _ANALYST["prediction"]) & (sizes >= _ANALYST["min_size"])
        # the Slice Table lists problem slices first, and an analyst reads it from the top
        candidates.append(sorted(sizes[ok].index, key=lambda s: (not flagged[s], -sizes[s])))
    chosen: list[int] = []
    for cue_candidates in candidates:
        first = next((s for s in cue_candidates if s not in chosen), None)
        if first is not None:
            chosen.append(first)
    rest = sorted({s for c in candidates for s in c} - set(chosen), key=lambda s: (not flagged[s], -sizes[s]))
    return [int(s) for s in (chosen + rest)[: _ANALYST["count"]]]


@dataclass
class Row:
    name: str
    workspace: Workspace
    seconds: float
    analyst_driven: bool = True


def make_batches(baseline: Workspace, view, groups: list[list[int]], tag: str, progress) -> list[str]:
    """The two batches an analyst makes for each group of spurious slices, accepted: its images onto the rest's look, the rest onto its look."""
    made = []
    for slices in groups:
        group = ImageGroup("slice", tuple(slices))
        for sources, style in ((group, ImageGroup("rest")), (ImageGroup("rest"), group)):
            record = make_batch(baseline, view, sources, style, AugmentParams(seed=len(made)), max_images=BATCH_IMAGES, progress=progress)
            accept_batch(baseline, record.batch_id)
            print(f"{tag}: {record.batch_id} {sources.describe()} → style of {style.describe()}: {record.images} images "
                  f"({', '.join(f'{k} {v}' for k, v in record.per_class.items())}), {record.left_out} left out")
            made.append(record.batch_id)
    return made


def propagated_groups(baseline: Workspace, slice_ids: np.ndarray, annotated: list[int], propagated: list[int]) -> list[list[int]]:
    """The propagated slices, each with the annotated slice whose centroid (mean F_W) is nearest: one group per annotation."""
    centroids = slice_centroids(baseline, slice_ids).numpy()
    nearest = {s: annotated[int(np.argmin(np.linalg.norm(centroids[annotated] - centroids[s], axis=1)))] for s in propagated}
    return [sorted({a} | {s for s, owner in nearest.items() if owner == a}) for a in annotated]


def run_dataset(demo_dir: Path, preset: str, out: Path, epochs: int | None, threshold: float) -> dict[str, object]:
    progress = tqdm_progress()
    demo = build_demo(demo_dir, preset=preset, progress=progress)
    baseline = Workspace(demo.workspace)
    shutil.rmtree(baseline.path / "augmentations", ignore_errors=True)  # each run makes its batches afresh
    params = default_slice_params(len(baseline.images))
    slice_ids = find_slices(baseline, DEFAULT_REPRESENTATION, params)
    slicing = slicing_name(DEFAULT_REPRESENTATION, params)
    annotated = analyst_slices(baseline.images, slice_ids)
    kinds = dict.fromkeys(annotated, "spurious")
    spuriousness = slice_spuriousness(np.asarray(baseline.array("attribution_features")), slice_ids, kinds)
    propagated = choose_treated_slices(kinds, spuriousness, "propagation", threshold)
    regions = choose_regions(baseline, slice_ids, kinds, int(baseline.manifest["transforms"]["image_size"]), "ground_truth")
    training = default_training_data(baseline)
    demo_epochs = int(json.loads((demo_dir / "demo.json").read_text())["config"]["epochs"])
    scratch = TrainingParams(epochs=epochs or demo_epochs, from_scratch=True)

    started = time.perf_counter()
    view = load_training_view(baseline, slice_ids, {}, training, progress)
    annotation_batches = make_batches(baseline, view, [[s] for s in annotated], "Annotation", progress)
    propagation_batches = make_batches(baseline, view, propagated_groups(baseline, slice_ids, annotated, propagated), "Propagation", progress)
    augment_seconds = (time.perf_counter() - started) / (len(annotation_batches) + len(propagation_batches))

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = [Row("Baseline (ERM)", baseline, 0.0)]

    def retrain(name: str, folder: str, methods: tuple[str, ...], treated=(), batches=(), training_params=scratch, group_column=None, analyst=True):
        job = MitigationJob(
            parent=baseline.path, out=out / folder, source="annotations", treated_slices=tuple(treated), slicing=slicing, relabels={},
            training=training, params=training_params, methods=methods, batches=tuple(batches), group_column=group_column,
        )
        began = time.perf_counter()
        rows.append(Row(name, run_mitigation(job, slice_ids, progress=progress), time.perf_counter() - began, analyst))

    corm = TrainingParams()
    retrain("CoRM (Annotation)", "corm-annotation", ("corm",), annotated, training_params=corm)
    retrain("CoRM (Propagation)", "corm-propagation", ("corm",), propagated, training_params=corm)
    retrain("Augmentation (Annotation)", "augment-annotation", ("augment", "reweight"), batches=annotation_batches)
    retrain("Augmentation (Propagation)", "augment-propagation", ("augment", "reweight"), batches=propagation_batches)
    retrain("Slice-balanced", "reweight", ("reweight",))
    retrain("Last layer (DFR on slices)", "last-layer", ("last_layer", "reweight"), training_params=TrainingParams(epochs=20, learning_rate=1e-2))
    retrain("Last layer + augmentation (Propagation)", "last-layer-augment", ("augment", "reweight", "last_layer"), batches=propagation_batches,
            training_params=TrainingParams(epochs=20, learning_rate=1e-2))
    retrain("Augmentation (Propagation) + CoRM", "augment-corm", ("corm", "augment", "reweight"), propagated, propagation_batches)
    retrain("reference: group-balanced on the true groups (uses ground truth)", "true-groups", ("reweight",), group_column="group", analyst=False)
    balanced = Path(demo.workspace).with_name("workspace-balanced")
    if balanced.is_dir():
        rows.append(Row("reference: balanced model (not a mitigation)", Workspace(balanced), 0.0, False))

    print(f"\n### {preset} demo ({demo_dir})\n")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; from-scratch rows: {scratch.epochs} epochs, learning rate {scratch.learning_rate:g}; "
          f"CoRM rows: {corm.epochs} epochs fine-tuned; slicing {slicing}; evaluation sigma {DEFAULT_SIGMA:g}")
    print(f"annotated spurious slices: {annotated}; propagation (≥ {threshold}) treats {propagated}; "
          f"making a batch of {BATCH_IMAGES:,} counterfactuals took {augment_seconds:.0f} s on average")
    results = {row.name: evaluate(row.workspace, regions, slice_ids) for row in rows}
    groups = sorted({g for metrics in results.values() for g in metrics.group_acc})
    print("\n| Training procedure | Clean acc | Worst-group acc | " + " | ".join(groups) + " | RCS | train + scan s |")
    print("|---|---|---|" + "---|" * len(groups) + "---|---|")
    for row in rows:
        metrics = results[row.name]
        per_group = " | ".join(f"{metrics.group_acc.get(g, float('nan')):.1%}" for g in groups)
        print(f"| {row.name} | {metrics.clean_acc:.2%} | {metrics.worst_group_acc:.2%} ({metrics.worst_group}) | {per_group} | "
              f"{metrics.rcs:.3f} | {row.seconds:.0f} |")
    seconds = {row.name: row.seconds for row in rows}
    refit, full = seconds["Last layer (DFR on slices)"], seconds["Slice-balanced"]
    print(f"cost: a last-layer refit (+ scan) {refit:.0f} s against full slice-balanced retraining (+ scan) {full:.0f} s: ratio {refit / full:.2f}")
    baseline_metrics = results["Baseline (ERM)"]
    candidates = [row for row in rows if row.analyst_driven and row.name != "Baseline (ERM)"]
    best = max(candidates, key=lambda row: (results[row.name].worst_group_acc, results[row.name].clean_acc))
    for method in ("CoRM", "Augmentation"):
        annotation, propagation = results[f"{method} (Annotation)"].worst_group_acc, results[f"{method} (Propagation)"].worst_group_acc
        print(f"{method}: worst group Propagation {propagation:.1%} ≥ Annotation {annotation:.1%} ≥ Baseline {baseline_metrics.worst_group_acc:.1%}: "
              f"{propagation >= annotation >= baseline_metrics.worst_group_acc}")
    return {"baseline": baseline_metrics, "best": results[best.name], "best_method": best.name}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Runs on a given demo directory with --demo DIR (built there first if missing).")
    parser.add_argument("--demo", type=Path, default=default_demo_dir(), help="the full demo's folder (built or resumed there)")
    parser.add_argument("--waterbirds-demo", type=Path, default=default_demo_dir().with_name("demo-waterbirds"),
                        help="the Waterbirds-like demo's folder (built or resumed there)")
    parser.add_argument("--no-waterbirds", action="store_true", help="run on the demo only")
    parser.add_argument("--out", type=Path, default=Path("/tmp/slicescope-mitigation-benchmark"))
    parser.add_argument("--epochs", type=int, help="epochs of the from-scratch rows (default: the demo's own training epochs)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    summary = run_dataset(args.demo, "full", args.out / "demo", args.epochs, args.threshold)
    if not args.no_waterbirds:
        run_dataset(args.waterbirds_demo, "waterbirds", args.out / "waterbirds", args.epochs, args.threshold)
    print(f"total run time {time.perf_counter() - began:.0f} s")
    base, best = summary["baseline"], summary["best"]
    print(f"baseline_worst_group={base.worst_group_acc:.4f} best_worst_group={best.worst_group_acc:.4f} "
          f"baseline_clean={base.clean_acc:.4f} best_clean={best.clean_acc:.4f} best_method={summary['best_method'].replace(' ', '_')}")


if __name__ == "__main__":
    main()
