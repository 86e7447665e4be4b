"""The post-extraction pipeline and the Slices page at 10,000 to 200,000 images (issue 20).

    python -m benchmarks.scale [--sizes 10000,100000,200000] [--workdir DIR]

Per size, a synthetic workspace in the real format is written by
``benchmarks.page_speed.write_synthetic_workspace`` (10 classes, 64-d features;
docs/BENCHMARKS.md, "Page speed and scale"). Then, each in a fresh process so
that its peak resident memory (``VmHWM``) is its own:

1. our pipeline with the app's defaults, from an empty ``derived/``: the layout
   (``core.slicing.project`` with ``ProjectionParams()``) and the slices
   (``find_slices`` with ``default_slice_params``), which are the results the
   Slices page opens on; above ``core.slicing.SCALED_PIPELINE_THRESHOLD``
   images both are fitted on a sample and applied to the rest;
2. the alternative, plain UMAP fitted on all points, stopped and reported as
   ``skipped`` after ``PLAIN_UMAP_LIMIT_S``;
3. the Slices page opened on the workspace and clicked
   (``benchmarks.page_speed.measure_page_in_fresh_process``): first render and
   the median of the slice picks with the in-memory caches on. Every point is
   drawn; nothing is aggregated.

The last line reads
``images=<n> pipeline_s=<x> click_median_ms=<y> peak_rss_mb=<z>`` for the last
size: our pipeline's seconds, the page's click median and the pipeline
process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.page_speed import (
    PAGE_REPRESENTATION,
    PROJECT_ROOT,
    SCALE_PICKS,
    home_with_demo,
    measure_page_in_fresh_process,
    peak_rss_mb,
    quiet_streamlit,
    slices_to_pick,
    write_synthetic_workspace,
)
from core.demo import QUICK_PRESET, build_demo, quick_demo_dir
from core.progress import tqdm_progress
from core.slicing import ProjectionParams, default_slice_params, find_slices, is_scaled, project, umap_reducer
from core.workspace import Workspace

DEFAULT_SIZES = "10000,100000,200000"
# The budget for the pipeline on a 2-core machine.
PIPELINE_TARGET_S = 300
# Plain UMAP is the alternative measured, not something to wait on for hours.
PLAIN_UMAP_LIMIT_S = 15 * 60


def our_pipeline(workspace_path: str) -> dict:
    """Lay out and slice the workspace as the Slices page opens it; run in a fresh process."""
    workspace = Workspace(workspace_path)
    progress = tqdm_progress()
    started = time.perf_counter()
    project(workspace, PAGE_REPRESENTATION, ProjectionParams(), progress)
    layout_s = time.perf_counter() - started
    find_slices(workspace, PAGE_REPRESENTATION, default_slice_params(len(workspace.images)), progress)
    return {"layout_s": layout_s, "pipeline_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def plain_umap(workspace_path: str) -> dict:
    """UMAP fitted on every image with the app's parameters, nothing cached; run in a fresh process."""
    vectors = np.asarray(Workspace(workspace_path).representation(PAGE_REPRESENTATION), dtype=np.float32)
    started = time.perf_counter()
    umap_reducer(ProjectionParams(), len(vectors)).fit_transform(vectors)
    return {"umap_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def in_fresh_process(function: str, workspace_path: Path, timeout_s: float | None = None) -> dict | None:
    """``function(workspace_path)`` of this module in a new interpreter; None if it ran past ``timeout_s``."""
    code = f"import json, sys; from benchmarks.scale import {function}; json.dump({function}(sys.argv[1]), open(sys.argv[2], 'w'))"
    with tempfile.TemporaryDirectory(prefix="slicescope-scale-") as scratch:
        result = Path(scratch) / "result.json"
        try:
            subprocess.run([sys.executable, "-c", code, str(workspace_path.resolve()), str(result)], check=True, cwd=PROJECT_ROOT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(result.read_text())


def measure(n_images: int, workdir: Path) -> dict:
    """Write (or reuse) the workspace of ``n_images``, run the three measurements, print one line about each."""
    folder = workdir / f"synthetic-{n_images}"
    started = time.perf_counter()
    workspace_path, reused = write_synthetic_workspace(folder, n_images)
    print(f"\n{n_images:,} images: workspace {'reused' if reused else f'written in {time.perf_counter() - started:.1f} s'} at {workspace_path}", flush=True)
    shutil.rmtree(workspace_path / "derived", ignore_errors=True)  # our pipeline is timed from scratch

    ours = in_fresh_process("our_pipeline", workspace_path)
    path = "scaled: fitted on a sample, applied to the rest" if is_scaled(n_images) else "every image fitted"
    print(f"  ours ({path}): {ours['pipeline_s']:.1f} s (layout {ours['layout_s']:.1f} s, slices {ours['pipeline_s'] - ours['layout_s']:.1f} s) · "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB · target ≤ {PIPELINE_TARGET_S} s: {'met' if ours['pipeline_s'] <= PIPELINE_TARGET_S else 'MISSED'}", flush=True)

    plain = in_fresh_process("plain_umap", workspace_path, PLAIN_UMAP_LIMIT_S)
    print("  plain UMAP on all points: " + (f"{plain['umap_s']:.1f} s · peak RSS {plain['peak_rss_mb']:.0f} MB" if plain
                                           else f"skipped (stopped after {PLAIN_UMAP_LIMIT_S / 60:.0f} min)"), flush=True)

    workspace = Workspace(workspace_path)
    picks = slices_to_pick(workspace, 1 + 2 * SCALE_PICKS, default_slice_params(n_images))
    page = measure_page_in_fresh_process(workspace_path, folder, picks)
    print(f"  Slices page: first render {page['first_render_s']:.2f} s · click median {page['click_ms']:.0f} ms "
          f"(no-cache {page['uncached_click_ms']:.0f} ms) · peak RSS {page['peak_rss_mb']:.0f} MB · figure JSON {page['figure_json_mb']:.1f} MB", flush=True)
    return {"images": n_images, "ours": ours, "plain": plain, "page": page}


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'images':>8}{'ours s':>9}{'plain UMAP s':>14}{'pipeline RSS MB':>17}{'first render s':>16}{'click ms':>10}{'page RSS MB':>13}")
    for row in rows:
        plain = f"{row['plain']['umap_s']:.1f}" if row["plain"] else "skipped"
        print(f"{row['images']:>8,}{row['ours']['pipeline_s']:>9.1f}{plain:>14}{row['ours']['peak_rss_mb']:>17.0f}"
              f"{row['page']['first_render_s']:>16.2f}{row['page']['click_ms']:>10.0f}{row['page']['peak_rss_mb']:>13.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated image counts (default {DEFAULT_SIZES})")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic workspaces here and reuse them next time (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not sizes:
        parser.error("--sizes names no image count")

    quiet_streamlit()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    # Without a built demo the page builds one in front and the full one behind it, on the CPUs being measured;
    # the quick demo (under a minute to build, once) stands in as a built demo, and the page lists it beside ours.
    demo = quick_demo_dir()
    build_demo(demo, QUICK_PRESET, progress=tqdm_progress())
    with home_with_demo(demo) as home, tempfile.TemporaryDirectory(prefix="slicescope-scale-") as scratch:
        os.environ["SLICESCOPE_HOME"] = str(home)
        workdir = args.workdir or Path(scratch)
        rows = [measure(n_images, workdir) for n_images in sizes]
    print_summary(rows)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    last = rows[-1]
    print(f"images={last['images']} pipeline_s={last['ours']['pipeline_s']:.1f} click_median_ms={last['page']['click_ms']:.0f} "
          f"peak_rss_mb={last['ours']['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
