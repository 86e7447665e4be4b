"""Plotly figures of the Compare page (no Streamlit here): DASH's Mosaic and Trace views, IMACS's three cluster views.

Tiles (segment crops) are drawn as one composed picture per figure, placed as a
layout image, with an almost transparent square marker over each tile carrying
its segment's row (``customdata``): one image keeps a figure of hundreds of
tiles light, and the markers make every tile clickable and hoverable, which a
layout image alone is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from app.figures import png_data_uri
from core.compare import CELLS, VersionOutcomes
from core.compare.changes import STATES
from core.views import plural

CELL_COLOURS = {"TP": "#2ca02c", "FP": "#ff7f0e", "TN": "#1f77b4", "FN": "#d62728"}
MODEL_COLOURS = {"A": "#7b4173", "B": "#e6a817"}
# DASH's Trace View: red for images a version fixed (incorrect → correct), blue for images it broke.
FIXED_COLOUR, BROKEN_COLOUR, SAME_COLOUR = "#d62728", "#1f77b4", "#c7c7c7"
CHANGE_SCALE = "RdBu"  # diverging: red where B does worse, blue where it does better
TRACE_MAX_LINES = 300  # more images than this are drawn as bands, one per (from, to) state
_TILE_PADDING = 4
_BAR_HEIGHT = 5
_MARKER_OPACITY = 0.01  # invisible but still under the pointer: Plotly ignores clicks on markers of opacity 0


@dataclass(frozen=True)
class TileBoard:
    """Tiles placed on a grid of slots: ``tiles`` (n × s × s × 3 uint8), their ``slots`` (column, row), ``borders``
    (a colour each), optional ``bars`` (−1…1: an attribution bar under the tile, in ``bar_colours``), ``hover`` and
    ``customdata`` (what a click returns)."""

    tiles: np.ndarray
    slots: np.ndarray
    borders: list[str]
    hover: list[str]
    customdata: np.ndarray
    bars: np.ndarray | None = None
    bar_colours: list[str] | None = None


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _compose(board: TileBoard, columns: int, rows: int) -> np.ndarray:
    """The board as one RGBA picture: each slot a tile with a 2-pixel border, and a bar beneath it when given."""
    size = board.tiles.shape[1]
    slot_w, slot_h = size + 2 * _TILE_PADDING, size + 2 * _TILE_PADDING + (_BAR_HEIGHT + 2 if board.bars is not None else 0)
    picture = np.zeros((rows * slot_h, columns * slot_w, 4), dtype=np.uint8)
    for index, (column, row) in enumerate(board.slots.astype(int)):
        top, left = row * slot_h + _TILE_PADDING, column * slot_w + _TILE_PADDING
        picture[top - 2:top + size + 2, left - 2:left + size + 2, :3] = _rgb(board.borders[index])
        picture[top - 2:top + size + 2, left - 2:left + size + 2, 3] = 255
        picture[top:top + size, left:left + size, :3] = board.tiles[index]
        if board.bars is not None:
            length = round(abs(float(board.bars[index])) * size)
            bar_top = top + size + 3
            colour = _rgb(board.bar_colours[index]) if board.bars[index] >= 0 else np.array([150, 150, 150], dtype=np.uint8)
            picture[bar_top:bar_top + _BAR_HEIGHT, left:left + length, :3] = colour
            picture[bar_top:bar_top + _BAR_HEIGHT, left:left + length, 3] = 255
    return picture


def tile_board_figure(board: TileBoard, columns: int, rows: int, row_labels: dict[int, str], title: str,
                      column_labels: dict[int, str] | None = None) -> go.Figure:
    """The tiles as one picture with a clickable marker per tile; rows labelled on the left, optional column labels below."""
    picture = _compose(board, columns, rows)
    figure = go.Figure()
    figure.add_layout_image(source=png_data_uri(picture), xref="x", yref="y", x=0, y=0, sizex=columns, sizey=rows,
                            xanchor="left", yanchor="top", sizing="stretch", layer="below")
    figure.add_trace(go.Scatter(
        x=board.slots[:, 0] + 0.5, y=-(board.slots[:, 1] + 0.5), mode="markers", customdata=board.customdata[:, None],
        hovertext=board.hover, hoverinfo="text", showlegend=False,
        marker={"symbol": "square", "size": 22, "color": "#000000", "opacity": _MARKER_OPACITY},
    ))
    slot_h = board.tiles.shape[1] + 2 * _TILE_PADDING + (_BAR_HEIGHT + 2 if board.bars is not None else 0)
    slot_w = board.tiles.shape[1] + 2 * _TILE_PADDING
    figure.update_xaxes(range=[0, columns], showgrid=False, zeroline=False, fixedrange=True,
                        tickvals=[c + 0.5 for c in (column_labels or {})], ticktext=list((column_labels or {}).values()),
                        visible=bool(column_labels))
    figure.update_yaxes(range=[-rows, 0], showgrid=False, zeroline=False, fixedrange=True,
                        tickvals=[-(r + 0.5) for r in row_labels], ticktext=list(row_labels.values()))
    pixel_scale = 1.4  # tiles drawn a little larger than their pixels
    figure.update_layout(
        height=int(rows * slot_h * pixel_scale) + 60 + (30 if column_labels else 0), width=int(columns * slot_w * pixel_scale) + 220,
        margin={"l": 210, "r": 10, "t": 40, "b": 30 if column_labels else 10}, plot_bgcolor="white",
        title={"text": title, "font": {"size": 12}, "x": 0.01}, dragmode=False,
    )
    return figure


def mosaic_view_figure(cells: pd.DataFrame, picked: list[int], names: tuple[str, str]) -> go.Figure:
    """DASH's Mosaic View: one rectangle per confusion cell, area ∝ the two versions' mean count, colour: B's change.

    Columns are true classes, rows within a column predicted classes; diagonal
    cells carry a thick outline. A marker at each cell's centre holds its id, so a
    click (or shift-click for several) picks cells.
    """
    limit = max(1, int(cells["improvement"].abs().max()) if len(cells) else 1)
    picked_cells = cells["cell"].isin(picked).to_numpy()
    # One bar trace draws every cell (x: column centre, width: column width, base: bottom): a shape per cell
    # would cost Plotly ~10 ms each to add, a second for 10 classes.
    figure = go.Figure(go.Bar(
        x=(cells["x0"] + cells["x1"]) / 2, width=cells["x1"] - cells["x0"], base=cells["y0"], y=cells["y1"] - cells["y0"],
        marker={"color": sample_colorscale(CHANGE_SCALE, (0.5 + 0.5 * np.clip(cells["improvement"].to_numpy() / limit, -1, 1)).tolist()),
                "line": {"color": np.where(picked_cells, "#111111", np.where(cells["correct"], "#555555", "#ffffff")).tolist(),
                         "width": np.where(picked_cells, 4, np.where(cells["correct"], 2, 1)).tolist()}},
        hoverinfo="skip", showlegend=False,
    ))
    centres_x, centres_y = (cells["x0"] + cells["x1"]) / 2, (cells["y0"] + cells["y1"]) / 2
    big = ((cells["x1"] - cells["x0"]) > 0.05) & ((cells["y1"] - cells["y0"]) > 0.04)
    hover = [
        f"<b>{row.label} → {row.prediction}</b><br>{names[0]}: {row.count_a:,}<br>{names[1]}: {row.count_b:,}"
        f"<br>{'better' if row.improvement > 0 else 'worse' if row.improvement < 0 else 'unchanged'} under {names[1]} by {abs(row.change):,}"
        for row in cells.itertuples()
    ]
    figure.add_trace(go.Scatter(
        x=centres_x, y=centres_y, mode="markers+text", text=[f"{a}→{b}" if show else "" for a, b, show in zip(cells["count_a"], cells["count_b"], big)],
        textfont={"size": 10, "color": ["#ffffff" if abs(value) > 0.6 * limit else "#222222" for value in cells["improvement"]]},
        customdata=cells[["cell"]].to_numpy(), hovertext=hover, hoverinfo="text", showlegend=False,
        marker={"size": 14, "color": cells["improvement"], "colorscale": CHANGE_SCALE, "cmin": -limit, "cmax": limit, "opacity": 0.35,
                "colorbar": {"title": "better<br>under B", "len": 0.7}, "line": {"width": 0}},
    ))
    labels = cells.drop_duplicates("label")
    figure.update_xaxes(range=[0, 1], tickvals=((labels["x0"] + labels["x1"]) / 2).tolist(), ticktext=labels["label"].tolist(),
                        title="true class (column width: how common)", showgrid=False, zeroline=False, fixedrange=True)
    figure.update_yaxes(range=[0, 1], visible=False, fixedrange=True)
    figure.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 40}, plot_bgcolor="white", bargap=0,
                         title={"text": "Mosaic View · cell: true → predicted class, 'count under A → under B' · click to select, shift-click for several",
                                "font": {"size": 12}, "x": 0.01})
    return figure


def trace_figure(outcomes: VersionOutcomes, images: np.ndarray, steps: pd.DataFrame, max_lines: int = TRACE_MAX_LINES) -> go.Figure:
    """DASH's Trace View across the versions: correct on the upper row, incorrect on the lower, one line per image.

    With more than ``max_lines`` images, each (from, to) pair of a step is one
    band whose width grows with its count. The marker halfway along a line or
    band selects its images (customdata: the row in ``steps``).
    """
    figure = go.Figure()
    n_versions = len(outcomes.names)
    level = {"correct": 1.0, "incorrect": 0.0}
    per_image = len(images) <= max_lines
    if per_image and len(images):
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(images))
        for step in range(n_versions - 1):
            before, after = outcomes.correct[images, step], outcomes.correct[images, step + 1]
            for colour, moved in ((SAME_COLOUR, before == after), (FIXED_COLOUR, ~before & after), (BROKEN_COLOUR, before & ~after)):
                chosen = np.flatnonzero(moved)
                if not len(chosen):
                    continue
                xs = np.column_stack([np.full(len(chosen), step), np.full(len(chosen), step + 1), np.full(len(chosen), np.nan)]).ravel()
                ys = np.column_stack([before[chosen] + jitter[chosen], after[chosen] + jitter[chosen], np.full(len(chosen), np.nan)]).ravel()
                figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": 1}, opacity=0.6, hoverinfo="skip", showlegend=False))
    largest = max(1, int(steps["count"].max()) if len(steps) else 1)
    for row in steps.itertuples():
        if row.count == 0:
            continue
        colour = SAME_COLOUR if row.source == row.target else (FIXED_COLOUR if row.target == "correct" else BROKEN_COLOUR)
        if not per_image:
            figure.add_trace(go.Scatter(x=[row.step, row.step + 1], y=[level[row.source], level[row.target]], mode="lines", hoverinfo="skip",
                                        line={"color": colour, "width": 2 + 28 * row.count / largest}, opacity=0.7, showlegend=False))
    midpoints = steps[steps["count"] > 0]
    # Fixed and broken lines cross halfway: their dots sit on the lines, before and after the crossing.
    along = np.array([0.5 if s == t else (0.35 if t == "correct" else 0.65) for s, t in zip(midpoints["source"], midpoints["target"])])
    sources, targets = midpoints["source"].map(level).to_numpy(), midpoints["target"].map(level).to_numpy()
    figure.add_trace(go.Scatter(
        x=midpoints["step"] + along, y=sources + along * (targets - sources),
        mode="markers+text", text=[f"{c:,}" for c in midpoints["count"]], textposition="top center",
        customdata=midpoints.index.to_numpy()[:, None], hoverinfo="text", showlegend=False,
        hovertext=[f"{plural(c, 'image')}: {s} under {outcomes.names[st]} → {t} under {outcomes.names[st + 1]}"
                   for c, s, t, st in zip(midpoints["count"], midpoints["source"], midpoints["target"], midpoints["step"])],
        marker={"size": 12, "color": [SAME_COLOUR if s == t else (FIXED_COLOUR if t == "correct" else BROKEN_COLOUR)
                                      for s, t in zip(midpoints["source"], midpoints["target"])], "line": {"width": 1, "color": "#333333"}},
    ))
    accuracy = outcomes.correct[images].mean(axis=0) if len(images) else np.zeros(n_versions)
    figure.update_xaxes(range=[-0.3, n_versions - 0.7], tickvals=list(range(n_versions)), showgrid=False, zeroline=False, fixedrange=True,
                        ticktext=[f"{name}<br>{share:.0%} correct" for name, share in zip(outcomes.names, accuracy)])
    figure.update_yaxes(range=[-0.35, 1.35], tickvals=[1, 0], ticktext=list(STATES), showgrid=False, zeroline=False, fixedrange=True)
    drawn = "a line each" if per_image else "bands ∝ count"
    figure.update_layout(height=400, margin={"l": 10, "r": 10, "t": 60, "b": 50}, plot_bgcolor="white", dragmode=False,
                         title={"text": f"Trace View · {plural(len(images), 'image')}, {drawn}<br>red: fixed, blue: broken · click a dot to select",
                                "font": {"size": 12}, "x": 0.01})
    return figure


def cluster_histogram_figure(segments: pd.DataFrame, order: list[int], bins: int = 24) -> go.Figure:
    """IMACS's Cluster Histogram: per cluster, model A's segments bucketed by attribution above the axis, B's mirrored below, one shared x-axis.

    The buckets span the 1st to 99th percentile of all attributions (values beyond fall in the end buckets): Shapley
    values are heavy-tailed, and buckets over the full range would put most segments of every cluster in one or two.
    """
    low, high = np.percentile(segments["attribution"], [1, 99]) if len(segments) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1e-6, bins + 1)
    clipped = segments["attribution"].clip(edges[0], edges[-1])
    figure = make_subplots(rows=len(order), cols=1, shared_xaxes=True, vertical_spacing=0.02,
                           subplot_titles=[f"cluster {c}" for c in order])
    centres = (edges[:-1] + edges[1:]) / 2
    for row, cluster in enumerate(order, start=1):
        members = segments[segments["cluster"] == cluster]
        for model, sign in (("A", 1), ("B", -1)):
            counts, _ = np.histogram(clipped[members.index[members["model"] == model]], bins=edges)
            figure.add_trace(go.Bar(x=centres, y=sign * counts, width=np.diff(edges) * 0.95, marker_color=MODEL_COLOURS[model],
                                    name=f"model {model}", showlegend=row == 1, customdata=counts,
                                    hovertemplate=f"model {model}: %{{customdata}} segments<br>attribution ≈ %{{x:.3g}}<extra>cluster {cluster}</extra>"),
                             row=row, col=1)
    figure.update_yaxes(showticklabels=False, zeroline=True, zerolinecolor="#555555")
    figure.update_xaxes(title_text="segment attribution (Shapley value)", row=len(order), col=1)
    figure.update_annotations(font_size=11, x=0.0, xanchor="left")
    figure.update_layout(height=90 * len(order) + 80, barmode="relative", margin={"l": 10, "r": 10, "t": 50, "b": 40}, plot_bgcolor="white",
                         legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
                         title={"text": "Cluster Histogram · A's segments above the axis, B's below", "font": {"size": 12}, "x": 0.01})
    return figure


def cluster_confusion_figure(segments: pd.DataFrame, cluster: int, class_name: str) -> go.Figure:
    """IMACS's Cluster Confusion Matrix: one cluster's segments in each model's one-vs-rest confusion matrix, side by side."""
    layout = {"TP": (0, 0), "FN": (0, 1), "FP": (1, 0), "TN": (1, 1)}  # (row: actual, column: predicted)
    figure = make_subplots(rows=1, cols=2, subplot_titles=["model A", "model B"], horizontal_spacing=0.12)
    members = segments[segments["cluster"] == cluster]
    for column, model in enumerate(("A", "B"), start=1):
        mine = members[members["model"] == model]
        counts, text = np.zeros((2, 2)), np.empty((2, 2), dtype=object)
        for cell, (row, col) in layout.items():
            here = mine[mine["cell"] == cell]
            counts[row, col] = len(here)
            mean = f"<br>{here['attribution'].mean():+.3g} per segment" if len(here) else ""
            text[row, col] = f"{cell}: {len(here)}{mean}"
        figure.add_trace(go.Heatmap(z=counts, text=text, texttemplate="%{text}", colorscale="Purples" if model == "A" else "YlOrBr",
                                    showscale=False, x=[f"predicted {class_name}", "predicted other"], y=[f"is {class_name}", "is other"],
                                    hovertemplate="%{text}<extra></extra>"), row=1, col=column)
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         title={"text": f"Cluster Confusion Matrix · cluster {cluster}", "font": {"size": 12}, "x": 0.01})
    return figure


