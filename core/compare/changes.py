"""Which images changed between model versions: the data behind DASH's Mosaic View and Trace View (§3.4).

:func:`version_outcomes` lines up two or more scans of the same images (each
image's label, and per version its prediction and whether it is right).
:func:`confusion_mosaic` lays two versions' confusion matrices out as one
mosaic: a column per true class as wide as the class is common, a cell per
predicted class as tall as the two versions' mean count, coloured by how
version B changed it (more right answers on the diagonal, fewer errors off it,
is better). With more classes than fit, the classes that changed least are
pooled into one "other classes" row and column, so the mosaic stays readable.
:func:`trace_steps` summarises, for each pair of consecutive versions, how many
images went from correct to incorrect and back: the Trace View draws one line
per image when there are few, these bands when there are many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from core.compare.sampling import as_workspace, check_comparable
from core.errors import SliceScopeError
from core.workspace import Workspace

OTHER_CLASSES = "other classes"
STATES = ("correct", "incorrect")
# The share of the mosaic's width left between class columns, so columns of rare classes stay apart.
_COLUMN_GAP = 0.01


@dataclass(frozen=True)
class VersionOutcomes:
    """Several versions' predictions on the same images.

    ``images``: one row per image in the first version's row order (image_id, label,
    and ``row``, its row in every version's workspace, which may differ);
    ``predictions`` and ``correct``: (images × versions) arrays; ``names``: the versions'
    names, in the order given; ``classes``: the class names, in the first version's order.
    """

    names: tuple[str, ...]
    classes: tuple[str, ...]
    images: pd.DataFrame
    rows: np.ndarray
    predictions: np.ndarray
    correct: np.ndarray

    @cached_property
    def _positions(self) -> pd.Index:
        return pd.Index(self.images["image_id"])

    def positions(self, image_ids: Sequence[str]) -> np.ndarray:
        """Indexes (into ``images``) of the given image ids, in their order; ids of no image here are refused."""
        found = self._positions.get_indexer(list(image_ids))
        if (found < 0).any():
            raise SliceScopeError(f"{int((found < 0).sum())} of the selected images are not among these versions' images",
                                  "clear the selection and select again")
        return found

    def always_wrong(self) -> np.ndarray:
        """Indexes of the images every version gets wrong: the edge cases DASH's Trace View exists to find."""
        return np.flatnonzero(~self.correct.any(axis=1))


def version_outcomes(workspaces: Sequence[Workspace | str]) -> VersionOutcomes:
    """Line up the predictions of two or more workspaces that scanned the same images with the same classes.

    >>> outcomes = version_outcomes(["demo/workspace", "demo/workspace-balanced"])  # doctest: +SKIP
    >>> outcomes.correct.mean(axis=0)  # accuracy per version  # doctest: +SKIP
    """
    opened = [as_workspace(workspace) for workspace in workspaces]
    if len(opened) < 2:
        raise SliceScopeError(f"{len(opened)} version given", "choose two or more versions to compare")
    for other in opened[1:]:
        check_comparable(opened[0], other)
    first = opened[0].images
    ids = first["image_id"].astype(str)
    rows, predictions = [], []
    for workspace in opened:
        position = pd.Series(np.arange(len(workspace.images)), index=workspace.images["image_id"].astype(str))
        version_rows = position.loc[ids].to_numpy()
        rows.append(version_rows)
        predictions.append(workspace.images["prediction"].astype(str).to_numpy()[version_rows])
    labels = first["label"].astype(str).to_numpy()
    stacked = np.stack(predictions, axis=1)
    return VersionOutcomes(
        names=tuple(workspace.name for workspace in opened), classes=tuple(opened[0].classes),
        images=pd.DataFrame({"image_id": ids.to_numpy(), "label": labels}), rows=np.stack(rows, axis=1),
        predictions=stacked, correct=stacked == labels[:, None],
    )


def _class_groups(outcomes: VersionOutcomes, a: int, b: int, max_classes: int) -> dict[str, str]:
    """Each class's name in the mosaic: itself for the ``max_classes`` − 1 classes whose cells changed most, else the pooled group."""
    if len(outcomes.classes) <= max_classes:
        return {name: name for name in outcomes.classes}
    changed = outcomes.predictions[:, a] != outcomes.predictions[:, b]
    moved = pd.concat([pd.Series(outcomes.images["label"].to_numpy()[changed]),
                       pd.Series(outcomes.predictions[changed, a]), pd.Series(outcomes.predictions[changed, b])]).value_counts()
    kept = set(moved.reindex(outcomes.classes).fillna(0).sort_values(ascending=False, kind="stable").index[:max_classes - 1])
    return {name: name if name in kept else OTHER_CLASSES for name in outcomes.classes}


