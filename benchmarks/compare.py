"""Model comparison (IMACS): does comparing the demo's biased and balanced models surface the planted shortcuts, and what does it cost?

    python -m benchmarks.compare [--demo DIR] [--segments grid|slic] [--k 8] [--per-model 100] [--n-samples 10] [--timing-images 200] [--timing-samples 2]

DIR is a full demo (default: the app's demo folder; ``build_demo`` builds or
resumes it). Its two workspaces are copied into a temporary folder first (scan
files only), so every run starts cold and the demo's own caches stay as they were.

1. For class circle (shortcut: water background) and class triangle (shortcut:
   the corner watermark), biased (A, DIR/workspace) is compared with balanced
   (B, DIR/workspace-balanced) by ``core.compare.compare_versions``. Each
   segment gets its ground truth from the demo's metadata: the shares of its
   box covered by the object (the mask at DIR/data/<mask_path>), by the stamp
   (``STAMP_BOX``, on images with a watermark) and by the background (the
   rest); the largest names it (object, stamp, or the background's kind: water,
   grass, sand, rock). Per cluster: sizes, mean attributions, disparity, its
   rank by |disparity| (1 = largest) and the share of each kind among its
   segments. The water cluster (circle) and the stamp cluster (triangle) are
   the clusters with the largest share of that kind; their rank and whether
   the biased model attributes them more are printed. --segments: a 4 × 4
   grid (default) or SLIC superpixels (about 16 per image).
2. Shapley values over the segments (as --segments says) of --timing-images held-out images
   for both models, three ways: four coalitions per model call (64 images per
   call), a whole permutation's 16 coalitions per call (perturbations_per_eval
   = 16) and one coalition per call (perturbations_per_eval = 1, the default at
   16 images per captum call), the same images per captum call; --timing-samples
   permutations (the ratio does not depend on how many).

The last line is ``circle_water_rank=<r> triangle_stamp_rank=<r> seconds=<s>``
(s: both comparisons, wall clock).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.compare import (
    BASELINES,
    SEGMENTATIONS,
    CompareParams,
    SegmentParams,
    ShapleyParams,
    class_score,
    cluster_summary,
    compare_versions,
    estimate_seconds,
    segment_id_count,
    segment_images,
    shapley_values,
)
from core.demo import build_demo, default_demo_dir, workspace_dir
from core.demo.dataset import STAMP_BOX
from core.extract import load_workspace_model
from core.mitigation.robustness import load_pixels, read_object_mask
from core.workspace import SCAN_OUTPUTS, Workspace

KINDS = ("object", "stamp", "water", "grass", "sand", "rock")
SHORTCUTS = {"circle": "water", "triangle": "stamp"}


def cold_copy(source: Path, target: Path) -> Workspace:
    """The workspace's scan files only: no derived results, annotations or augmentations."""
    target.mkdir(parents=True)
    for name in SCAN_OUTPUTS:
        if name != "derived" and (source / name).exists():
            (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, target / name)
    return Workspace(target)


def segment_kinds(workspace: Workspace, segments: pd.DataFrame) -> pd.Series:
    """Each segment's ground truth: what covers most of its box (object, stamp, or the background's kind)."""
    size = int(workspace.manifest["transforms"]["image_size"])
    images = workspace.images.set_index("image_id")
    masks = {image: read_object_mask(workspace.image_path(images.at[image, "mask_path"]), size) for image in segments["image_id"].unique()}
    sx0, sy0, sx1, sy1 = STAMP_BOX
    kinds = []
    for row in segments.itertuples(index=False):
        area = (row.x1 - row.x0) * (row.y1 - row.y0)
        object_share = float(masks[row.image_id][row.y0:row.y1, row.x0:row.x1].mean())
        stamped = str(images.at[row.image_id, "watermark"]).lower() == "true"
        overlap = max(0, min(row.x1, sx1) - max(row.x0, sx0)) * max(0, min(row.y1, sy1) - max(row.y0, sy0))
        stamp_share = overlap / area if stamped else 0.0
        shares = {"object": object_share, "stamp": stamp_share, images.at[row.image_id, "background"]: 1 - object_share - stamp_share}
        kinds.append(max(shares, key=shares.get))
    return pd.Series(kinds, index=segments.index)


def cluster_table(result, kinds: pd.Series) -> pd.DataFrame:
    shares = pd.crosstab(result.segments["cluster"], kinds, normalize="index").reindex(columns=list(KINDS), fill_value=0.0)
    table = result.clusters.assign(rank=np.arange(1, len(result.clusters) + 1)).set_index("cluster")
    return table.join(shares.add_suffix(" %").mul(100).round(0).astype(int)).reset_index()


def shortcut_cluster(table: pd.DataFrame, kinds: pd.Series, clusters: pd.Series, kind: str) -> pd.Series:
    """The cluster that stands for ``kind``: of those mostly made of it, the one holding most of its segments (else the purest)."""
    counts = kinds[kinds == kind].groupby(clusters).size().reindex(table["cluster"], fill_value=0).to_numpy()
    candidates = table.assign(count=counts)
    mostly = candidates[candidates[f"{kind} %"] >= 50]
    return (mostly.sort_values("count", ascending=False) if len(mostly) else candidates.sort_values(f"{kind} %", ascending=False)).iloc[0]


