"""The classifier board, shared by the Mitigate and Versions pages: metric names, charts, version switch, model files.

Charts follow DASH's classifier board: loss and accuracy per epoch, training in
red and validation in blue, so a retraining can be watched and two versions
compared at a glance.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.mitigation import MODEL_FILE, TORCHSCRIPT_FILE, job_folder

METRICS = {
    "clean_acc": "Clean accuracy",
    "core_acc": "Core accuracy",
    "spurious_acc": "Spurious accuracy",
    "rcs": "RCS",
    "worst_group_acc": "Worst-group accuracy",
}
METRIC_HELP = {
    "clean_acc": "Accuracy on the images as they are.",
    "core_acc": "Accuracy with noise on the spurious regions: high when the model uses the core.",
    "spurious_acc": "Accuracy with noise on the core regions: high when the model uses the spurious regions (lower is better).",
    "rcs": "Relative core sensitivity: the core–spurious gap relative to the largest possible at that noise robustness (higher is better).",
    "worst_group_acc": "Accuracy of the worst ground-truth group (or slice, when the dataset has no groups).",
}
METRIC_COLUMNS = {
    key: st.column_config.NumberColumn(label, help=METRIC_HELP[key], format="%.3f" if key == "rcs" else "percent")
    for key, label in METRICS.items()
}
TRAIN_COLOUR, VALIDATION_COLOUR = "#d62728", "#1f77b4"
VERDICT_COLOURS = {"improved": "#2ca02c", "regressed": "#d62728", "unchanged": "#9e9e9e"}


def history_figure(history: list[dict], epochs: int | None = None) -> go.Figure:
    """Loss and accuracy per epoch, training and validation; the x axis spans all ``epochs`` while training runs."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.12)
    epoch = [row["epoch"] for row in history]
    for split, name, colour in (("train", "training", TRAIN_COLOUR), ("val", "validation", VALIDATION_COLOUR)):
        for column, metric in ((1, "loss"), (2, "acc")):
            figure.add_trace(go.Scatter(
                x=epoch, y=[row[f"{split}_{metric}"] for row in history], name=name, legendgroup=split, showlegend=column == 1,
                mode="lines+markers", line={"color": colour},
                hovertemplate=f"{name} {'loss %{y:.3f}' if metric == 'loss' else 'accuracy %{y:.1%}'} · epoch %{{x}}<extra></extra>",
            ), row=1, col=column)
    last = max(epochs or 0, max(epoch, default=1))
    figure.update_xaxes(title_text="epoch", range=[0.5, last + 0.5], dtick=1 if last <= 20 else None)
    figure.update_yaxes(tickformat=".1%", row=1, col=2)
    figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return figure


def versions_figure(board: pd.DataFrame) -> go.Figure:
    """The metrics of every evaluated version side by side, one bar per version."""
    figure = go.Figure()
    for row in board.dropna(subset=["clean_acc"]).itertuples():
        values = [getattr(row, key) for key in METRICS]
        figure.add_trace(go.Bar(
            x=list(METRICS.values()), y=values, name=f"v{row.version} · {row.mitigation}",
            text=[f"{value:.2f}" if key == "rcs" else f"{value:.0%}" for key, value in zip(METRICS, values)],
            hovertemplate="%{x}: %{text}<extra>v" + str(row.version) + "</extra>",
        ))
    # RCS falls below 0 for a model that leans on the spurious regions; the axis must show that.
    lowest = min(0.0, float(board[list(METRICS)].min().min()))
    figure.update_layout(barmode="group", height=320, yaxis={"range": [lowest - 0.05 if lowest < 0 else 0, 1]},
                         margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend={"orientation": "h", "y": -0.15})
    return figure


def slice_change_figure(changes: pd.DataFrame) -> go.Figure:
    """Per slice of the line's first version: accuracy change, coloured by verdict, worst first."""
    labels = [f"slice {s}" for s in changes["slice"]]
    figure = go.Figure(go.Bar(
        x=labels, y=changes["change"], marker_color=[VERDICT_COLOURS[v] for v in changes["verdict"]],
        customdata=changes[["before", "after", "verdict"]].to_numpy(),
        hovertemplate="%{x}: %{customdata[0]:.0%} → %{customdata[1]:.0%} (%{customdata[2]})<extra></extra>",
    ))
    figure.update_layout(height=300, yaxis={"title": "accuracy change", "tickformat": "+.0%"}, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={"categoryorder": "array", "categoryarray": labels})
    return figure


def _metric_text(key: str, value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.3f}" if key == "rcs" else f"{value * 100:{sign}.1f}" + (" pp" if signed else "%")


def show_metric_changes(before: dict, after: dict, before_name: str, after_name: str) -> None:
    """A table of the metrics of two versions and their difference (percentage points for accuracies)."""
    rows = [
        {"metric": label, before_name: _metric_text(key, before[key]), after_name: _metric_text(key, after[key]),
         "change": _metric_text(key, after[key] - before[key], signed=True)}
        for key, label in METRICS.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={"metric": "Metric", "change": "Change"})
    if before.get("regions") != after.get("regions") or before.get("sigma") != after.get("sigma"):
        st.warning("These two versions were evaluated with different regions or noise, so their numbers do not compare: "
                   "re-evaluate both on the Versions page with the same regions.", icon=":material/warning:")


def switch_version(path: str) -> None:
    """Button callback: make ``path`` the System Menu's model version (before the menu's widgets are drawn)."""
    # The query parameter makes the menu list the version even where its folder is not among the discovered workspaces.
    st.query_params["workspace"] = path
    st.session_state["menu_workspace"] = path


def model_downloads(version_path: Path, key: str) -> None:
    """Download buttons for a retrained version's state_dict and TorchScript files, where they exist."""
    folder = job_folder(version_path)
    files = [(MODEL_FILE, "state_dict"), (TORCHSCRIPT_FILE, "TorchScript")]
    available = [(name, what) for name, what in files if (folder / name).is_file()]
    if not available:
        return
    columns = st.columns(len(available))
    for column, (name, what) in zip(columns, available):
        path = folder / name
        column.download_button(
            f"Model ({what})", data=path.read_bytes, file_name=f"{version_path.name}-{name}", mime="application/octet-stream",
            on_click="ignore", icon=":material/download:", key=f"{key}-{name}", width="stretch",
        )
