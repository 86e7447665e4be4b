"""SliceScope analyst app: ``streamlit run app/main.py``.

Opens on the built-in demo (built on the first run). The System Menu in the
sidebar is shared by every page; the pages live in ``pages/``. A deployment that sets
``[analyst] password`` in its secrets shows only a password form until it is typed.
"""

from pathlib import Path

import streamlit as st

from app import FAVICON
from app.access import analyst_admitted
from app.ui import build_full_demo_behind, ensure_demo, system_menu

ROOT = Path(__file__).resolve().parent.parent  # the pages are files of the checkout, run by Streamlit as scripts


def main() -> None:
    st.set_page_config(page_title="SliceScope", page_icon=str(FAVICON), layout="wide")
    if not analyst_admitted():
        return
    pages = [
        st.Page(ROOT / "pages" / "slices.py", title="Slices", icon=":material/scatter_plot:", default=True),
        st.Page(ROOT / "pages" / "augment.py", title="Augment", icon=":material/auto_awesome:"),
        st.Page(ROOT / "pages" / "mitigate.py", title="Mitigate", icon=":material/healing:"),
        st.Page(ROOT / "pages" / "versions.py", title="Versions", icon=":material/history:"),
        st.Page(ROOT / "pages" / "compare.py", title="Compare", icon=":material/compare:"),
        st.Page(ROOT / "pages" / "concepts.py", title="Concepts", icon=":material/label:"),
        st.Page(ROOT / "pages" / "influence.py", title="Influence", icon=":material/hub:"),
        st.Page(ROOT / "pages" / "report.py", title="Workspace report", icon=":material/description:"),
    ]
    navigation = st.navigation(pages)
    ensure_demo()
    st.session_state["selection"] = system_menu()
    navigation.run()
    build_full_demo_behind()


main()
