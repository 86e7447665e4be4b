"""Blindspot discovery on SpotCheck-style data (issue 15): DR, FDR and P@10 of every registered method.

    python -m benchmarks.discovery [--configs 5] [--seeds 0] [--work DIR] [--image-size 64] [--model cnn|resnet18]

A run is one configuration (configuration c plants 1 + c mod 3 blindspots) under
one seed. For each run the data is drawn, a CNN trained from scratch and the test
split scanned into a workspace (:mod:`benchmarks.spotcheck`); each of these steps
is reused from ``--work`` when it is already there with the same inputs. Then
every method of :data:`benchmarks.spotcheck.METHODS` slices the workspace and
is scored against the planted blindspots: discovery rate, false discovery rate
and precision-at-10 as defined in :mod:`benchmarks.spotcheck`, the share of the
discovered blindspots the Slice Table names right from the images' feature columns
(:func:`benchmarks.spotcheck.naming_rate`), and its seconds.

Prints each run's model accuracy (overall, outside the blindspots, on each) and
scores, then per method the mean ± standard deviation over the runs. The last
line reads ``default_method=<name> default_dr=<x> default_fdr=<y>``, the means
of :data:`benchmarks.spotcheck.DEFAULT_METHOD`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from benchmarks.spotcheck import (
    ARCHITECTURES,
    DEFAULT_METHOD,
    EPOCHS,
    METHODS,
    SpotCheckConfig,
    evaluate,
    generate,
    generated_metadata,
    model_accuracy,
    scan_test_split,
    train_model,
)
from core.demo import default_demo_dir, workspace_dir
from core.training import attach_training_data, training_data
from core.workspace import Workspace


def run_seed(configuration: int, seed: int) -> int:
    """The seed of the data and the training of one run: distinct for every (configuration, seed)."""
    return 1000 * seed + configuration


def prepare_run(run_dir: Path, config: SpotCheckConfig, seed: int, architecture: str = "cnn") -> tuple[Workspace, dict[str, float]]:
    """Data, model and workspace of one run, each made only when missing or made from other inputs; seconds per step.

    A step that is redone invalidates the later ones: new data means a new model,
    and the scan notices a changed dataset or checkpoint by itself.
    """
    seconds: dict[str, float] = {}
    data_dir, model_dir = run_dir / "data", run_dir / "model"
    recorded = generated_metadata(data_dir)
    fresh_data = recorded is None or recorded["config"] != asdict(config) or recorded["seed"] != seed
    if fresh_data:
        shutil.rmtree(data_dir, ignore_errors=True)
        started = time.perf_counter()
        generate(config, data_dir, seed)
        seconds["generate"] = time.perf_counter() - started
    manifest, checkpoint = data_dir / "manifest.csv", model_dir / "model.pt"
    training = model_dir / "training.json"
    trained = json.loads(training.read_text()) if training.is_file() else {}
    if fresh_data or not checkpoint.is_file() or (trained.get("epochs"), trained.get("architecture", "cnn")) != (EPOCHS, architecture):
        started = time.perf_counter()
        train_model(manifest, model_dir, seed, architecture=architecture)
        seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    workspace = scan_test_split(manifest, checkpoint, run_dir / "workspace", config.image_size, architecture)
    seconds["scan"] = time.perf_counter() - started
    if training_data(workspace) is None:  # influence embeddings need the images the model was trained on
        attach_training_data(workspace, manifest, "train")
    return workspace, seconds


def describe_run(name: str, workspace: Workspace, seconds: dict[str, float]) -> str:
    accuracy = model_accuracy(workspace)
    sizes = workspace.images["blindspot"].value_counts()
    steps = ", ".join(f"{step} {value:.1f} s" for step, value in seconds.items())
    lines = [f"## {name} ({steps}; generation and training are reused when not listed, a reused scan takes < 1 s)",
             f"test accuracy {accuracy.pop('overall'):.3f} overall, {accuracy.pop('outside blindspots'):.3f} outside the blindspots"]
    lines += [f"- blindspot {blindspot}: {sizes[blindspot]} test images, accuracy {value:.2f}" for blindspot, value in accuracy.items()]
    return "\n".join(lines)


def spread(values: pd.Series) -> str:
    """``mean ± std`` over the runs (NaN, a P@10 with nothing flagged, left out)."""
    present = values.dropna()
    if present.empty:
        return "–"
    return f"{present.mean():.2f} ± {present.std(ddof=0):.2f}"


def summary_table(results: pd.DataFrame) -> str:
    """One Markdown row per method: DR, FDR and P@10 as mean ± std over runs, slices flagged and seconds (means)."""
    lines = ["| method | representation | DR | FDR | P@10 | named | flagged | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in results.groupby("method", sort=False):
        lines.append(f"| {name} | {METHODS[name].representation or '–'} | {spread(rows['dr'])} | {spread(rows['fdr'])} | "
                     f"{spread(rows['p_at_10'])} | {spread(rows['named'])} | {rows['n_flagged'].mean():.1f} | {rows['seconds'].mean():.2f} |")
    return "\n".join(lines)


def demo_rows(demo: Path) -> list[dict]:
    """Every registered method on the built demo's biased scan, scored against its failure modes
    (:func:`benchmarks.influence.failure_mode_targets`: an injected group's misclassified images of one label → prediction pair)."""
    from benchmarks.influence import failure_mode_targets

    workspace = Workspace(workspace_dir(demo, "biased"))
    targets, modes = failure_mode_targets(workspace.images)
    print(f"## the demo's failure modes ({len(workspace.images)} images, {len(modes)} modes of ≥ 25 images)")
    rows = []
    for method_name, method in METHODS.items():
        result = evaluate(workspace, method, targets)
        rows.append({"run": "demo", "method": method_name, **result})
        print(f"- {method_name}: DR {result['dr']:.2f}, FDR {result['fdr']:.2f}, P@10 {result['p_at_10']:.2f}, "
              f"{result['n_flagged']} flagged, {result['seconds']:.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=5, help="configurations per seed (configuration c plants 1 + c mod 3 blindspots)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/slicescope-spotcheck"), help="where runs are made and reused")
    parser.add_argument("--image-size", type=int, default=64, help="side of the drawn images; 32 trains about 3× faster")
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="cnn",
                        help="the network trained per run: the demo's CNN (default, ~40 s per run) or torchvision's ResNet-18 (~6 min per run)")
    parser.add_argument("--demo", type=Path, default=default_demo_dir(),
                        help="a built demo (python -m core demo --out DIR) whose failure modes are scored too; skipped when it is not built "
                        "(default: the app's demo folder)")
    args = parser.parse_args()
    if DEFAULT_METHOD not in METHODS:
        parser.error(f"DEFAULT_METHOD {DEFAULT_METHOD!r} is not a registered method ({', '.join(METHODS)})")
    started = time.perf_counter()

    rows = []
    for seed in args.seeds:
        for configuration in range(args.configs):
            config = SpotCheckConfig(n_blindspots=1 + configuration % 3, image_size=args.image_size)
            name = f"configuration {configuration}, seed {seed}"
            suite = f"px{args.image_size}" if args.model == "cnn" else f"px{args.image_size}-{args.model}"
            run_dir = args.work / suite / f"config{configuration}-seed{seed}"
            workspace, seconds = prepare_run(run_dir, config, run_seed(configuration, seed), args.model)
            print(describe_run(name, workspace, seconds), flush=True)
            for method_name, method in METHODS.items():
                result = evaluate(workspace, method)
                rows.append({"run": name, "method": method_name, **result})
                print(f"- {method_name}: DR {result['dr']:.2f}, FDR {result['fdr']:.2f}, P@10 {result['p_at_10']:.2f}, "
                      f"named {result['named']:.2f}, {result['n_flagged']} flagged, {result['seconds']:.2f} s", flush=True)
            print()

    results = pd.DataFrame(rows)
    print(f"# Blindspot discovery over {results['run'].nunique()} runs ({args.image_size}-px images, {args.model})\n")
    print(summary_table(results))
    if (args.demo / "workspace" / "workspace.toml").is_file():
        print()
        demo = pd.DataFrame(demo_rows(args.demo))
        print("\n# The demo's failure modes\n")
        print(summary_table(demo))
    else:
        print(f"\n(no built demo at {args.demo}: build one with python -m core demo --out DIR and pass --demo DIR to score its failure modes)")
    means = results.groupby("method", sort=False)[["dr", "fdr"]].mean()
    best = (means["dr"] - means["fdr"]).idxmax()
    print(f"\nbest by mean DR − FDR: {best} (DR {means.loc[best, 'dr']:.2f}, FDR {means.loc[best, 'fdr']:.2f})")
    print(f"benchmark ran in {time.perf_counter() - started:.0f} s")
    default = means.loc[DEFAULT_METHOD]
    print(f"default_method={DEFAULT_METHOD} default_dr={default['dr']:.2f} default_fdr={default['fdr']:.2f}")


if __name__ == "__main__":
    main()
