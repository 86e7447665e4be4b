"""The data behind the analyst views: selections, confusion cells, typical members, hulls, exports.

AttributionScanner's experts asked for confusion-matrix cells named in words
("label: waterbird · prediction: landbird") rather than "FN", and for slices
they can pick in a table or draw around in a scatter and then read image by
image. These functions turn a workspace's image table, slice ids and 2-D layout
into exactly those pieces, without any UI code, so they are tested here and
reused by every page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

MEMBER_ORDERS = {
    "confidence_desc": "Most confident first",
    "confidence_asc": "Least confident first",
    "loss_desc": "Highest loss first",
}
EXPORT_COLUMNS = ["image_id", "path", "label", "prediction", "confidence", "loss", "correct", "slice"]
MATRIX_MAX_CLASSES = 5  # beyond this a label × prediction grid has too many tiny cells
GRID_MAX_CELLS = 12


def cell_title(label: str, prediction: str) -> str:
    """A confusion-matrix cell named in words, as the paper's experts asked."""
    return f"label: {label} · prediction: {prediction}"


def confusion_cells(images: pd.DataFrame, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """Images per (label, prediction) cell, optionally among ``rows`` only.

    Columns: ``label, prediction, count, correct, title``; cells with no images
    are left out; correct cells first, then errors by size.
    """
    frame = images if rows is None else images.iloc[np.asarray(rows, dtype=np.int64)]
    counts = frame.groupby(["label", "prediction"]).size().rename("count").reset_index()
    counts["correct"] = counts["label"] == counts["prediction"]
    counts["title"] = [cell_title(label, prediction) for label, prediction in zip(counts["label"], counts["prediction"])]
    return counts.sort_values(["correct", "count"], ascending=[False, False]).reset_index(drop=True)


def split_view_cells(cells: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """The cells (from :func:`confusion_cells`) that a view split by confusion cell draws.

    A full label × prediction matrix for up to ``MATRIX_MAX_CLASSES`` classes;
    beyond that the first ``GRID_MAX_CELLS`` (correct cells, then errors by size).
    """
    return cells if n_classes <= MATRIX_MAX_CLASSES else cells.head(GRID_MAX_CELLS)


def members(slice_ids: np.ndarray, slices: Iterable[int]) -> np.ndarray:
    """Row positions of the images in any of ``slices``."""
    return np.flatnonzero(np.isin(slice_ids, np.fromiter(slices, dtype=np.int64)))


def slices_of(slice_ids: np.ndarray, rows: Sequence[int]) -> list[int]:
    """The slices that the images at ``rows`` belong to, in ascending order."""
    if len(rows) == 0:
        return []
    return sorted(int(s) for s in np.unique(slice_ids[np.asarray(rows, dtype=np.int64)]))


def order_members(images: pd.DataFrame, rows: Sequence[int], order: str) -> np.ndarray:
    """``rows`` sorted for the detail view (see ``MEMBER_ORDERS``); ties keep row order."""
    if order not in MEMBER_ORDERS:
        raise ValueError(f"unknown order '{order}'; use one of: {', '.join(MEMBER_ORDERS)}")
    rows = np.asarray(rows, dtype=np.int64)
    column, descending = {"confidence_desc": ("confidence", True), "confidence_asc": ("confidence", False), "loss_desc": ("loss", True)}[order]
    values = images[column].to_numpy()[rows]
    keys = -values if descending else values
    return rows[np.argsort(keys, kind="stable")]


def typical_members(features: np.ndarray, slice_ids: np.ndarray, slice_id: int, n: int) -> np.ndarray:
    """Rows of the ``n`` members of ``slice_id`` closest to the slice's centroid in ``features``, closest first.

    With F_W as ``features`` these are the images whose attributions are most
    like the slice's mean, the vector its tile in the combined mosaic inverts.
    Only the members' rows are read, so a memory-mapped array stays on disk.
    """
    rows = np.flatnonzero(slice_ids == slice_id)
    vectors = np.asarray(features[rows], dtype=np.float32)
    distances = np.linalg.norm(vectors - vectors.mean(axis=0), axis=1)
    return rows[np.argsort(distances, kind="stable")[:n]]


def in_cell(images: pd.DataFrame, rows: Sequence[int], label: str, prediction: str) -> np.ndarray:
    """The ``rows`` whose image has this label and prediction."""
    rows = np.asarray(rows, dtype=np.int64)
    chosen = images.iloc[rows]
    return rows[(chosen["label"].to_numpy() == label) & (chosen["prediction"].to_numpy() == prediction)]


def caption(label: str, prediction: str, confidence: float) -> str:
    """One image's caption, in words."""
    return f"label: {label} · prediction: {prediction} · {confidence:.0%}"


# Points of a slice closer than this (a share of the layout's larger side) lie on one island; islands farther apart
# are outlined apart.
HULL_ISLAND_GAP = 0.05


def slice_hulls(layout: np.ndarray, slice_ids: np.ndarray, slices: Iterable[int], island_gap: float = HULL_ISLAND_GAP) -> dict[int, list[np.ndarray]]:
    """Closed convex-hull outlines (M × 2, first point repeated) of each island of each slice's 2-D points.

    UMAP often draws one slice as several islands; one hull around all of them would cover the empty space and the
    other slices between. Islands are the connected occupied cells of a grid of side ``island_gap`` × the layout's
    larger side (8-neighbour): linear in the points, where linkage clustering would need all pairwise distances.
    Islands with fewer than three distinct points, or all on a line, have no area to outline and are left out, and
    so are slices left with none.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    cell = island_gap * max(float(np.ptp(layout[:, 0])), float(np.ptp(layout[:, 1])), 1e-12)
    outlines: dict[int, list[np.ndarray]] = {}
    for slice_id in slices:
        points = np.unique(np.asarray(layout[slice_ids == slice_id], dtype=np.float64), axis=0)
        if len(points) < 3:
            continue
        cells = np.floor((points - points.min(axis=0)) / cell).astype(np.int64)
        occupied = np.zeros(cells.max(axis=0) + 1, dtype=bool)
        occupied[cells[:, 0], cells[:, 1]] = True
        islands, _ = ndimage.label(occupied, structure=np.ones((3, 3), dtype=bool))
        island_of_point = islands[cells[:, 0], cells[:, 1]]
        for island in np.unique(island_of_point):
            members = points[island_of_point == island]
            if len(members) < 3:
                continue
            try:
                hull = ConvexHull(members)
            except QhullError:
                continue
            vertices = members[hull.vertices]
            outlines.setdefault(int(slice_id), []).append(np.vstack([vertices, vertices[:1]]))
    return outlines


def export_frame(images: pd.DataFrame, rows: Sequence[int], slice_ids: np.ndarray) -> pd.DataFrame:
    """The chosen images as a table for CSV export: ids, paths, labels, predictions, confidence."""
    rows = np.asarray(rows, dtype=np.int64)
    chosen = images.iloc[rows]
    return pd.DataFrame({
        "image_id": chosen["image_id"].to_numpy(),
        "path": chosen["path"].to_numpy(),
        "label": chosen["label"].to_numpy(),
        "prediction": chosen["prediction"].to_numpy(),
        "confidence": chosen["confidence"].to_numpy(),
        "loss": chosen["loss"].to_numpy(),
        "correct": chosen["correct"].to_numpy(),
        "slice": slice_ids[rows],
    })[EXPORT_COLUMNS]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun`` as a person writes them: "1 image", "2,345 images" ("1 box", "3 boxes" with the plural given)."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"


def readable_number(value: float, significant: int = 3) -> str:
    """A number as a person reads it: a few significant digits, thousands separated, never scientific notation.

    294818.19 → "295,000", -3012.4 → "−3,010", 0.012345 → "0.0123".
    """
    if not np.isfinite(value) or value == 0:
        return "0" if value == 0 else str(value)
    decimals = significant - 1 - int(np.floor(np.log10(abs(value))))
    text = f"{round(value, decimals):,.{max(decimals, 0)}f}"
    return text.replace("-", "−")


def version_label(version: int, name: str) -> str:
    """A model version as every page names it: "v2 · demo · biased model" (a mitigated version's own name, which ends
    in " · v2", is not repeated)."""
    suffix = f" · v{version}"
    return f"v{version} · {name.removesuffix(suffix)}"
