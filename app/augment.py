"""The Augment page's cached data: the training view (decoded and attributed once) and the Cluster View's clusters."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.ui import load_workspace, streamlit_progress
from core.mitigation import TrainingView, load_training_view, style_clusters
from core.training import TrainingData


@st.cache_resource(show_spinner=False)
def _views() -> dict[tuple, TrainingView]:
    """The latest training view per server (a few hundred MB for 100k images: one is kept)."""
    return {}


def training_view(path: str, slicing_key: tuple, slice_ids: np.ndarray, relabels: tuple, training: TrainingData) -> TrainingView:
    """The training images as the augmentation reads them; ``slicing_key``, ``relabels`` and ``training`` say when to recompute.

    Cached by hand rather than with st.cache_resource, whose replay would redraw the progress box of the first run
    in its running state on every later run.
    """
    views, key = _views(), (path, slicing_key, relabels, training)
    if key not in views:
        with st.status("Reading the training images and placing them in the slices…", expanded=True) as box:
            view = load_training_view(load_workspace(path), slice_ids, dict(relabels), training, streamlit_progress(st))
            box.update(label=f"{len(view.labels):,} training images read", state="complete", expanded=False)
        views.clear()
        views[key] = view
    return views[key]


@st.cache_data(show_spinner="Clustering the training images…", max_entries=8)
def clusters(path: str, slicing_key: tuple, training_fingerprint: str, k: int, _features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return style_clusters(_features, k)
