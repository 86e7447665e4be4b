"""Do the Compare page's Mosaic and Trace views stay readable and quick with 10 classes and many images?

    python -m benchmarks.compare_views [--demo DIR] [--sizes 2000,100000] [--clicks 10] [--workdir DIR]

Per size: a synthetic 10-class workspace in the real format (``benchmarks.page_speed``'s:
random features and maps, tiny real PNG files, no model) is version A; a copy
whose predictions differ on a quarter of the images (half of those fixed, half
broken) is version B. The analyst app is driven headless with ``AppTest`` on
the Compare page: the first render, then clicks timed one ``AppTest.run()``
each (the whole page script, every figure serialised), in turn: picking a
Mosaic View cell, a Trace View band, and clearing the selection (what the
charts' callbacks write). The Slices page's click target (300 ms median, issue
4's) is the yardstick. The app's home points at the full demo (``--demo``, built
there if missing, as ``benchmarks.page_speed`` does), so nothing is built behind the clicks.

Against the obvious alternative, a Trace View that draws every image as its
own line at any size: the figure's JSON size and the time to build and
serialise it, ours (bands above ``TRACE_MAX_LINES`` images) beside it.

The last line reads ``classes=10 images=<n> click_median_ms=<x> trace_json_kb=<y> naive_trace_json_kb=<z>`` for the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from app.compare_figures import trace_figure
from benchmarks.page_speed import CLASSES, MAIN_SCRIPT, home_with_demo, quiet_streamlit, write_synthetic_workspace
from core.compare import confusion_mosaic, trace_steps, version_outcomes
from core.demo import build_demo, default_demo_dir
from core.progress import tqdm_progress
from core.workspace import Workspace, save_table

CHANGED_SHARE = 0.25
APP_TIMEOUT_S = 600


def write_version_b(workspace_a: Path, target: Path, seed: int = 1) -> Path:
    """A copy of ``workspace_a`` whose predictions differ on ``CHANGED_SHARE`` of the images: half of those fixed, half broken."""
    if (target / "images.parquet").exists():
        return target
    shutil.copytree(workspace_a, target)
    table = pd.read_parquet(target / "images.parquet")
    rng = np.random.default_rng(seed)
    changed = rng.random(len(table)) < CHANGED_SHARE
    wrong, right = changed & ~table["correct"].to_numpy(), changed & table["correct"].to_numpy()
    prediction = table["prediction_index"].to_numpy().copy()
    prediction[wrong] = table["label_index"].to_numpy()[wrong]
    prediction[right] = (table["label_index"].to_numpy()[right] + rng.integers(1, len(CLASSES), right.sum())) % len(CLASSES)
    table["prediction_index"] = prediction
    table["prediction"] = [CLASSES[i] for i in prediction]
    table["correct"] = prediction == table["label_index"].to_numpy()
    save_table(target / "images.parquet", table)
    manifest = (target / "workspace.toml").read_text().replace('name = "synthetic', 'name = "synthetic B', 1)
    (target / "workspace.toml").write_text(manifest)
    return target


def time_run(app: AppTest) -> float:
    started = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - started
    if app.exception:
        raise RuntimeError("the page raised: " + "\n".join(str(error.value) for error in app.exception))
    return elapsed


def page_clicks(path_a: Path, path_b: Path, clicks: int) -> dict:
    """Open the Compare page on A and B and time the mosaic, trace and clear clicks."""
    quiet_streamlit()
    os.environ["SLICESCOPE_WORKSPACES"] = str(path_a.parent)  # the folder holding both versions
    app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=APP_TIMEOUT_S)
    app.query_params["workspace"] = str(path_a.resolve())
    time_run(app)
    app.switch_page(str(MAIN_SCRIPT.parent.parent / "pages" / "compare.py"))
    first_render = time_run(app)
    if len(app.get("plotly_chart")) < 2:
        raise RuntimeError("the Compare page did not draw its Mosaic and Trace views: " + " ".join(str(info.value) for info in app.info))
    outcomes = version_outcomes([Workspace(path_a), Workspace(path_b)])
    cells = confusion_mosaic(outcomes)
    off_diagonal = cells[~cells["correct"]].sort_values("count_a", ascending=False)["cell"].tolist()
    ids = outcomes.images["image_id"].to_numpy()
    timings: dict[str, list[float]] = {"mosaic cell": [], "trace band": [], "clear": []}
    for turn in range(clicks):
        cell = off_diagonal[turn % len(off_diagonal)]
        label, prediction = cells.loc[cells["cell"] == cell, ["label", "prediction"]].iloc[0]
        members = (outcomes.images["label"] == label) & ((outcomes.predictions[:, 0] == prediction) | (outcomes.predictions[:, 1] == prediction))
        app.session_state["compare_cells"], app.session_state["compare_cell_ids"] = [int(cell)], ids[members.to_numpy()].tolist()
        timings["mosaic cell"].append(time_run(app))
        broken = ~outcomes.correct[:, 1] & outcomes.correct[:, 0]
        app.session_state["compare_trace_ids"] = ids[broken & members.to_numpy()].tolist()
        app.session_state["compare_trace_source"] = "correct → incorrect"
        timings["trace band"].append(time_run(app))
        for key in ("compare_cells", "compare_cell_ids", "compare_trace_ids"):
            app.session_state[key] = []
        timings["clear"].append(time_run(app))
    every = [seconds for values in timings.values() for seconds in values]
    return {"first_render_s": first_render, "click_median_ms": statistics.median(every) * 1000,
            **{f"{kind}_ms": statistics.median(values) * 1000 for kind, values in timings.items()},
            "mosaic_cells": len(cells)}


def trace_sizes(path_a: Path, path_b: Path) -> dict:
    """Ours against one line per image for every image: JSON kB and seconds to build and serialise."""
    outcomes = version_outcomes([Workspace(path_a), Workspace(path_b)])
    images = np.arange(len(outcomes.images))
    steps = trace_steps(outcomes, images)
    result = {}
    for name, max_lines in (("ours", None), ("naive", len(images))):
        started = time.perf_counter()
        figure = trace_figure(outcomes, images, steps) if max_lines is None else trace_figure(outcomes, images, steps, max_lines=max_lines)
        size = len(json.dumps(figure.to_plotly_json(), default=str))
        result[f"{name}_trace_s"] = time.perf_counter() - started
        result[f"{name}_trace_json_kb"] = size / 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir(), help="the full demo's folder (built there if missing)")
    parser.add_argument("--sizes", default="2000,100000", help="images per synthetic workspace, comma-separated")
    parser.add_argument("--clicks", type=int, default=10, help="rounds of (mosaic cell, trace band, clear) per size")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic workspaces go (kept and reused); default: a temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slicescope-compare-views-"))
    build_demo(args.demo, progress=tqdm_progress())
    rows = []
    with home_with_demo(args.demo) as home:
        os.environ["SLICESCOPE_HOME"] = str(home)
        for size in [int(part) for part in args.sizes.split(",")]:
            folder = workdir / f"compare-{size}"
            path_a, _ = write_synthetic_workspace(folder, size)
            path_b = write_version_b(path_a, folder / "workspace-b")
            row = {"images": size, "classes": len(CLASSES), **page_clicks(path_a, path_b, args.clicks), **trace_sizes(path_a, path_b)}
            rows.append(row)
            print(json.dumps(row, indent=1))
    print(pd.DataFrame(rows).round(2).to_string(index=False))
    last = rows[-1]
    print(f"classes={last['classes']} images={last['images']} click_median_ms={last['click_median_ms']:.0f} "
          f"trace_json_kb={last['ours_trace_json_kb']:.0f} naive_trace_json_kb={last['naive_trace_json_kb']:.0f}")


if __name__ == "__main__":
    main()
