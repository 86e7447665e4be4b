"""Do the demo's injected problems surface among the lowest-accuracy slices?

    python -m benchmarks.slice_quality [--demo DIR] [--k 50] [--worst 10]

Builds the full demo if DIR has none (default: the app's demo folder). For the
attribution space (F_W) and the plain feature space (F), it slices the biased
model's held-out scan with K-Means and looks at the ``--worst`` slices by
accuracy: a slice is *pure* when at least 80% of its images come from one
injected problem group (the demo's ground truth, never shown to the slicer).
The last line reads ``pure_attribution=<x> pure_features=<y>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from core.demo import build_demo, default_demo_dir, workspace_dir
from core.progress import tqdm_progress
from core.slicing import SliceParams, find_slices, slice_table
from core.workspace import Workspace

PURITY = 0.8


def worst_slices(workspace: Workspace, representation: str, k: int, worst: int) -> pd.DataFrame:
    """The ``worst`` lowest-accuracy slices with their dominant ground-truth group."""
    slice_ids = find_slices(workspace, representation, SliceParams(k=k))
    table = slice_table(workspace.images, slice_ids)
    groups = pd.DataFrame({"slice": slice_ids, "group": workspace.images["group"].to_numpy()})
    shares = groups.groupby("slice")["group"].value_counts(normalize=True).rename("share").reset_index()
    problems = shares[shares["group"] != "none"].sort_values("share", ascending=False).drop_duplicates("slice")
    table = table.merge(problems.rename(columns={"group": "top_problem", "share": "problem_share"}), on="slice", how="left")
    table["problem_share"] = table["problem_share"].fillna(0.0)
    table["top_problem"] = table["top_problem"].fillna("-")
    return table.nsmallest(worst, "accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir())
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--worst", type=int, default=10)
    args = parser.parse_args()

    started = time.perf_counter()
    result = build_demo(args.demo, progress=tqdm_progress())
    print(f"demo ready in {time.perf_counter() - started:.0f} s at {args.demo}")
    print(result.summary())
    workspace = Workspace(workspace_dir(args.demo, "biased"))
    pure = {}
    for representation in ("attribution", "features"):
        worst = worst_slices(workspace, representation, args.k, args.worst)
        pure[representation] = float((worst["problem_share"] >= PURITY).mean())
        found = sorted(set(worst.loc[worst["problem_share"] >= PURITY, "top_problem"]))
        print(f"\n{representation}: {args.worst} lowest-accuracy of {args.k} slices "
              f"({pure[representation]:.0%} pure; problems found: {', '.join(found) or 'none'})")
        print(worst[["slice", "size", "accuracy", "dominant_label", "dominant_prediction", "top_problem", "problem_share"]]
              .to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"pure_attribution={pure['attribution']:.2f} pure_features={pure['features']:.2f}")


if __name__ == "__main__":
    main()
