"""Slice annotation and spuriousness on the Slices page: the form, undo, history and relabelling.

Every change goes straight to the annotation store (``app.store``), attributed
to the analyst named in the sidebar. Notes are typed by people and shown to
other people, so they are never rendered as Markdown: they appear in tables
and plain-text widgets only.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np
import pandas as pd
import streamlit as st

from app.store import analyst_name, store_for
from app.ui import load_slices, load_workspace, show_error
from core.errors import SliceScopeError
from core.mitigation import KERNELS, AnnotationState, PropagationParams, Slicing, read_annotations, slice_spuriousness
from core.store import ANNOTATION_KINDS, NOTE_MAX_CHARS
from core.views import plural

KIND_LABELS = {"core": "Core", "spurious": "Spurious", "wrong_labels": "Wrong labels", "other": "Other"}
NO_SPURIOUSNESS_HINT = "annotate a core or spurious slice"
ERROR_KEY = "annotation_error"  # the last refused change, shown under the form until one succeeds


@dataclass(frozen=True)
class Annotations:
    """The page's view of the store: annotations of the current slicing and the spuriousness they imply."""

    state: AnnotationState
    spuriousness: np.ndarray  # per slice id; NaN until a core or spurious annotation exists

    @property
    def has_spuriousness(self) -> bool:
        return not np.isnan(self.spuriousness).all()


@st.cache_data(show_spinner=False, max_entries=64)
def _spuriousness(path: str, slice_on: str, k: int, method: str, kinds: tuple[tuple[int, str], ...], params: tuple) -> np.ndarray:
    slice_ids, _ = load_slices(path, slice_on, k, method)
    features = np.asarray(load_workspace(path).array("attribution_features"))
    return slice_spuriousness(features, slice_ids, dict(kinds), PropagationParams(*params))


def current_propagation() -> PropagationParams:
    """The propagation settings chosen on the Slices page (defaults until the analyst changes them)."""
    state, defaults = st.session_state, PropagationParams()
    return PropagationParams(
        kernel=state.get("propagation_kernel", defaults.kernel), gamma=state.get("propagation_gamma") or None,
        n_neighbors=int(state.get("propagation_neighbours", defaults.n_neighbors)), alpha=state.get("propagation_alpha", defaults.alpha),
    )


def propagation_settings() -> PropagationParams:
    """Label Spreading's kernel and parameters, in a popover (defaults suit most workspaces)."""
    with st.popover("Propagation settings", icon=":material/share:"):
        st.caption("Spuriousness spreads from annotated core (0) and spurious (1) slices to similar slices "
                   "(Label Spreading over the slices' mean attribution-weighted features).")
        kernel = st.selectbox("Kernel", KERNELS, key="propagation_kernel")
        gamma = st.number_input("RBF gamma (0: median heuristic)", min_value=0.0, value=0.0, format="%.4f", key="propagation_gamma")
        neighbours = st.number_input("kNN neighbours", min_value=1, max_value=50, value=5, key="propagation_neighbours")
        alpha = st.slider("Clamping alpha", 0.01, 0.99, 0.2, key="propagation_alpha",
                          help="How much a slice takes from its neighbours rather than keeping its initial label.")
    return PropagationParams(kernel=kernel, gamma=gamma or None, n_neighbors=int(neighbours), alpha=alpha)


def load_annotations(selection, params: PropagationParams) -> Annotations | None:
    """The store's annotations for the selected slicing, or None (with the reason shown) if the store fails."""
    path = str(selection.workspace)
    try:
        state = read_annotations(store_for(path), load_workspace(path), Slicing(selection.slice_on, selection.slice_params))
    except SliceScopeError as error:
        show_error(error)
        return None
    spuriousness = _spuriousness(path, selection.slice_on, selection.k, selection.method, tuple(sorted(state.kinds.items())), astuple(params))
    return Annotations(state, spuriousness)


def annotated_table(table: pd.DataFrame, annotations: Annotations | None) -> pd.DataFrame:
    """The Slice Table with the analyst's annotation and the spuriousness of every slice."""
    table = table.copy()
    if annotations is None:
        table["annotation"], table["spuriousness"] = "", np.nan
        return table
    kinds, notes = annotations.state.kinds, annotations.state.notes
    table["annotation"] = [
        f"{KIND_LABELS[kinds[s]]}: {notes[s]}" if s in kinds and notes.get(s) else KIND_LABELS.get(kinds.get(s), "")
        for s in table["slice"]
    ]
    table["spuriousness"] = annotations.spuriousness[table["slice"].to_numpy()]
    return table


