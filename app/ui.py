"""What the analyst pages share: the System Menu, cached loaders, progress, errors.

Pages call :func:`system_menu` for the user's choices and the ``load_*``
functions for data; every load is cached, so a click re-renders from memory.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.figures import ScatterData
from core.demo import (
    BUILD_LOG,
    QUICK_PRESET,
    build_demo,
    build_progress,
    default_demo_dir,
    is_demo_built,
    quick_demo_dir,
    start_background_build,
)
from core.errors import SliceScopeError
from core.extract import repair_workspace
from core.influence import is_computed
from core.mitigation import mitigation_unfinished
from core.mosaic import CellMosaic, Mosaic, build_cell_mosaics, build_mosaic, is_cell_mosaics_built, is_mosaic_built
from core.progress import ProgressFn
from core.render import render_images, thumbnail_data_uris
from core.slicing import DEFAULT_SLICING, ProjectionParams, SliceParams, default_k, find_slices, project, slice_table
from core.workspace import Workspace, WorkspaceStatus, looks_like_workspace, workspace_status

REPRESENTATION_LABELS = {
    "attribution": "Attribution space (F_W)",
    "features": "Original feature space (F)",
    "influence": "Influence embeddings (InfEmbed)",
}
COLOUR_LABELS = {
    "slice": "Slice",
    "accuracy": "Slice accuracy",
    "confidence": "Confidence",
    "classes": "Label (fill) · prediction (border)",
    "correct": "Correct / misclassified",
    "spuriousness": "Slice spuriousness",
}
# The System Menu's slicing methods, the benchmark's best (core.slicing.DEFAULT_SLICING) first.
METHOD_LABELS = {
    "domino": "error-aware mixture",
    "kmeans": "K-Means",
    "planespot": "PlaneSpot",
}
LAYOUT_LABELS = {
    "combined": "Combined",
    "confusion": "Split by confusion-matrix cell",
}


@dataclass(frozen=True)
class Selection:
    """The System Menu's choices, as plain values."""

    workspace: Path
    representation: str  # the 2-D layout shown
    slice_on: str  # the representation slices are cut from; kept when the layout changes
    layout: str
    colour: str
    k: int  # K-Means' number of slices, or the most a mixture may choose
    method: str = DEFAULT_SLICING.method  # a key of core.slicing.SLICING_METHODS

    @property
    def slice_params(self) -> SliceParams:
        return SliceParams(k=self.k, method=self.method)

    @property
    def slicing_key(self) -> tuple:
        """What slice ids depend on: a change here makes old slice ids meaningless."""
        return (str(self.workspace), self.slice_on, self.k, self.method)

    @property
    def slicing_label(self) -> str:
        """The slicing in words, for messages: e.g. "the 50 slices of the attribution space (F_W)"."""
        if self.method == "kmeans":
            return f"the {self.k} slices of the {representation_phrase(self.slice_on)}"
        return f"the slices of the {representation_phrase(self.slice_on)} ({METHOD_LABELS[self.method]}, at most {self.k})"


def representation_phrase(representation: str) -> str:
    """A representation's label inside a sentence: "attribution space (F_W)", keeping the symbols' case."""
    label = REPRESENTATION_LABELS[representation]
    return label[0].lower() + label[1:]


def table_height(rows: int, most: int = 520) -> int:
    """Pixels for an st.dataframe that shows ``rows`` rows (35 px each, plus the header) without a scrollbar, up to ``most``."""
    return min(most, 35 * (rows + 1) + 3)


def streamlit_progress(container) -> ProgressFn:
    """A core progress callback drawing one bar per step inside ``container``."""
    bars: dict[str, object] = {}

    def report(step: str, done: int, total: int) -> None:
        if step not in bars:
            bars[step] = container.progress(0.0, text=step)
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        bars[step].progress(fraction, text=f"{step} — {done}/{total}")

    return report


# Which presets the app builds: the quick demo it opens on, then the full one behind it.
# SLICESCOPE_DEMO_PRESETS="tiny,tiny" makes both fast (tests, a machine too slow for the full demo);
# "quick,none" builds no full demo: a hosted app whose memory cannot hold the server and a builder at once.
DEMO_PRESETS_ENV = "SLICESCOPE_DEMO_PRESETS"
NO_FULL_DEMO = "none"
# The full demo's builder started by this server, per folder: a build that failed is reported, not restarted on every click.
_BACKGROUND_BUILDS: dict[str, subprocess.Popen] = {}


