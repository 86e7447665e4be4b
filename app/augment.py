"""The Augment page's cached data: the training view (decoded and attributed once) and the Cluster View's clusters."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.ui import load_workspace, streamlit_progress
from core.mitigation import TrainingView, load_training_view, style_clusters
from core.training import TrainingData


@st.cache_resource(show_spinner=False, max_entries=2)
def training_view(path: str, slicing_key: tuple, _slice_ids: np.ndarray, relabels: tuple, training: TrainingData) -> TrainingView:
    """The training images as the augmentation reads them; ``slicing_key`` and ``relabels`` say when to recompute."""
    with st.status("Reading the training images and placing them in the slices…", expanded=True) as box:
        view = load_training_view(load_workspace(path), _slice_ids, dict(relabels), training, streamlit_progress(st))
        box.update(label=f"{len(view.labels):,} training images read", state="complete", expanded=False)
    return view


@st.cache_data(show_spinner="Clustering the training images…", max_entries=8)
def clusters(path: str, slicing_key: tuple, training_fingerprint: str, k: int, _features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return style_clusters(_features, k)