def compare_class(a: Workspace, b: Workspace, class_name: str, params: CompareParams) -> tuple[dict, float]:
    estimate = estimate_seconds(a, b, class_name, params)
    started = time.perf_counter()
    result = compare_versions(a, b, class_name, params)
    seconds = time.perf_counter() - started
    kinds = segment_kinds(a, result.segments)
    table = cluster_table(result, kinds)
    kind = SHORTCUTS[class_name]
    shortcut = shortcut_cluster(table, kinds, result.segments["cluster"], kind)
    print(f"\n## {class_name}: biased (A) vs balanced (B), {seconds:.0f} s (estimated {estimate:.0f} s)\n")
    for message in result.sample.messages:
        print(f"note: {message}")
    columns = ["rank", "cluster", "size_A", "size_B", "images_A", "images_B", "mean_A", "mean_B", "disparity", *[f"{name} %" for name in KINDS]]
    print(table[columns].to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    more = "biased" if shortcut["mean_A"] > shortcut["mean_B"] else "balanced"
    print(f"\n{kind} cluster: {int(shortcut['cluster'])} ({int(shortcut['count'])} {kind} segments, {shortcut[f'{kind} %']:.0f}% of the cluster), rank {int(shortcut['rank'])} of {len(table)} "
          f"by |disparity|; the {more} model attributes it more (mean {shortcut['mean_A']:.4f} vs {shortcut['mean_B']:.4f})")
    other = "segment" if params.cluster_mean == "image" else "image"
    ranked = cluster_summary(result.segments, params.k, other)
    place = ranked.index[ranked["cluster"] == shortcut["cluster"]][0]
    print(f"with means per {other} instead: rank {place + 1} (mean {ranked.at[place, 'mean_A']:.4f} vs {ranked.at[place, 'mean_B']:.4f})")
    return {"rank": int(shortcut["rank"]), "biased_more": more == "biased"}, seconds


def time_batching(workspaces: list[Workspace], n_images: int, n_samples: int, segmentation: SegmentParams) -> None:
    """Seconds of Shapley values for both models with 4 coalitions per model call, a whole permutation per call, and one coalition per call."""
    timings = {}
    variants = (("batched, 64 images per model call (perturbations_per_eval=4)", 4), ("a whole permutation per call (perturbations_per_eval=16)", 16),
                ("one at a time, the default on CPU (perturbations_per_eval=1)", 1))
    for label, per_eval in variants:
        params = ShapleyParams(n_samples=n_samples, perturbations_per_eval=per_eval)
        seconds = 0.0
        for workspace in workspaces:
            model = load_workspace_model(workspace)
            size = int(workspace.manifest["transforms"]["image_size"])
            rows = np.arange(min(n_images, len(workspace.images)))
            pixels = load_pixels(workspace, rows, size)
            masks = segment_images(len(rows), size, segmentation, pixels)
            n_ids = segment_id_count(masks, segmentation)
            score = class_score(model.module.eval(), workspace.classes.index("circle"), workspace.manifest["transforms"]["normalize"], "logit")
            started = time.perf_counter()
            shapley_values(score, pixels, torch.from_numpy(masks), torch.arange(n_ids).expand(len(rows), n_ids), params)
            seconds += time.perf_counter() - started
        timings[label] = seconds
    print(f"\n## Shapley values: {segmentation.method} segments of {n_images} images × 2 models, {n_samples} permutations, 16 images per captum call\n")
    for label, seconds in timings.items():
        print(f"{label}: {seconds:.1f} s")
    batched, whole, single = timings.values()
    print(f"one at a time / batched: {single / batched:.2f}× (one at a time / a whole permutation per call: {single / whole:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir(), help="a full demo folder (built or resumed first)")
    parser.add_argument("--segments", choices=SEGMENTATIONS, default=SegmentParams().method, help="how images are cut (SLIC: about 16 superpixels)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--per-model", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=10, help="Shapley permutations per image in the comparisons")
    parser.add_argument("--baseline", choices=BASELINES, default=ShapleyParams().baseline, help="what an excluded segment shows")
    parser.add_argument("--blur-sigma", type=float, default=ShapleyParams().blur_sigma, help="the blur baseline's sigma, as a share of the image side")
    parser.add_argument("--timing-images", type=int, default=200)
    parser.add_argument("--timing-samples", type=int, default=2)
    args = parser.parse_args()
    build_demo(args.demo)
    shapley = replace(ShapleyParams(), n_samples=args.n_samples, baseline=args.baseline, blur_sigma=args.blur_sigma)
    params = CompareParams(per_model=args.per_model, k=args.k, segments=SegmentParams(method=args.segments), shapley=shapley)
    print(f"demo {args.demo}; {params}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="slicescope-compare-") as folder:
        biased = cold_copy(workspace_dir(args.demo, "biased"), Path(folder) / "workspace")
        balanced = cold_copy(workspace_dir(args.demo, "balanced"), Path(folder) / "workspace-balanced")
        found, total = {}, 0.0
        for class_name in SHORTCUTS:
            found[class_name], seconds = compare_class(biased, balanced, class_name, params)
            total += seconds
        time_batching([biased, balanced], args.timing_images, args.timing_samples, params.segments)
    print(f"\ncircle_water_rank={found['circle']['rank']} triangle_stamp_rank={found['triangle']['rank']} seconds={total:.0f}")


if __name__ == "__main__":
    main()