def demo_presets() -> tuple[str, str]:
    quick, _, full = os.environ.get(DEMO_PRESETS_ENV, f"{QUICK_PRESET},full").partition(",")
    return quick.strip() or QUICK_PRESET, full.strip() or "full"


def demo_root() -> Path:
    """The demo the System Menu lists: the full one once built, the quick one until then."""
    full = default_demo_dir()
    return full if is_demo_built(full) else quick_demo_dir()


def ensure_demo() -> None:
    """Open on the demo within a minute on a fresh machine: until the full demo is built, build the quick one here
    (with progress, in every tab) and say at the top of the sidebar how far the full one got;
    :func:`build_full_demo_behind` starts it."""
    full = default_demo_dir()
    if is_demo_built(full):
        return
    if not is_demo_built(quick_demo_dir()):
        _build_in_front(quick_demo_dir(), demo_presets()[0])
    if demo_presets()[1] == NO_FULL_DEMO:
        return
    with st.sidebar:
        st.fragment(_full_demo_banner, run_every=3)(full)


def build_full_demo_behind() -> None:
    """Until the full demo is built: build it in a process of its own that outlives the tab (:func:`ensure_demo`'s
    banner says how far it got). Called after the page is drawn, so the first page does not share the CPUs with the build.
    """
    full = default_demo_dir()
    if is_demo_built(full) or demo_presets()[1] == NO_FULL_DEMO:
        return
    progress = build_progress(full)
    if (progress is None or not progress.running) and str(full) not in _BACKGROUND_BUILDS:
        _BACKGROUND_BUILDS[str(full)] = start_background_build(full, demo_presets()[1])


def _full_demo_banner(full: Path) -> None:
    if is_demo_built(full):
        st.rerun(scope="app")  # the menu now lists the full demo
    builder = _BACKGROUND_BUILDS.get(str(full))
    if builder is not None and builder.poll() not in (None, 0):
        st.error(f"The full demo could not be built (see {full / BUILD_LOG}); the quick demo stays usable. "
                 f"Build it by hand with `python -m core demo --out {full}`.", icon=":material/error:")
        return
    progress = build_progress(full)
    step = f"{progress.step}: {progress.done}/{progress.total}" if progress else "starting"
    st.info("You are on the **quick demo** (400 held-out images, models trained for a few epochs). The full demo is being "
            "built in the background and takes its place when ready.", icon=":material/hourglass_top:")
    st.progress(progress.fraction if progress else 0.0, text=step)


def _build_in_front(out: Path, preset: str) -> None:
    """Build the demo at ``out`` here with a progress bar; a tab that finds another building it shows that build's progress."""
    st.title("SliceScope")
    st.info("Building a quick demo to open on (first run only, under a minute): a generated benchmark with injected problems, "
            "a biased and a balanced CNN, and the scans of their held-out images. The full demo is built behind it.")
    progress = build_progress(out)
    if progress is not None and progress.running:
        with st.status("Another tab is building the quick demo…", expanded=True):
            bar = st.progress(progress.fraction, text=progress.step)
            while progress is not None and progress.running:
                time.sleep(0.5)
                progress = build_progress(out)
                if progress is not None:
                    bar.progress(progress.fraction, text=f"{progress.step} — {progress.done}/{progress.total}")
        st.rerun()
    with st.status("Building the quick demo…", expanded=True) as status:
        try:
            build_demo(out, preset, progress=streamlit_progress(st))
        except SliceScopeError as error:
            status.update(label="The demo could not be built", state="error")
            st.error(str(error))
            st.stop()
        status.update(label="Demo ready", state="complete")
    st.rerun()


