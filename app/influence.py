"""What the Influence page caches and draws: InfEmbed and InfEmbed-Rule slices, opponents, the split tree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.ui import REPRESENTATION_LABELS, load_workspace
from core.influence import RuleParams, compare_slicings, influence_embeddings, slice_opponents
from core.influence import infembed_table as infembed_slice_table
from core.influence import rule_table as rule_slice_table
from core.slicing import ProjectionParams, SliceParams, find_slices, project
from core.views import readable_number, typical_members


@st.cache_data(show_spinner=False, max_entries=8)
def infembed_table(path: str, k: int) -> tuple[np.ndarray, pd.DataFrame]:
    """InfEmbed's slice per image and its Slice Table, with each slice's coherence."""
    return infembed_slice_table(load_workspace(path), SliceParams(k=k))


@st.cache_data(show_spinner=False, max_entries=8)
def rule_table(path: str, max_accuracy: float, min_size: int, branching: int) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """InfEmbed-Rule's slice per image, its Slice Table (with each slice's path in the split tree) and the tree."""
    return rule_slice_table(load_workspace(path), RuleParams(max_accuracy=max_accuracy, min_size=min_size, branching=branching))


@st.cache_data(show_spinner=False, max_entries=32)
def opponents(path: str, slice_ids: np.ndarray, slice_id: int, k: int) -> pd.DataFrame:
    return slice_opponents(load_workspace(path), slice_ids == slice_id, k=k)


@st.cache_data(show_spinner=False, max_entries=32)
def typical_rows(path: str, slice_ids: np.ndarray, slice_id: int, n: int) -> np.ndarray:
    """The slice's members nearest its mean influence embedding: what the opponents pull against."""
    return typical_members(influence_embeddings(load_workspace(path)), slice_ids, slice_id, n)


@st.cache_data(show_spinner=False, max_entries=4)
def comparison(path: str, k: int) -> pd.DataFrame:
    return compare_slicings(load_workspace(path), k=k)


def tree_figure(tree: pd.DataFrame, max_accuracy: float) -> go.Figure:
    """The split tree as an icicle: area is size, colour is accuracy, flagged leaves say so; click to zoom."""
    labels = ["all" if path == "" else path.rsplit("/", 1)[-1] for path in tree["path"]]
    text = [f"slice {slice_id}" + (" · flagged" if flagged else "") if leaf else "" for slice_id, leaf, flagged
            in zip(tree["slice"], tree["leaf"], tree["flagged"], strict=True)]
    figure = go.Figure(go.Icicle(
        ids=tree["path"].replace("", "root"), parents=tree["parent"].fillna("").replace("", "root").where(tree["path"] != "", ""),
        labels=labels, values=tree["size"], branchvalues="total", text=text,
        marker={"colors": tree["accuracy"], "colorscale": "RdYlGn", "cmin": 0.0, "cmax": 1.0,
                "colorbar": {"title": {"text": "accuracy"}}},
        hovertemplate="path %{id}<br>%{value} images<br>accuracy %{color:.0%}<br>%{text}<extra></extra>",
        tiling={"orientation": "v"},
    ))
    figure.update_layout(height=420, margin={"l": 0, "r": 0, "t": 30, "b": 0},
                         title={"text": f"Split tree: a leaf is flagged when its accuracy ≤ {max_accuracy:.0%}", "font": {"size": 13}})
    return figure


@st.cache_data(show_spinner=False, max_entries=4)
def side_by_side(path: str, k: int) -> go.Figure:
    """The three layouts (F_W, F, μ), each coloured by the accuracy of the slice its own K-Means put the image in:
    where one representation gathers the errors into a few red slices, another may scatter them."""
    workspace = load_workspace(path)
    correct = workspace.images["correct"].to_numpy(dtype=bool)
    names = ("attribution", "features", "influence")
    figure = make_subplots(rows=1, cols=3, subplot_titles=[REPRESENTATION_LABELS[name] for name in names], horizontal_spacing=0.03)
    for column, name in enumerate(names, start=1):
        layout = project(workspace, name, ProjectionParams())
        slice_ids = find_slices(workspace, name, SliceParams(k=k))
        accuracy = pd.Series(correct).groupby(slice_ids).transform("mean").to_numpy()
        figure.add_trace(go.Scattergl(
            x=layout[:, 0], y=layout[:, 1], mode="markers", showlegend=False,
            marker={"size": 4, "color": accuracy, "colorscale": "RdYlGn", "cmin": 0.0, "cmax": 1.0,
                    "colorbar": {"title": {"text": "slice accuracy"}} if column == 3 else None, "showscale": column == 3},
            customdata=np.stack([slice_ids, accuracy], axis=1),
            hovertemplate="slice %{customdata[0]}<br>slice accuracy %{customdata[1]:.0%}<extra></extra>",
        ), row=1, col=column)
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_layout(height=360, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return figure


def opponents_grid(path: str, slice_ids: np.ndarray, slice_id: int, k: int = 10) -> None:
    """The slice's opponents as captioned thumbnails: the training images whose influence on its loss is most negative."""
    against = opponents(path, slice_ids, slice_id, k)
    st.image([str(file) for file in against["file"]], width=96,
             caption=[f"label: {label} · influence {readable_number(score)}" for label, score in zip(against["label"], against["influence"], strict=True)])
    st.caption("Removing an opponent from training would lower the slice's loss: look for what they share with the slice "
               "(a background, a colour, a mark) and what their labels say.")

