"""The Compare page's cached data: versions' outcomes, the IMACS comparison (computed once, with progress), segment tiles and boards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from app.compare_figures import CELL_COLOURS, MODEL_COLOURS, TileBoard
from app.ui import load_workspace
from core.compare import CompareParams, Comparison, VersionOutcomes, compare_versions, confusion_mosaic, estimate_seconds, version_outcomes
from core.errors import SliceScopeError
from core.progress import ProgressFn
from core.render import render_images

TILE_SIZE = 32
CLUSTER_ORDERS = {
    "disparity": "attribution disparity (|mean A − mean B|)",
    "mean": "mean attribution (both models)",
    "compactness": "compactness (mean distance to the centroid)",
}


# cache_resource, not cache_data: the outcomes of 100,000 images would be unpickled on every click; nobody mutates them.
@st.cache_resource(show_spinner="Lining up the versions' predictions…", max_entries=8)
def load_outcomes(paths: tuple[str, ...]) -> VersionOutcomes:
    return version_outcomes([load_workspace(path) for path in paths])


@st.cache_resource(show_spinner=False, max_entries=8)
def load_mosaic_cells(paths: tuple[str, str]) -> pd.DataFrame:
    return confusion_mosaic(load_outcomes(paths))


@st.cache_data(show_spinner="Timing a few images to estimate how long the comparison takes…", max_entries=32)
def load_estimate(path_a: str, path_b: str, class_name: str, params: CompareParams) -> float | SliceScopeError:
    """Seconds the comparison will take, or why it cannot run (kept too: a refusal is not retried on every click)."""
    try:
        return estimate_seconds(load_workspace(path_a), load_workspace(path_b), class_name, params)
    except SliceScopeError as error:
        return error


@st.cache_resource(show_spinner=False)
def _comparisons() -> dict[tuple, Comparison]:
    return {}


def cached_comparison(path_a: str, path_b: str, class_name: str, params: CompareParams) -> Comparison | None:
    return _comparisons().get((path_a, path_b, class_name, params))


def run_comparison(path_a: str, path_b: str, class_name: str, params: CompareParams, progress: ProgressFn) -> Comparison:
    """Compare and keep the result for this server (cached by hand: st.cache_data would replay the progress bars on every later run).

    Everything slow is also cached in the workspaces, so a server restart recomputes only the clustering.
    """
    comparisons = _comparisons()
    key = (path_a, path_b, class_name, params)
    if key not in comparisons:
        comparison = compare_versions(load_workspace(path_a), load_workspace(path_b), class_name, params, progress)
        if len(comparisons) >= 8:
            comparisons.pop(next(iter(comparisons)))
        comparisons[key] = comparison
    return comparisons[key]


@st.cache_data(show_spinner=False, max_entries=16)
def load_pictures(path: str, image_ids: tuple[str, ...], size: int) -> dict[str, np.ndarray]:
    """The images as the model saw them (whole image resized to ``size``), by id: tiles are cropped from these."""
    workspace = load_workspace(path)
    rows = pd.Series(np.arange(len(workspace.images)), index=workspace.images["image_id"].astype(str)).loc[list(image_ids)]
    return dict(zip(image_ids, render_images(workspace, rows.tolist(), size=size)))


def crop_tiles(pictures: dict[str, np.ndarray], segments: pd.DataFrame, size: int = TILE_SIZE) -> np.ndarray:
    """Each segment's box cut from its image and resized to ``size`` × ``size``."""
    tiles = np.zeros((len(segments), size, size, 3), dtype=np.uint8)
    for index, row in enumerate(segments.itertuples()):
        crop = pictures[row.image_id][int(row.y0):int(row.y1), int(row.x0):int(row.x1)]
        if crop.size:
            tiles[index] = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    return tiles


def cluster_order(comparison: Comparison, order: str) -> list[int]:
    """The clusters in the order the analyst chose (IMACS's Concept Cluster view offers these three)."""
    summary = comparison.clusters.set_index("cluster")
    if order == "disparity":
        return comparison.clusters["cluster"].tolist()  # already by |disparity|, largest first
    if order == "mean":
        means = comparison.segments.groupby("cluster")["attribution"].mean().reindex(summary.index).fillna(0.0)
        return means.sort_values(ascending=False, kind="stable").index.tolist()
    spread = _distances_to_centroid(comparison).groupby(comparison.segments["cluster"]).mean().reindex(summary.index)
    return spread.sort_values(kind="stable").index.tolist()


def _distances_to_centroid(comparison: Comparison) -> pd.Series:
    clusters = comparison.segments["cluster"].to_numpy()
    embeddings = np.asarray(comparison.embeddings, dtype=np.float64)
    centroids = {cluster: embeddings[clusters == cluster].mean(axis=0) for cluster in np.unique(clusters)}
    return pd.Series(np.linalg.norm(embeddings - np.stack([centroids[c] for c in clusters]), axis=1))


def concept_cluster_board(comparison: Comparison, segments: pd.DataFrame, order: list[int], per_row: int,
                          pictures: dict[str, np.ndarray]) -> tuple[TileBoard, int, dict[int, str]]:
    """IMACS's Concept Cluster view as a board: per cluster a row of A's and a row of B's segments, highest attribution first.

    Borders: the image's confusion cell for the class; the bar under a tile: its attribution relative to the
    largest shown, in the model's colour (grey for a negative one). ``segments`` may be a filtered part of the
    comparison's; each tile's customdata is its row label in ``comparison.segments``.
    """
    summary = comparison.clusters.set_index("cluster")
    chosen, slots, labels = [], [], {}
    for position, cluster in enumerate(order):
        for offset, model in enumerate(("A", "B")):
            members = segments[(segments["cluster"] == cluster) & (segments["model"] == model)]
            top = members.sort_values("attribution", ascending=False, kind="stable").head(per_row)
            row = 2 * position + offset
            chosen.append(top)
            slots += [(column, row) for column in range(len(top))]
            mean = summary.at[cluster, f"mean_{model}"]
            labels[row] = (f"<b>cluster {cluster}</b> · A: {mean:+.3g}" if model == "A" else f"disparity {summary.at[cluster, 'disparity']:+.3g} · B: {mean:+.3g}")
    shown = pd.concat(chosen) if chosen else segments.head(0)
    largest = float(shown["attribution"].abs().max()) if len(shown) else 1.0
    board = TileBoard(
        tiles=crop_tiles(pictures, shown), slots=np.array(slots, dtype=float).reshape(-1, 2),
        borders=[CELL_COLOURS[cell] for cell in shown["cell"]],
        hover=[f"model {r.model} · {r.cell} · attribution {r.attribution:+.3g}<br>image {r.image_id[:10]}… segment {r.segment}" for r in shown.itertuples()],
        customdata=shown.index.to_numpy(), bars=(shown["attribution"] / (largest or 1.0)).to_numpy(),
        bar_colours=[MODEL_COLOURS[model] for model in shown["model"]],
    )
    return board, max(1, per_row), labels


def outlined_segment(picture: np.ndarray, box: tuple[float, float, float, float], scale: int = 4) -> np.ndarray:
    """The source image enlarged ``scale`` times with the segment's box drawn on it (IMACS's future work: the segment in context)."""
    height, width = picture.shape[:2]
    enlarged = Image.fromarray(picture).resize((width * scale, height * scale), Image.Resampling.NEAREST)
    x0, y0, x1, y1 = (value * scale for value in box)
    ImageDraw.Draw(enlarged).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 221, 0), width=max(2, scale))
    return np.asarray(enlarged)
