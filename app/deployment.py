"""The deployment's secrets (``.streamlit/secrets.toml``, or the app's Secrets on Streamlit Community Cloud), read alike
by the analyst app and the worker app; ``.streamlit/secrets.toml.example`` shows every section."""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from core.errors import SliceScopeError

SECRETS_TEMPLATE = ".streamlit/secrets.toml.example"
# Streamlit's own id for "there is no secrets file at all", as opposed to one it could not read.
_NO_SECRETS_FILE = "no-secrets-found"


def secrets_section(name: str) -> Mapping | None:
    """The ``[name]`` table of the secrets; None when there is no secrets file or no such table (local use).

    A secrets file that cannot be read, or a ``name`` that is a plain value rather than a table, is a
    :class:`SliceScopeError`: ignoring it would quietly run an unprotected app on the wrong database.
    """
    try:
        section = st.secrets.get(name)
    except FileNotFoundError as error:  # Streamlit's StreamlitSecretNotFoundError, for a missing and an unreadable file alike
        if getattr(error, "error_id", None) == _NO_SECRETS_FILE:
            return None
        raise SliceScopeError(f"The secrets could not be read ({' '.join(str(error).split())})",
                              f"fix the file's TOML as in {SECRETS_TEMPLATE} (on Streamlit Community Cloud: the app's Settings → Secrets)") from None
    if section is None or isinstance(section, Mapping):
        return section
    raise SliceScopeError(f"The secrets give {name} as a plain value", f"write it as a [{name}] table, as in {SECRETS_TEMPLATE}")


def secret_text(section_name: str, key: str, example: str) -> str | None:
    """``[section_name] key`` as non-blank text; None without the section. A section that lacks the key, or gives it blank
    or not as text, is a one-line :class:`SliceScopeError` naming ``example`` as the fix."""
    section = secrets_section(section_name)
    if section is None:
        return None
    value = section.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SliceScopeError(f"[{section_name}] in the secrets has no {key}",
                              f"add {key} = {example} under [{section_name}] (see {SECRETS_TEMPLATE}), or remove the section")
    return value


def configured_worker_url() -> str | None:
    """``[worker] url``: where the deployed worker app answers, the start of the task links the Concepts page hands out;
    None without a ``[worker]`` table (the page then offers the local worker app's address)."""
    url = secret_text("worker", "url", '"https://your-worker-app.streamlit.app"')
    return url.strip() if url else None
