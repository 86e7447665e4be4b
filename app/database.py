"""Which database the apps use when the deployment names one: the analyst app and the worker app read it alike."""

from __future__ import annotations

import streamlit as st


def configured_database_url() -> str | None:
    """``[database] url`` from ``.streamlit/secrets.toml``; None when no secrets file gives one."""
    try:
        url = st.secrets["database"]["url"]
    except (FileNotFoundError, KeyError, TypeError):
        # No secrets file is the normal case (the database is then $SLICESCOPE_DATABASE_URL or the workspace's own).
        return None
    return str(url).strip() or None
