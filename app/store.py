"""The annotation store as the app opens it: the configured database, one store per workspace, the analyst's name."""

from __future__ import annotations

import getpass

import streamlit as st

from app.database import configured_database_url
from core.store import ANALYST_MAX_CHARS, AnnotationStore, open_store
from core.workspace import Workspace


@st.cache_resource(show_spinner=False)
def store_for(workspace_path: str) -> AnnotationStore:
    """The annotation store of the workspace's version line, opened once per server."""
    return open_store(Workspace(workspace_path), configured_database_url())


def _login_name() -> str:
    try:
        return getpass.getuser()[:ANALYST_MAX_CHARS]
    except (KeyError, OSError):
        # A container user without a passwd entry or USER variable.
        return ""


def analyst_name() -> str:
    """Who is annotating: a sidebar field, filled with the login name until the analyst types theirs."""
    return st.sidebar.text_input(
        "Analyst", value=_login_name(), max_chars=ANALYST_MAX_CHARS, key="analyst",
        help="Your name is stored with every annotation you make, so the history says who did what.",
    ).strip()
