"""Slices page: the Slice Table beside the 2-D representation space."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.ui import COLOUR_LABELS, REPRESENTATION_LABELS, load_layout, load_slices, load_workspace, show_error
from core.errors import SliceScopeError

SLICE_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#637939", "#3182bd", "#fd8d3c", "#74c476", "#9e9ac8",
]


def scatter_figure(layout, images, slice_ids, table, colour: str, selected: list[int]) -> go.Figure:
    correct = images["correct"].to_numpy()
    hover = [
        f"slice {s}<br>label: {l}<br>prediction: {p}<br>confidence: {c:.0%}"
        for s, l, p, c in zip(slice_ids, images["label"], images["prediction"], images["confidence"])
    ]
    if colour == "slice":
        marker_colour = [SLICE_PALETTE[s % len(SLICE_PALETTE)] for s in slice_ids]
        colour_bar = {}
    elif colour == "accuracy":
        marker_colour = table.set_index("slice")["accuracy"].reindex(slice_ids).to_numpy()
        colour_bar = {"colorscale": "RdYlGn", "cmin": 0, "cmax": 1, "colorbar": {"title": "slice accuracy", "tickformat": ".0%"}}
    elif colour == "confidence":
        marker_colour = images["confidence"].to_numpy()
        colour_bar = {"colorscale": "Viridis", "cmin": 0, "cmax": 1, "colorbar": {"title": "confidence", "tickformat": ".0%"}}
    else:
        marker_colour = np.where(correct, "#4c78a8", "#e45756")
        colour_bar = {}
    opacity = np.where(np.isin(slice_ids, selected), 1.0, 0.12) if selected else np.full(len(slice_ids), 0.75)
    figure = go.Figure()
    figure.add_trace(go.Scattergl(
        x=layout[:, 0], y=layout[:, 1], mode="markers", text=hover, hoverinfo="text", showlegend=False,
        marker={"color": marker_colour, "size": 6, "opacity": opacity, "symbol": np.where(correct, "circle", "x"), **colour_bar},
    ))
    centres = (
        images.assign(x=layout[:, 0], y=layout[:, 1], slice=slice_ids).groupby("slice")[["x", "y"]].median()
    )
    figure.add_trace(go.Scatter(
        x=centres["x"], y=centres["y"], mode="text", text=[str(s) for s in centres.index], hoverinfo="skip",
        textfont={"size": 11, "color": "#222"}, showlegend=False,
    ))
    figure.update_layout(
        height=620, margin={"l": 10, "r": 10, "t": 30, "b": 10}, dragmode="lasso",
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"}, plot_bgcolor="white",
        title={"text": "● correct   ✕ misclassified   (numbers: slice ids)", "font": {"size": 12}},
    )
    return figure


def main() -> None:
    selection = st.session_state.get("selection")
    if selection is None:
        st.title("Slices")
        st.info("Choose a workspace in the System Menu on the left.")
        return
    workspace = load_workspace(str(selection.workspace))
    images = workspace.images
    st.title(f"Slices · {workspace.name}")
    try:
        slice_ids, table = load_slices(str(selection.workspace), selection.representation, selection.k)
        layout = load_layout(str(selection.workspace), selection.representation)
    except SliceScopeError as error:
        show_error(error)
        return

    overview = st.columns(4)
    overview[0].metric("Images", f"{len(images):,}")
    overview[1].metric("Accuracy", f"{images['correct'].mean():.1%}")
    overview[2].metric("Slices", len(table))
    overview[3].metric("Slices below 80% accuracy", int((table["accuracy"] < 0.8).sum()))

    table_column, plot_column = st.columns([5, 6])
    with table_column:
        st.subheader("Slice Table")
        st.caption("Click rows to highlight slices in the plot; click a header to sort.")
        shown = table[["slice", "size", "accuracy", "mean_confidence", "errors", "dominant_label", "dominant_prediction", "confusion"]]
        event = st.dataframe(
            shown.sort_values("accuracy"),
            hide_index=True,
            height=min(560, 35 * (len(shown) + 1) + 3),
            on_select="rerun",
            selection_mode="multi-row",
            key="slice_table",
            column_config={
                "slice": st.column_config.NumberColumn("Slice", width="small"),
                "size": st.column_config.NumberColumn("Size"),
                "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
                "mean_confidence": st.column_config.NumberColumn("Confidence", format="percent"),
                "errors": st.column_config.NumberColumn("Errors"),
                "dominant_label": "Label",
                "dominant_prediction": "Prediction",
                "confusion": st.column_config.TextColumn("label → prediction counts", width="large"),
            },
        )
        sorted_slices = shown.sort_values("accuracy")["slice"].to_numpy()
        selected = [int(sorted_slices[row]) for row in event.selection.rows]
    with plot_column:
        st.subheader(REPRESENTATION_LABELS[selection.representation])
        st.caption(f"UMAP layout, coloured by {COLOUR_LABELS[selection.colour].lower()}." + (f" Highlighted: slices {', '.join(map(str, selected))}." if selected else ""))
        st.plotly_chart(scatter_figure(layout, images, slice_ids, table, selection.colour, selected), width="stretch", key="scatter")


main()