def cluster_plots_figure(segments: pd.DataFrame, cluster: int, per: str = "image") -> go.Figure:
    """One cluster's composition (segments per confusion cell and model) and importance (mean attribution per model, ±1 s.e.),
    averaged ``per`` image (its segments in the cluster summed, as the cluster summary does) or per segment."""
    members = segments[segments["cluster"] == cluster]
    if per == "image":
        averaged = members.groupby(["model", "image_id"])["attribution"].sum().reset_index()
    else:
        averaged = members
    figure = make_subplots(rows=1, cols=2, subplot_titles=["composition (segments)", f"attribution per {per}"], horizontal_spacing=0.15)
    for cell in CELLS:
        counts = [int(((members["model"] == model) & (members["cell"] == cell)).sum()) for model in ("A", "B")]
        figure.add_trace(go.Bar(x=["model A", "model B"], y=counts, name=cell, marker_color=CELL_COLOURS[cell]), row=1, col=1)
    stats = averaged.groupby("model")["attribution"].agg(["mean", "sem"]).reindex(["A", "B"]).fillna(0.0)
    figure.add_trace(go.Bar(x=["model A", "model B"], y=stats["mean"], error_y={"type": "data", "array": stats["sem"]}, showlegend=False,
                            marker_color=[MODEL_COLOURS["A"], MODEL_COLOURS["B"]]), row=1, col=2)
    figure.update_layout(barmode="stack", height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h", "y": -0.15})
    return figure


def position_heatmap_figure(segments: pd.DataFrame, cluster: int, image_size: int, grid: int) -> go.Figure:
    """Where in the images a cluster's segments lie: how many segment centres fall in each of ``grid`` × ``grid`` regions."""
    members = segments[segments["cluster"] == cluster]
    centre_x = ((members["x0"] + members["x1"]) / 2 / image_size * grid).clip(0, grid - 1e-9).astype(int)
    centre_y = ((members["y0"] + members["y1"]) / 2 / image_size * grid).clip(0, grid - 1e-9).astype(int)
    counts = np.zeros((grid, grid))
    np.add.at(counts, (centre_y.to_numpy(), centre_x.to_numpy()), 1)
    figure = go.Figure(go.Heatmap(z=counts, colorscale="Greys", showscale=False, xgap=1, ygap=1, hovertemplate="%{z:.0f} segments<extra></extra>"))
    figure.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    figure.update_xaxes(visible=False)
    figure.update_layout(plot_bgcolor="#dddddd")
    figure.update_layout(height=240, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         title={"text": "where in the image (darker: more of the cluster's segments)", "font": {"size": 12}, "x": 0.01})
    return figure