def spuriousness_column(annotations: Annotations | None):
    if annotations is not None and annotations.has_spuriousness:
        return st.column_config.ProgressColumn(
            "Spuriousness", min_value=0.0, max_value=1.0, format="percent",
            help="Probability that the slice relies on a spurious feature, spread from your core/spurious annotations.",
        )
    return st.column_config.NumberColumn(
        "Spuriousness", width="small",
        help=f"Empty until you {NO_SPURIOUSNESS_HINT} (below the table); then every slice gets a spuriousness probability.",
    )


def _change(path: str, apply, icon: str) -> None:
    """Run one store change from a widget callback: ``apply(store, workspace, analyst)`` returns the toast's text.

    A refusal (bad text, unreachable database) is kept as one line under the form, so nothing typed is lost.
    """
    try:
        message = apply(store_for(path), load_workspace(path), st.session_state.get("analyst", ""))
    except SliceScopeError as error:
        st.session_state[ERROR_KEY] = str(error)
        return
    st.session_state.pop(ERROR_KEY, None)
    st.toast(message, icon=icon)


def _slices_text(slices: list[int]) -> str:
    return f"slice{'s' if len(slices) > 1 else ''} {', '.join(map(str, slices))}"


def _save(path: str, slicing: str, slices: list[int], kind_key: str, note_key: str) -> None:
    kind, note = st.session_state[kind_key], st.session_state[note_key]

    def apply(store, workspace, analyst) -> str:
        for slice_id in slices:
            store.set_slice(workspace.fingerprint, slicing, slice_id, kind, note, analyst)
        return f"Saved: {_slices_text(slices)} → {KIND_LABELS[kind]}"

    _change(path, apply, ":material/check:")


def _clear(path: str, slicing: str, slices: list[int]) -> None:
    def apply(store, workspace, analyst) -> str:
        for slice_id in slices:
            store.clear_slice(workspace.fingerprint, slicing, slice_id, analyst)
        return f"Cleared the annotation of {_slices_text(slices)}"

    _change(path, apply, ":material/backspace:")


def _undo(path: str) -> None:
    def apply(store, workspace, analyst) -> str:
        undone = store.undo_last(analyst, (workspace.fingerprint, workspace.dataset_fingerprint))
        return undone.capitalize() if undone else "Nothing of yours to undo here"

    _change(path, apply, ":material/undo:")


def annotation_form(path: str, annotations: Annotations, slices: list[int]) -> None:
    """Annotate the picked slices: kind and a short note, saved at once; clear, undo and the history."""
    analyst = analyst_name()
    state = annotations.state
    title = f"Annotate slice{'s' if len(slices) > 1 else ''} {', '.join(map(str, slices))}" if slices else "Annotate slices"
    with st.container(border=True, key="annotation-form"):
        st.markdown(f"**{title}**")
        if not slices:
            st.caption("Pick slices in the table, the scatter or the mosaic to annotate them.")
        else:
            current = [s for s in slices if s in state.kinds]
            if current:
                # A table, not Markdown: notes are free text typed by people.
                st.dataframe(
                    pd.DataFrame({"slice": current, "kind": [KIND_LABELS[state.kinds[s]] for s in current], "note": [state.notes.get(s, "") for s in current]}),
                    hide_index=True, key="current-annotations",
                )
            first = state.kinds.get(slices[0])
            kind_key, note_key = f"annotation_kind-{state.slicing}", f"annotation_note-{state.slicing}"
            st.segmented_control("Kind", list(ANNOTATION_KINDS), format_func=KIND_LABELS.get, default=first, key=kind_key)
            st.text_input("Note", value=state.notes.get(slices[0], ""), max_chars=NOTE_MAX_CHARS, key=note_key,
                          placeholder="e.g. spurious: water background")
            save, clear, undo = st.columns(3)
            disabled = not analyst
            save.button("Save", type="primary", icon=":material/save:", width="stretch", disabled=disabled or not st.session_state.get(kind_key),
                        on_click=_save, args=(path, state.slicing, slices, kind_key, note_key), key="annotation_save")
            clear.button("Clear", icon=":material/backspace:", width="stretch", disabled=disabled or not current,
                         on_click=_clear, args=(path, state.slicing, current), key="annotation_clear")
            undo.button("Undo", help="Undo your latest annotation or relabel in this workspace", icon=":material/undo:", width="stretch", disabled=disabled,
                        on_click=_undo, args=(path,), key="annotation_undo")
            if disabled:
                st.caption("Type your name in the sidebar's Analyst field to annotate.")
        if ERROR_KEY in st.session_state:
            st.error(st.session_state[ERROR_KEY], icon=":material/error:")
        with st.expander("History"):
            history(path)