def discover_workspaces() -> list[Path]:
    """The demo's workspaces plus any under the folders in ``$SLICESCOPE_WORKSPACES``.

    Half-built, outdated and damaged workspaces are included, so the menu can
    say what is wrong with them and offer to finish or rebuild them; a version
    whose mitigation has not finished is left out (its job, not the menu,
    finishes it, and the Mitigate page resumes it).
    """
    roots = [demo_root()]
    roots += [Path(p).expanduser() for p in os.environ.get("SLICESCOPE_WORKSPACES", "").split(os.pathsep) if p]
    found: list[Path] = []
    for root in roots:
        # Hidden folders are a workspace's own (a rescan in progress), never a workspace to list.
        candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else [])
        found += [p.resolve() for p in candidates if looks_like_workspace(p) and not mitigation_unfinished(p)]
    return list(dict.fromkeys(found))


@st.cache_resource(show_spinner=False)
def load_workspace(path: str) -> Workspace:
    return Workspace(path)


def selected_workspace() -> Workspace | None:
    """The System Menu's workspace, or None after saying how to choose one."""
    selection = st.session_state.get("selection")
    if selection is None:
        st.info("Choose a workspace in the System Menu on the left.")
        return None
    return load_workspace(str(selection.workspace))


@st.cache_data(show_spinner=False)
def workspace_summary(path: str) -> dict:
    """Name, dataset and model of a workspace, for the System Menu."""
    workspace = load_workspace(path)
    return {
        "name": workspace.name,
        "dataset": workspace.dataset_fingerprint,
        "dataset_label": "/".join(Path(workspace.manifest["dataset"]["source"]).parts[-2:])
        + (f" · {workspace.manifest['dataset']['split']}" if workspace.manifest["dataset"].get("split") else ""),
        "model_label": workspace.name,
    }


def dataset_versions(path: str) -> list[str]:
    """The ready workspaces that scanned the same images as ``path`` (``path`` first): the model versions that compare with it."""
    dataset = workspace_summary(path)["dataset"]
    others = [str(p) for p in discover_workspaces() if str(p) != path and workspace_status(p).state == "ready"]
    return [path, *(other for other in others if workspace_summary(other)["dataset"] == dataset)]