def confusion_mosaic(outcomes: VersionOutcomes, a: int = 0, b: int = 1, max_classes: int = 12) -> pd.DataFrame:
    """Versions ``a`` and ``b``'s confusion matrices as one mosaic, one row per non-empty cell.

    Columns: cell (its id), label, prediction (class names, or ``OTHER_CLASSES``),
    count_a, count_b, change (count_b − count_a), improvement (change on the
    diagonal, −change off it: positive where B does better), correct (a diagonal
    cell), and the cell's rectangle x0, x1, y0, y1 in the unit square (true
    classes left to right, predicted classes top to bottom, each in class order).
    """
    if not isinstance(max_classes, int) or max_classes < 2:
        raise SliceScopeError(f"`max_classes` = {max_classes}", "set `max_classes` to 2 or more")
    for index in (a, b):
        if not 0 <= index < len(outcomes.names):
            raise SliceScopeError(f"version {index} of {len(outcomes.names)}", f"set `a` and `b` below {len(outcomes.names)}")
    groups = _class_groups(outcomes, a, b, max_classes)
    order = list(dict.fromkeys(groups[name] for name in outcomes.classes))
    label = outcomes.images["label"].map(groups).to_numpy()
    frame = pd.DataFrame({"label": label, "prediction_a": pd.Series(outcomes.predictions[:, a]).map(groups),
                          "prediction_b": pd.Series(outcomes.predictions[:, b]).map(groups)})
    counts_a = frame.groupby(["label", "prediction_a"]).size()
    counts_b = frame.groupby(["label", "prediction_b"]).size()
    cells = pd.DataFrame({"count_a": counts_a, "count_b": counts_b}).fillna(0).astype(int).rename_axis(["label", "prediction"]).reset_index()
    rank = {name: position for position, name in enumerate(order)}
    cells = cells.sort_values(["label", "prediction"], key=lambda column: column.map(rank), kind="stable").reset_index(drop=True)
    cells["change"] = cells["count_b"] - cells["count_a"]
    cells["correct"] = cells["label"] == cells["prediction"]
    cells["improvement"] = np.where(cells["correct"], cells["change"], -cells["change"])
    column_sizes = frame["label"].value_counts().reindex(order).fillna(0).to_numpy(dtype=np.float64)
    present = column_sizes > 0
    widths = np.zeros_like(column_sizes)
    widths[present] = column_sizes[present] / column_sizes.sum() * (1 - _COLUMN_GAP * (present.sum() - 1))
    starts = np.concatenate([[0.0], np.cumsum(widths + np.where(present, _COLUMN_GAP, 0.0))[:-1]])
    heights = (cells["count_a"] + cells["count_b"]) / 2
    heights = heights / heights.groupby(cells["label"]).transform("sum")
    cells["x0"] = cells["label"].map(dict(zip(order, starts)))
    cells["x1"] = cells["x0"] + cells["label"].map(dict(zip(order, widths)))
    cells["y1"] = 1 - heights.groupby(cells["label"]).cumsum() + heights
    cells["y0"] = cells["y1"] - heights
    cells.insert(0, "cell", np.arange(len(cells)))
    return cells


def mosaic_members(outcomes: VersionOutcomes, cells: pd.DataFrame, picked: Sequence[int], a: int = 0, b: int = 1,
                   max_classes: int = 12) -> np.ndarray:
    """Indexes of the images in the picked mosaic cells under version ``a`` or ``b`` (a cell holds both versions' images)."""
    chosen = cells[cells["cell"].isin(list(picked))]
    if chosen.empty:
        return np.array([], dtype=np.int64)
    groups = _class_groups(outcomes, a, b, max_classes)
    label = outcomes.images["label"].map(groups).to_numpy()
    inside = np.zeros(len(label), dtype=bool)
    for version in (a, b):
        prediction = pd.Series(outcomes.predictions[:, version]).map(groups).to_numpy()
        pairs = pd.MultiIndex.from_arrays([label, prediction])
        inside |= pairs.isin(pd.MultiIndex.from_frame(chosen[["label", "prediction"]]))
    return np.flatnonzero(inside)


def trace_steps(outcomes: VersionOutcomes, images: Sequence[int] | None = None) -> pd.DataFrame:
    """Per pair of consecutive versions and per (from, to) state: how many of ``images`` (default: all) moved that way.

    Columns: step (0 for versions 0 → 1), source, target (``correct`` / ``incorrect``), count, and
    ``images`` (their indexes), so a click on a band selects exactly its images.
    """
    chosen = np.arange(len(outcomes.images)) if images is None else np.asarray(images, dtype=np.int64)
    rows = []
    for step in range(len(outcomes.names) - 1):
        before, after = outcomes.correct[chosen, step], outcomes.correct[chosen, step + 1]
        for source in STATES:
            for target in STATES:
                moved = chosen[(before == (source == "correct")) & (after == (target == "correct"))]
                rows.append({"step": step, "source": source, "target": target, "count": len(moved), "images": moved})
    return pd.DataFrame(rows, columns=["step", "source", "target", "count", "images"])