def history(path: str) -> None:
    workspace = load_workspace(path)
    try:
        events = store_for(path).history((workspace.fingerprint, workspace.dataset_fingerprint), limit=200)
    except SliceScopeError as error:
        show_error(error)
        return
    if events.empty:
        st.caption("No annotations yet.")
        return
    shown = events[["created_at", "analyst", "action", "target_type", "target", "kind", "note", "label", "undone"]]
    st.dataframe(shown, hide_index=True, key="annotation-history", column_config={"created_at": st.column_config.DatetimeColumn("When (UTC)")})


def _mark(path: str, rows_key: str, label_key: str) -> None:
    rows, label = list(st.session_state[rows_key]), st.session_state[label_key]

    def apply(store, workspace, analyst) -> str:
        # An image already labelled ``label`` is not mislabelled as ``label``: marking it would only add noise.
        wrong = [row for row in rows if workspace.images["label"].iat[row] != label]
        if not wrong:
            raise SliceScopeError(f"the chosen image{'s are' if len(rows) > 1 else ' is'} already labelled {label}",
                                  "pick the label the images should have instead")
        for row in wrong:
            store.mark_mislabelled(workspace.dataset_fingerprint, workspace.images["image_id"].iat[row], label, analyst)
        kept = len(rows) - len(wrong)
        return f"Marked {plural(len(wrong), 'image')} as mislabelled" + (f" ({plural(kept, 'image')} already labelled {label} left as they are)" if kept else "")

    _change(path, apply, ":material/flag:")
    if ERROR_KEY not in st.session_state:
        st.session_state[rows_key] = []


def _unmark(path: str, image_id: str) -> None:
    def apply(store, workspace, analyst) -> str:
        store.unmark_mislabelled(workspace.dataset_fingerprint, image_id, analyst)
        return "Unmarked the image"

    _change(path, apply, ":material/outlined_flag:")


def relabels_of(path: str) -> dict[str, str]:
    """Image id → the label an analyst says it should have."""
    workspace = load_workspace(path)
    try:
        return {image: relabel.label for image, relabel in store_for(path).relabels(workspace.dataset_fingerprint).items()}
    except SliceScopeError:
        return {}


def relabel_controls(path: str, shown: np.ndarray, captions: list[str]) -> None:
    """Mark images of the current detail page as mislabelled, with the label they should have."""
    workspace = load_workspace(path)
    images = workspace.images
    relabels = relabels_of(path)
    with st.expander("Mark mislabelled images"):
        position = {int(row): i for i, row in enumerate(shown)}
        rows_key, label_key = "relabel_rows", "relabel_label"
        # No "Select all": marking a whole page mislabelled is never what one click should do.
        st.multiselect("Images on this page", [int(r) for r in shown], format_func=lambda r: f"#{position[r] + 1} · {captions[position[r]]}", key=rows_key,
                       select_all=False)
        st.selectbox("They should be labelled", workspace.classes, key=label_key)
        st.button("Mark as mislabelled", icon=":material/flag:", disabled=not st.session_state.get(rows_key) or not st.session_state.get("analyst"),
                  on_click=_mark, args=(path, rows_key, label_key), key="relabel_mark")
        marked = [(int(r), relabels[images["image_id"].iat[r]]) for r in shown if images["image_id"].iat[r] in relabels]
        for row, label in marked:
            text, undo = st.columns([4, 1], vertical_alignment="center")
            text.text(f"#{position[row] + 1} {images['path'].iat[row]} → should be {label}")
            undo.button("Unmark", key=f"unmark-{row}", on_click=_unmark, args=(path, images["image_id"].iat[row]))