@st.cache_data(show_spinner=False)
def load_slices(path: str, representation: str, k: int, method: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Slice id per image and the Slice Table; computed once, then read from disk."""
    workspace = load_workspace(path)
    what = f"{k} slices" if method == "kmeans" else f"up to {k} slices ({METHOD_LABELS[method]})"
    with st.spinner(f"Finding {what} in the {representation_phrase(representation)}…"):
        slice_ids = find_slices(workspace, representation, SliceParams(k=k, method=method))
    return slice_ids, slice_table(workspace.images, slice_ids)


@st.cache_data(show_spinner=False)
def load_layout(path: str, representation: str) -> np.ndarray:
    workspace = load_workspace(path)
    with st.spinner(f"Laying out the {representation_phrase(representation)} with UMAP (first time only)…"):
        return project(workspace, representation, ProjectionParams())


@st.cache_resource(show_spinner=False, max_entries=8)
def load_scatter_data(path: str, representation: str, slice_on: str, k: int, method: str,
                      spuriousness: tuple[tuple[int, float], ...] | None = None) -> ScatterData:
    """The scatter's data, kept between reruns with what no click changes (its cells, slice numbers' places, density).

    ``spuriousness``: (slice, spuriousness) pairs when the scatter is coloured by it. A resource, not a copy per rerun:
    a ``ScatterData`` is never changed once built.
    """
    workspace = load_workspace(path)
    slice_ids, table = load_slices(path, slice_on, k, method)
    per_slice = table.set_index("slice")
    per_image_spuriousness = None if spuriousness is None else pd.Series(dict(spuriousness)).reindex(slice_ids).to_numpy(dtype=float)
    return ScatterData(load_layout(path, representation), workspace.images, slice_ids, per_slice["accuracy"].reindex(slice_ids).to_numpy(),
                       workspace.classes, per_image_spuriousness)


def available_representations(path: str) -> list[str]:
    """The representations the System Menu offers: influence embeddings only once computed (that takes minutes, on the
    Influence page), so picking a layout never starts a long job."""
    return [name for name in REPRESENTATION_LABELS if name != "influence" or is_computed(load_workspace(path))]


def _follow_the_full_demo() -> None:
    """Once the full demo replaced the quick one, a view of the quick demo (in the URL and the menu) moves to the same model in the full one."""
    linked, quick = st.query_params.get("workspace"), quick_demo_dir().resolve()
    if not linked or demo_root() == quick_demo_dir() or not Path(linked).resolve().is_relative_to(quick):
        return
    st.query_params["workspace"] = str((default_demo_dir() / Path(linked).resolve().relative_to(quick)).resolve())
    for key in ("menu_dataset", "menu_workspace"):
        st.session_state.pop(key, None)


def _choose(label: str, options: list, format_func, query_key: str, key: str, container=st.sidebar, **kwargs):
    """A selectbox whose value is mirrored in the URL, so a view can be shared as a link."""
    wanted = st.query_params.get(query_key)
    index = next((i for i, option in enumerate(options) if str(option) == wanted), 0)
    value = container.selectbox(label, options, index=index, format_func=format_func, key=key, **kwargs)
    st.query_params[query_key] = str(value)
    return value


def system_menu() -> Selection | None:
    """Draw the System Menu in the sidebar and return the user's choices."""
    st.sidebar.header("System Menu")
    statuses = {str(p): workspace_status(p) for p in discover_workspaces()}
    _follow_the_full_demo()
    linked = st.query_params.get("workspace")
    if linked and linked not in statuses:
        statuses[linked] = workspace_status(linked)
    workspaces = [path for path, status in statuses.items() if status.state == "ready"]
    for path, status in statuses.items():
        if status.state != "ready":
            repair_ui(path, status)
    if not workspaces:
        st.sidebar.warning("No workspace found. Build one with `python -m core scan ...` and list its folder in SLICESCOPE_WORKSPACES.")
        return None
    summaries = {path: workspace_summary(path) for path in workspaces}
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries.values()))
    dataset_labels = {s["dataset"]: s["dataset_label"] for s in summaries.values()}
    current = st.query_params.get("workspace")
    if current in summaries:
        st.query_params["dataset"] = summaries[current]["dataset"]
    dataset = _choose("Dataset", datasets, lambda d: dataset_labels[d], "dataset", key="menu_dataset")
    versions = [path for path in workspaces if summaries[path]["dataset"] == dataset]
    workspace = _choose("Model version", versions, lambda p: summaries[p]["model_label"], "workspace", key="menu_workspace")
    representations = available_representations(workspace)
    representation = _choose(
        "Representation", representations, REPRESENTATION_LABELS.get, "representation", key="menu_representation",
        help="The 2-D layout. Switching keeps the selected slices and points, so you can see whether neighbours in one space are neighbours in the other.",
    )
    layout = _choose("Layout", list(LAYOUT_LABELS), LAYOUT_LABELS.get, "layout", key="menu_layout")
    colour = _choose("Colour encoding", list(COLOUR_LABELS), COLOUR_LABELS.get, "colour", key="menu_colour")
    n_images = len(load_workspace(workspace).images)
    with st.sidebar.expander("Slicing settings"):
        slice_on = _choose(
            "Slice on", representations, REPRESENTATION_LABELS.get, "slice_on", key="menu_slice_on", container=st,
            help="AttributionScanner clusters the attribution-weighted features F_W; plain features are there for comparison; "
                 "influence embeddings (InfEmbed) appear once computed on the Influence page.",
        )
        method = _choose(
            "Slicing method", list(METHOD_LABELS), lambda name: METHOD_LABELS[name].capitalize(), "method", key="menu_method", container=st,
            help="The error-aware mixture (Domino's: the representation plus each image's label and predicted probabilities, "
                 "slices counted by BIC) keeps the images a model gets wrong in the same way together; it finds blindspots that "
                 "K-Means (AttributionScanner's) merges into large slices, and is the default because it did best in "
                 "benchmarks/discovery.py. PlaneSpot clusters the 2-D layout plus the model's confidence.",
        )
        largest_k = max(2, min(500, n_images))
        if "menu_k" not in st.session_state:
            wanted = st.query_params.get("k", "")
            st.session_state["menu_k"] = min(largest_k, max(2, int(wanted))) if wanted.isdigit() else default_k(n_images)
        k = st.number_input(
            "Number of slices (K-Means k)" if method == "kmeans" else "Most slices the mixture may choose",
            min_value=2, max_value=largest_k, step=5, key="menu_k",
            help="Over-clustering (the paper uses 50) keeps rare failure modes in slices of their own.",
        )
        st.query_params["k"] = str(k)
    return Selection(Path(workspace), representation, slice_on, layout, colour, int(k), method)


