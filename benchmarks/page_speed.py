"""How fast the Slices page answers a click, and how it copes with 100,000 images.

    python -m benchmarks.page_speed [--demo DIR] [--interactions 30] [--sizes 10000,100000] [--workdir DIR]

The page is driven headless with Streamlit's ``AppTest``: a timing is the wall
time of one ``AppTest.run()``, i.e. running the whole page script after a
widget change and building every element it sends to the browser (the Plotly
figure serialised to JSON included). It leaves out the websocket transfer and
the browser drawing the figure; the figure's JSON size stands in for those.

1. Click latency on the full demo (built at ``--demo`` if missing). After a cold
   first render (reported on its own) and an untimed warm-up cycle,
   ``--interactions`` clicks are timed, in turn: picking a slice in the Slice Table, paging the Slice Detail View,
   switching it between images and GradCAM heatmaps, and switching the colour
   encoding, the representation and the layout in the System Menu. The
   obvious alternative, a page without in-memory caching, is the same clicks
   with Streamlit's ``cache_data``/``cache_resource`` cleared before each
   rerun; the workspace's derived results on disk still spare it K-Means and
   UMAP. The two take turns, one cycle of the six kinds at a time, so other
   work on the machine slows both alike.
2. Scale: synthetic workspaces of ``--sizes`` images in the real workspace
   format (random 64-d Gaussian class blobs, random 7×7 GradCAM maps, tiny real
   PNG files; no model is run). Slices and the UMAP layout are precomputed once
   through ``core.slicing`` and timed on their own. Then, in a fresh process
   per workspace (so its peak resident memory, ``VmHWM``, is that workspace's;
   the demo's biased workspace is measured the same way for reference), the
   page is opened on it (first render; the files are in the OS page cache since
   they were just written) and slices are picked, alternately with and without
   the in-memory caches.
   The scatter figure the page builds is compared with the naive figure, one
   SVG ``go.Scatter`` trace with a hover string per point: JSON size and the
   time to build and serialise it.

The last line reads
``click_median_ms=<x> baseline_ratio=<y> load_10k_s=<a> load_100k_s=<b>``:
the median click latency on the demo, how many times slower the same clicks are
without the in-memory caches (higher means the caching helps more), and the
first render of the page on the 10,000- and 100,000-image workspaces
(``skipped`` when that size was not run).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import streamlit.logger
from PIL import Image
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from app.figures import DIMMED_OPACITY, ScatterData, ScatterOptions, scatter_figure
from core import __version__
from core.data import Preprocess, image_id
from core.demo import build_demo, default_demo_dir, workspace_dir
from core.extract import build_report
from core.progress import tqdm_progress
from core.slicing import ProjectionParams, SliceParams, default_k, find_slices, project, slice_table
from core.views import confusion_cells, members
from core.workspace import (
    FORMAT_VERSION,
    Workspace,
    is_workspace,
    save_array,
    save_json,
    save_manifest,
    save_table,
    stable_hash,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAIN_SCRIPT = PROJECT_ROOT / "app" / "main.py"
APP_TIMEOUT_S = 120
# The Slices page opens on the attribution space, sliced by K-Means with
# k = default_k(N) and laid out by UMAP with ProjectionParams(); the benchmark
# precomputes and picks slices from exactly those results.
PAGE_REPRESENTATION = "attribution"

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FEATURE_DIM = 64
LATENT_SHAPE = (7, 7)
# Spread of the class centres relative to the unit within-class noise; at 0.3
# nearest-centre classification gets about 80% right, like a fair model.
CLASS_SEPARATION = 0.3
# F_W is F re-weighted by the attribution map: close to F, not equal to it.
ATTRIBUTION_NOISE = 0.3
DISTINCT_IMAGES_PER_CLASS = 32
THUMBNAIL_PIXELS = 32
SCALE_PICKS = 8  # timed per variant, after one untimed warm-up pick
FIGURE_REPEATS = 3


# -- driving the page ----------------------------------------------------------

def quiet_streamlit() -> None:
    # Bare-mode AppTest logs "missing ScriptRunContext" on every cache clear; the
    # option keeps the level when Streamlit re-applies its config.
    streamlit_config.set_option("logger.level", "error")
    streamlit.logger.set_log_level("error")


def clear_streamlit_caches() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def timed_run(app: AppTest) -> float:
    """Seconds for one rerun of the page; a page exception stops the benchmark."""
    started = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - started
    if app.exception:
        details = "\n\n".join(f"{error.value}\n{''.join(error.stack_trace)}" for error in app.exception)
        raise RuntimeError(f"the page raised an exception:\n{details}")
    return elapsed


def widget(app: AppTest, element_type: str, key: str):
    found = [element for element in app.get(element_type) if element.key == key]
    if not found:
        raise RuntimeError(f"the page shows no {element_type} with key '{key}'")
    return found[0]


def pick_slice(slice_id: int) -> Callable[[AppTest], None]:
    # Exactly what the Slice Table's row-click callback writes.
    def apply(app: AppTest) -> None:
        app.session_state["picked_slices"] = [slice_id]

    return apply


def next_detail_page(app: AppTest) -> None:
    pager = widget(app, "pagination", "detail_page")
    pager.select(pager.value % pager.num_pages + 1)


def toggle_heatmaps(app: AppTest) -> None:
    mode = widget(app, "button_group", "detail_mode")
    mode.set_value(mode.options[(mode.indices[0] + 1) % len(mode.options)])


def next_menu_option(key: str, labels: dict[str, str]) -> Callable[[AppTest], None]:
    """The menu's next option among those it offers (influence embeddings only once computed), chosen by value:
    AppTest's select_index passes the displayed label through format_func. ``labels``: value → displayed label."""
    def apply(app: AppTest) -> None:
        menu = app.sidebar.selectbox(key=key)
        offered = [value for value, label in labels.items() if label in menu.options]
        menu.select(offered[(offered.index(menu.value) + 1) % len(offered)])

    return apply


