"""Who may open the analyst app: anyone on a local run; where the deployment's secrets set ``[analyst] password``,
only a session that typed it. The worker app never imports this module: workers need no password, only their task link."""

from __future__ import annotations

import hashlib
import hmac

import streamlit as st

from app.database import configured_database_url
from app.deployment import SECRETS_TEMPLATE, configured_worker_url, secret_text
from core.errors import SliceScopeError

_ADMITTED = "analyst_admitted"  # session state: a fingerprint of the password this session typed


def analyst_password() -> str | None:
    """The deployment's analyst password; None when the secrets set none (the app opens as on a local run)."""
    return secret_text("analyst", "password", '"a long passphrase"')


def password_matches(typed: str, password: str) -> bool:
    # Constant time: how long the comparison takes says nothing about how much of the password was right.
    return hmac.compare_digest(typed.encode(), password.encode())


def _fingerprint(password: str) -> str:
    # Kept in the session instead of a plain flag, so that changing the password in the secrets asks every open session again.
    return hashlib.sha256(password.encode()).hexdigest()


def analyst_admitted() -> bool:
    """True when this session may see the analyst app. Otherwise draws what stands in the way (the password form, or a
    problem with the secrets in one line) and returns False: the caller then draws nothing else, not even the demo build.

    The other secrets the analyst app reads are checked here too, so that a broken one is one line before any page
    rather than an error inside one.
    """
    try:
        password = analyst_password()
        configured_database_url()
        configured_worker_url()
    except SliceScopeError as error:
        st.error(str(error), icon=":material/error:")
        return False
    if password is None or hmac.compare_digest(st.session_state.get(_ADMITTED, ""), _fingerprint(password)):
        return True
    st.title("SliceScope")
    with st.form("analyst_password", clear_on_submit=True):  # the typed password is not kept in the page
        typed = st.text_input("Password", type="password")
        entered = st.form_submit_button("Open SliceScope", type="primary")
    if entered:
        if password_matches(typed, password):
            st.session_state[_ADMITTED] = _fingerprint(password)
            st.rerun()
        st.error("Wrong password — ask whoever deployed SliceScope for it, or, if that is you, read it (or set a new one) "
                 f"under [analyst] password in the app's secrets (see {SECRETS_TEMPLATE}).", icon=":material/lock:")
    return False