def _first_build(built: bool, build: Callable[[ProgressFn], object], what: str) -> None:
    """Run a mosaic's first, slow build with a progress bar per step; nothing once it is stored."""
    if built:
        return
    with st.status(f"Drawing {what}: one feature inversion per tile (first time only)…", expanded=True) as box:
        try:
            build(streamlit_progress(st))
        except SliceScopeError:
            box.update(label="The mosaic could not be drawn", state="error")
            raise
        box.update(label="Mosaic ready", state="complete", expanded=False)


# The mosaic per layout: how it is built, whether it already is, and what the progress box calls it.
_MOSAICS = {
    "combined": (build_mosaic, is_mosaic_built, "the Data Slice Mosaic"),
    "confusion": (build_cell_mosaics, is_cell_mosaics_built, "the Data Slice Mosaic of each confusion cell"),
}


@st.cache_resource(show_spinner=False)
def _cached_mosaic(path: str, k: int, method: str, layout: str) -> Mosaic | list[CellMosaic]:
    build, _, _ = _MOSAICS[layout]
    return build(load_workspace(path), SliceParams(k=k, method=method))


def load_mosaic(path: str, params: SliceParams, layout: str) -> Mosaic | list[CellMosaic]:
    """The Data Slice Mosaic (``combined``) or one per confusion cell (``confusion``) of the slicing ``params``.

    The first request optimises it with a progress bar; later ones read it.
    """
    build, is_built, name = _MOSAICS[layout]
    workspace = load_workspace(path)
    _first_build(is_built(workspace, params), lambda progress: build(workspace, params, progress=progress), name)
    return _cached_mosaic(path, params.k, params.method, layout)


@st.cache_data(show_spinner=False, max_entries=8)
def load_thumbnail_uris(path: str, rows: tuple[int, ...]) -> list[str]:
    """Tooltip thumbnails of the given images as data URIs; read once per set of rows."""
    with st.spinner(f"Preparing {len(rows):,} thumbnails (first time only)…"):
        return thumbnail_data_uris(load_workspace(path), list(rows))


@st.cache_data(show_spinner=False, max_entries=64)
def load_images(path: str, rows: tuple[int, ...], size: int, overlay: bool) -> list[np.ndarray]:
    """Thumbnails (or GradCAM overlays) of one page of images; only that page is read."""
    return render_images(load_workspace(path), list(rows), size=size, overlay=overlay)


def repair_ui(path: str, status: WorkspaceStatus) -> None:
    """Say what is wrong with a workspace, with a button to finish or rebuild it."""
    st.warning(f"**{Path(path).name}**: {status.message}", icon=":material/build:")
    if not status.can_rebuild:
        return
    action = {"half-built": "Resume the scan", "damaged": "Repair the workspace"}.get(status.state, "Rebuild the workspace")
    if st.button(action, key=f"repair-{path}", icon=":material/refresh:"):
        with st.status(f"{action}: {Path(path).name}…", expanded=True) as progress_box:
            try:
                repair_workspace(path, progress=streamlit_progress(st))
            except SliceScopeError as error:
                progress_box.update(label="The workspace could not be rebuilt", state="error")
                show_error(error)
                return
            progress_box.update(label="Workspace ready", state="complete")
        # Cached tables and arrays of the old workspace are stale now.
        st.cache_data.clear()
        st.cache_resource.clear()
        st.rerun()


def picked_ids(chart_key: str) -> list[int]:
    """The first ``customdata`` column of the points selected in a Plotly chart (image rows, slice ids, cell ids…).

    Plotly ships NumPy ``customdata`` as a typed array; in the browser each row
    is a typed array too, which reaches Python as ``{"0": v0, "1": v1, …}``,
    not as a list.
    """
    points = st.session_state[chart_key].selection.points
    rows = [point["customdata"] for point in points if point.get("customdata") is not None]
    return [int(row["0"] if isinstance(row, dict) else row[0]) for row in rows]


def show_error(error: SliceScopeError) -> None:
    st.error(str(error), icon=":material/error:")