Click = tuple[str, Callable[[AppTest], None]]  # (kind, what the click changes)


def interaction_cycles(count: int, slices: list[int]) -> list[list[Click]]:
    """A full warm-up cycle, then ``count`` clicks, in cycles of one click of each kind.

    Every pick goes to another slice; a pick comes first in each cycle so the
    detail view (pages, heatmaps) is on screen.
    """
    # Imported after quiet_streamlit(): outside a Streamlit runtime each of
    # app.ui's cached loaders logs a warning when the module is imported.
    from app.ui import COLOUR_LABELS, LAYOUT_LABELS, REPRESENTATION_LABELS

    kinds: list[tuple[str, Callable[[int], Callable[[AppTest], None]]]] = [
        ("pick slice", lambda turn: pick_slice(slices[turn % len(slices)])),
        ("detail page", lambda _turn: next_detail_page),
        ("heatmaps toggle", lambda _turn: toggle_heatmaps),
        ("colour encoding", lambda _turn: next_menu_option("menu_colour", COLOUR_LABELS)),
        ("representation", lambda _turn: next_menu_option("menu_representation", REPRESENTATION_LABELS)),
        ("layout", lambda _turn: next_menu_option("menu_layout", LAYOUT_LABELS)),
    ]
    total = len(kinds) + count
    clicks = [(kinds[i % len(kinds)][0], kinds[i % len(kinds)][1](i // len(kinds))) for i in range(total)]
    return [clicks[start:start + len(kinds)] for start in range(0, total, len(kinds))]


def time_clicks(cycles: list[list[Click]]) -> tuple[float, list[tuple[str, float]], list[tuple[str, float]]]:
    """Our page's cold first render, then its click timings and the no-cache page's (seconds).

    The first cycle is an untimed warm-up: it pays one-time costs (the first
    slice outline imports scipy) that would otherwise land on whichever page
    clicks first. Then the two pages take turns, one cycle of clicks each, so
    other work on the machine slows both alike. They make the same clicks, so
    at each turn ours finds the caches refilled for its state by the no-cache
    page's last rerun; it loses only entries of states it left earlier, which
    the workspace's derived results on disk serve again.
    """
    ours_app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=APP_TIMEOUT_S)
    uncached_app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=APP_TIMEOUT_S)
    cold = timed_run(ours_app)
    timed_run(uncached_app)
    ours: list[tuple[str, float]] = []
    uncached: list[tuple[str, float]] = []
    for turn, cycle in enumerate(cycles):
        for app, clear_caches, timings in ((ours_app, False, ours), (uncached_app, True, uncached)):
            for kind, apply in cycle:
                apply(app)
                if clear_caches:
                    clear_streamlit_caches()
                seconds = timed_run(app)
                if turn > 0:
                    timings.append((kind, seconds))
    return cold, ours, uncached


def slices_to_pick(workspace: Workspace, count: int, params: SliceParams | None = None) -> list[int]:
    """Up to ``count`` slices of ``params`` (default: K-Means with k = default_k), those with the most images in
    their first confusion cell first.

    In the confusion layout the detail view opens on a slice's first cell
    (``confusion_cells`` order), so these slices show several pages of images in
    either layout and the paging click always has a next page.
    """
    slice_ids = find_slices(workspace, PAGE_REPRESENTATION, params or SliceParams(k=default_k(len(workspace.images))))
    first_cell = {
        int(s): int(confusion_cells(workspace.images, members(slice_ids, [s]))["count"].iat[0])
        for s in np.unique(slice_ids)
    }
    return sorted(first_cell, key=lambda s: (-first_cell[s], s))[:count]


@contextmanager
def home_with_demo(demo: Path):
    """A ``$SLICESCOPE_HOME`` whose ``demo`` folder is ``demo``, so the app opens on it."""
    with tempfile.TemporaryDirectory(prefix="slicescope-home-") as home:
        (Path(home) / "demo").symlink_to(demo.resolve(), target_is_directory=True)
        yield Path(home)


def summarise(timings: list[tuple[str, float]]) -> dict[str, list[float]]:
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in timings:
        by_kind.setdefault(kind, []).append(seconds * 1000)
    return by_kind


def print_click_table(ours: list[tuple[str, float]], baseline: list[tuple[str, float]]) -> None:
    ours_by_kind, baseline_by_kind = summarise(ours), summarise(baseline)
    print(f"{'interaction':<18}{'n':>4}{'median ms':>11}{'p90 ms':>9}{'no-cache median':>17}{'p90':>8}{'ratio':>8}")
    for kind, times in ours_by_kind.items():
        uncached = baseline_by_kind[kind]
        print(
            f"{kind:<18}{len(times):>4}{statistics.median(times):>11.0f}{np.percentile(times, 90):>9.0f}"
            f"{statistics.median(uncached):>17.0f}{np.percentile(uncached, 90):>8.0f}"
            f"{statistics.median(uncached) / statistics.median(times):>7.1f}x"
        )


# -- synthetic workspaces --------------------------------------------------------

def thumbnail_png(rng: np.random.Generator, class_index: int) -> bytes:
    """A small noisy picture tinted by its class, so galleries show visibly different images."""
    tint = np.array([(37 * class_index) % 256, (91 * class_index + 60) % 256, (53 * class_index + 120) % 256])
    noise = rng.integers(-60, 60, (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS, 3))
    pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(root: Path, label_index: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """One real file per image (relative paths must be unique: they define image ids).

    Only ``DISTINCT_IMAGES_PER_CLASS`` files per class are written; the other
    paths are hard links to them, so 100,000 images cost a few hundred files'
    worth of disk and the gallery still reads real PNGs.
    """
    paths, sha1s = [], []
    originals: dict[int, list[tuple[Path, str]]] = {c: [] for c in range(len(CLASSES))}
    for row, class_index in enumerate(label_index.tolist()):
        relative = f"{CLASSES[class_index]}/{row:06d}.png"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        written = originals[class_index]
        if len(written) < DISTINCT_IMAGES_PER_CLASS:
            payload = thumbnail_png(rng, class_index)
            target.write_bytes(payload)
            sha1 = hashlib.sha1(payload).hexdigest()
            written.append((target, sha1))
        else:
            original, sha1 = written[row % DISTINCT_IMAGES_PER_CLASS]
            os.link(original, target)
        paths.append(relative)
        sha1s.append(sha1)
    return paths, sha1s


def synthetic_scan(n_images: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and the four arrays a scan would write, drawn at random."""
    n_classes = len(CLASSES)
    # Sorted labels with increasing row numbers keep the rows sorted by path, as a scan writes them.
    label_index = np.sort(rng.integers(0, n_classes, n_images))
    centres = rng.normal(0.0, CLASS_SEPARATION, (n_classes, FEATURE_DIM)).astype(np.float32)
    features = (centres[label_index] + rng.standard_normal((n_images, FEATURE_DIM), dtype=np.float32)).astype(np.float32)
    attribution_features = features + ATTRIBUTION_NOISE * rng.standard_normal(features.shape, dtype=np.float32)
    # A nearest-centre classifier: logit = -½‖f - c‖², expanded to avoid an N × C × D temporary.
    logits = features @ centres.T - 0.5 * (centres**2).sum(axis=1) - 0.5 * (features**2).sum(axis=1, keepdims=True)
    gradcam = rng.random((n_images, *LATENT_SHAPE), dtype=np.float32)
    gradcam /= gradcam.max(axis=(1, 2), keepdims=True)
    arrays = {
        "logits": logits.astype(np.float32),
        "features": features,
        "attribution_features": attribution_features,
        "gradcam": gradcam.astype(np.float16),
    }
    return label_index, arrays


def image_table(paths: list[str], sha1s: list[str], label_index: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """``images.parquet`` as ``core.extract`` writes it, from the labels and logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    prediction_index = log_probabilities.argmax(axis=1)
    rows = np.arange(len(paths))
    return pd.DataFrame({
        "image_id": [image_id(path) for path in paths],
        "path": paths,
        "label": [CLASSES[i] for i in label_index],
        "label_index": label_index.astype(np.int64),
        "prediction": [CLASSES[i] for i in prediction_index],
        "prediction_index": prediction_index.astype(np.int64),
        "confidence": np.exp(log_probabilities[rows, prediction_index]).astype(np.float32),
        "loss": (-log_probabilities[rows, label_index]).astype(np.float32),
        "correct": label_index == prediction_index,
        "sha1": sha1s,
    })


def write_synthetic_workspace(folder: Path, n_images: int, seed: int = 0) -> tuple[Path, bool]:
    """``folder/workspace`` with ``n_images`` random images under ``folder/images``; (path, reused)."""
    workspace_path, images_root = folder / "workspace", folder / "images"
    if is_workspace(workspace_path):
        return workspace_path, True
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    label_index, arrays = synthetic_scan(n_images, rng)
    shutil.rmtree(images_root, ignore_errors=True)
    paths, sha1s = write_images(images_root, label_index, rng)
    table = image_table(paths, sha1s, label_index, arrays["logits"])
    dataset_fingerprint = hashlib.sha256("\n".join(f"{p}\0{l}" for p, l in zip(table["path"], table["label"])).encode()).hexdigest()

    for name, array in arrays.items():
        save_array(workspace_path / "arrays" / f"{name}.npy", array)
    save_table(workspace_path / "images.parquet", table)
    save_json(workspace_path / "report.json", build_report(table, [], CLASSES, arrays["gradcam"], n_images))
    # No [scan] table: there are no scan inputs to record, so the app offers no rebuild.
    save_manifest(workspace_path / "workspace.toml", {
        "format_version": FORMAT_VERSION,
        "name": f"synthetic · {n_images:,} images",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "dataset": {
            "source": str(images_root), "root": str(images_root), "kind": "imagefolder", "split": "",
            "num_indexed": n_images, "num_images": n_images, "fingerprint": dataset_fingerprint,
        },
        "model": {
            "kind": "factory", "checkpoint": "", "factory": "benchmarks.page_speed (random features, no model)",
            "num_classes": len(CLASSES), "sha256": "", "classes": list(CLASSES), "target_layer": "synthetic",
        },
        "transforms": Preprocess(THUMBNAIL_PIXELS, "none").as_dict(),
        "extraction": {
            "fingerprint": stable_hash({"synthetic": n_images, "seed": seed, "dataset": dataset_fingerprint}),
            "seconds": round(time.perf_counter() - started, 2),
            "latent_shape": list(LATENT_SHAPE),
            "feature_dim": FEATURE_DIM,
            "batch_size": 0,
            "device": "none",
            "attribution": "random maps (synthetic benchmark workspace)",
        },
    })
    return workspace_path, False


def precompute(workspace: Workspace) -> dict[str, float]:
    """Seconds for the slices and the layout the page opens on (≈0 when already on disk)."""
    seconds = {}
    started = time.perf_counter()
    find_slices(workspace, PAGE_REPRESENTATION, SliceParams(k=default_k(len(workspace.images))))
    seconds["kmeans_s"] = time.perf_counter() - started
    started = time.perf_counter()
    project(workspace, PAGE_REPRESENTATION, ProjectionParams())
    seconds["umap_s"] = time.perf_counter() - started
    return seconds


# -- the page at scale, in a fresh process ----------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux ``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's peak into a child started by
    fork + exec, so a fresh child of this large process would report ours.
    """
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def measure_page(workspace_path: str, workspaces_root: str, picks: list[int]) -> dict:
    """Open the page on one workspace and pick slices; run in a fresh process."""
    quiet_streamlit()
    os.environ["SLICESCOPE_WORKSPACES"] = workspaces_root
    rss_after_imports = peak_rss_mb()
    app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=APP_TIMEOUT_S)
    # The link a user would share: ?workspace=<resolved path> makes the System Menu select it.
    app.query_params["workspace"] = workspace_path
    first_render = timed_run(app)
    if app.sidebar.selectbox(key="menu_workspace").value != workspace_path:
        raise RuntimeError(f"the page did not open {workspace_path}")
    # The first pick pays one-time costs (the slice outline imports scipy); then
    # picks alternate between our page and the no-cache one (caches cleared
    # first), so load from other work hits both alike. Each pick is a new slice.
    pick_slice(picks[0])(app)
    timed_run(app)
    # Our page's peak: opened and clicked once. Later no-cache reruns reload the
    # tables, which is the alternative's cost, not ours.
    peak_rss = peak_rss_mb()
    clicks: dict[bool, list[float]] = {False: [], True: []}
    for turn, slice_id in enumerate(picks[1:]):
        clear_caches = turn % 2 == 1
        pick_slice(slice_id)(app)
        if clear_caches:
            clear_streamlit_caches()
        clicks[clear_caches].append(timed_run(app))
    figure_spec = app.get("plotly_chart")[0].proto.spec
    return {
        "first_render_s": first_render,
        "click_ms": statistics.median(clicks[False]) * 1000,
        "uncached_click_ms": statistics.median(clicks[True]) * 1000,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": peak_rss,
        "thumbnails_sent": len(app.get("image")[0].value),
        "figure_json_mb": len(figure_spec) / 1e6,
        "trace_types": sorted({trace["type"] for trace in json.loads(figure_spec)["data"]}),
    }


def measure_page_in_fresh_process(workspace_path: Path, workspaces_root: Path, picks: list[int]) -> dict:
    """:func:`measure_page` in a new interpreter, so its peak RSS belongs to this workspace alone."""
    # Not multiprocessing: AppTest leaves sys.modules["__main__"] pointing at the
    # page script, which a spawned worker would then import as its own main module.
    code = (
        "import json, sys; from benchmarks.page_speed import measure_page; "
        "json.dump(measure_page(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(',')]), open(sys.argv[4], 'w'))"
    )
    with tempfile.TemporaryDirectory(prefix="slicescope-page-") as scratch:
        result = Path(scratch) / "page.json"
        arguments = [str(workspace_path.resolve()), str(workspaces_root), ",".join(map(str, picks)), str(result)]
        subprocess.run([sys.executable, "-c", code, *arguments], check=True, cwd=PROJECT_ROOT)
        return json.loads(result.read_text())


# -- the scatter figure against the naive one --------------------------------------

def naive_figure(data: ScatterData, highlighted: np.ndarray) -> go.Figure:
    """What a first version would draw: one SVG trace, a formatted hover string per point."""
    images = data.images
    hover = [
        f"{path}<br>label: {label} · prediction: {prediction}<br>confidence {confidence:.0%}<br>slice {slice_id}"
        for path, label, prediction, confidence, slice_id in zip(images["path"], images["label"], images["prediction"], images["confidence"], data.slice_ids)
    ]
    opacity = np.where(np.isin(np.arange(len(images)), highlighted), 1.0, DIMMED_OPACITY)
    # Python lists, as such code passes them: Plotly writes them as JSON numbers, not typed arrays.
    return go.Figure(go.Scatter(
        x=data.layout[:, 0].tolist(), y=data.layout[:, 1].tolist(), mode="markers", text=hover, hoverinfo="text",
        marker={"color": data.slice_ids.tolist(), "opacity": opacity.tolist()},
    ))


def build_and_serialise(build: Callable[[], go.Figure]) -> tuple[float, int]:
    """Median seconds to build the figure and turn it into JSON, and the JSON's length."""
    times, size = [], 0
    for _ in range(FIGURE_REPEATS):
        started = time.perf_counter()
        size = len(build().to_json())
        times.append(time.perf_counter() - started)
    return statistics.median(times), size


def compare_figures(workspace: Workspace, picked: int) -> dict[str, float]:
    """Our scatter (scattergl per confusion cell) against the naive one, with slice ``picked`` selected."""
    slice_ids = find_slices(workspace, PAGE_REPRESENTATION, SliceParams(k=default_k(len(workspace.images))))
    layout = project(workspace, PAGE_REPRESENTATION, ProjectionParams())
    table = slice_table(workspace.images, slice_ids)
    accuracy = table.set_index("slice")["accuracy"].reindex(slice_ids).to_numpy()
    data = ScatterData(layout, workspace.images, slice_ids, accuracy, workspace.classes)
    highlighted = members(slice_ids, [picked])
    options = ScatterOptions(highlighted=highlighted, hull_slices=(picked,))
    ours_s, ours_size = build_and_serialise(lambda: scatter_figure(data, options))
    naive_s, naive_size = build_and_serialise(lambda: naive_figure(data, highlighted))
    return {"ours_s": ours_s, "ours_mb": ours_size / 1e6, "naive_s": naive_s, "naive_mb": naive_size / 1e6}


# -- the two benchmarks ----------------------------------------------------------------

def click_latency(demo: Path, interactions: int) -> tuple[float, float]:
    """Section 1; returns (our median click in ms, baseline/ours ratio)."""
    workspace = Workspace(workspace_dir(demo, "biased"))
    cycles = interaction_cycles(interactions, slices_to_pick(workspace, interactions))
    print(f"\n== 1. Click latency on the demo ({len(workspace.images):,} images, {interactions} clicks) ==")
    cold, ours, baseline = time_clicks(cycles)
    print(f"first render with empty Streamlit caches (libraries already imported by this benchmark): {cold:.2f} s")
    print("ours: Streamlit caches on · no-cache: cache_data/cache_resource cleared before every rerun (derived results on disk still used)")
    print_click_table(ours, baseline)
    ours_median = statistics.median(seconds for _, seconds in ours) * 1000
    baseline_median = statistics.median(seconds for _, seconds in baseline) * 1000
    ratio = baseline_median / ours_median
    print(f"all clicks: median {ours_median:.0f} ms (p90 {np.percentile([s * 1000 for _, s in ours], 90):.0f} ms) · "
          f"no-cache median {baseline_median:.0f} ms · ratio {ratio:.1f}x · target ≤ 300 ms: {'met' if ours_median <= 300 else 'MISSED'}")
    return ours_median, ratio


def scale(sizes: list[int], workdir: Path, demo: Path) -> dict[int, float]:
    """Section 2; returns the first render in seconds per size."""
    print(f"\n== 2. Scale: synthetic workspaces under {workdir} ==")
    rows = []
    reference = workspace_dir(demo, "biased")
    # (name, image count for the last line or None, workspace, folder listed in SLICESCOPE_WORKSPACES)
    targets: list[tuple[str, int | None, Path, Path]] = [(f"demo ({len(Workspace(reference).images):,})", None, reference, demo)]
    for n_images in sizes:
        folder = workdir / f"synthetic-{n_images}"
        started = time.perf_counter()
        workspace_path, reused = write_synthetic_workspace(folder, n_images)
        workspace = Workspace(workspace_path)
        written_s = time.perf_counter() - started
        precomputed = precompute(workspace)
        print(f"{n_images:>7,} images: {'reused' if reused else f'written in {written_s:.1f} s'} · accuracy {workspace.report['accuracy']:.1%} · "
              f"K-Means {precomputed['kmeans_s']:.1f} s · UMAP {precomputed['umap_s']:.1f} s" + (" (both from disk)" if reused else ""))
        figures = compare_figures(workspace, slices_to_pick(workspace, 1)[0])
        rows.append((n_images, figures))
        targets.append((f"{n_images:,}", n_images, workspace_path, folder))

    print("\npage in a fresh process per workspace (peak RSS: VmHWM once the page was opened and clicked;"
          "\n'after imports': the same process once its libraries were imported, before the page ran)")
    print(f"{'workspace':<15}{'first render s':>15}{'click ms':>10}{'no-cache ms':>13}{'ratio':>7}{'peak RSS MB':>13}{'after imports':>15}"
          f"{'thumbs/click':>14}{'figure JSON MB':>16}  traces")
    loads = {}
    for name, n_images, workspace_path, workspaces_root in targets:
        page = measure_page_in_fresh_process(workspace_path, workspaces_root, slices_to_pick(Workspace(workspace_path), 1 + 2 * SCALE_PICKS))
        print(f"{name:<15}{page['first_render_s']:>15.2f}{page['click_ms']:>10.0f}{page['uncached_click_ms']:>13.0f}"
              f"{page['uncached_click_ms'] / page['click_ms']:>6.1f}x{page['peak_rss_mb']:>13.0f}{page['rss_after_imports_mb']:>15.0f}"
              f"{page['thumbnails_sent']:>14}{page['figure_json_mb']:>16.2f}  {', '.join(page['trace_types'])}")
        if n_images is not None:
            loads[n_images] = page["first_render_s"]

    print("\nscatter figure, one slice selected: ours (scattergl per confusion cell, typed arrays) vs naive (one SVG trace, hover string per point)")
    print(f"{'images':>8}{'ours MB':>9}{'naive MB':>10}{'ratio':>7}{'ours ms':>9}{'naive ms':>10}{'ratio':>7}   (build + to_json, median of {FIGURE_REPEATS})")
    for n_images, figures in rows:
        print(f"{n_images:>8,}{figures['ours_mb']:>9.2f}{figures['naive_mb']:>10.2f}{figures['naive_mb'] / figures['ours_mb']:>6.1f}x"
              f"{figures['ours_s'] * 1000:>9.0f}{figures['naive_s'] * 1000:>10.0f}{figures['naive_s'] / figures['ours_s']:>6.1f}x")
    return loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir(), help="the full demo's folder (built there if missing)")
    parser.add_argument("--interactions", type=int, default=30, help="timed clicks on the demo, per variant")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated image counts of the synthetic workspaces; empty: skip")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic workspaces here and reuse them next time (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]

    quiet_streamlit()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    build_demo(args.demo, progress=tqdm_progress())
    with home_with_demo(args.demo) as home:
        os.environ["SLICESCOPE_HOME"] = str(home)
        os.environ.pop("SLICESCOPE_WORKSPACES", None)
        click_median_ms, baseline_ratio = click_latency(args.demo, args.interactions)
        loads = {}
        if sizes:
            if args.workdir:
                loads = scale(sizes, args.workdir, args.demo)
            else:
                with tempfile.TemporaryDirectory(prefix="slicescope-scale-") as workdir:
                    loads = scale(sizes, Path(workdir), args.demo)

    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    def seconds(n_images: int) -> str:
        return f"{loads[n_images]:.2f}" if n_images in loads else "skipped"

    print(f"click_median_ms={click_median_ms:.0f} baseline_ratio={baseline_ratio:.1f} load_10k_s={seconds(10_000)} load_100k_s={seconds(100_000)}")


if __name__ == "__main__":
    main()
