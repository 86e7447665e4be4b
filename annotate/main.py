"""SliceScope crowd worker app: ``streamlit run annotate/main.py --server.port 8502``.

A worker opens the link they were given (``/?token=…``, plus MTurk's or Prolific's own parameters), sees each of
the task's images beside its saliency overlay, boxes what the overlay highlights and names it (one entity type, one
or more attributes), and submits for a completion code. The page reads only through the token: the campaign's
instructions and the task's pictures, from the database; there is no other page, no workspace and no model here.
"""

import io
import time

import streamlit as st
from PIL import Image, ImageDraw

from annotate.example import EXAMPLE_CAPTION, example_png
from annotate.touch import touch_draws_boxes
from annotate.worker import (
    Answer,
    DrawnBox,
    Visit,
    mturk_submit_action,
    mturk_submit_form,
    prolific_completion_url,
    read_visit,
    worker_database_url,
)
from app import FAVICON
from app.database import configured_database_url
from core.concepts.annotations import MAX_TERM_CHARS
from core.crowd import CampaignImage, CampaignStore, TaskView
from core.demo import default_demo_dir, workspace_dir
from core.errors import SliceScopeError
from core.views import plural

# The pictures are stored at 320 px on their longer side (core.crowd.pipeline): shown 1:1, and the canvas fits a
# phone's screen (360 px wide and up, less the page's margins).
CANVAS_MAX_SIDE = 320
BOX_COLOUR = "#00e5ff"


@st.cache_resource(show_spinner=False)
def campaign_store(url: str) -> CampaignStore:
    return CampaignStore(url)


def canvas_size(picture: CampaignImage) -> tuple[int, int]:
    scale = CANVAS_MAX_SIDE / max(picture.width, picture.height)
    return max(1, round(picture.width * scale)), max(1, round(picture.height * scale))


def show_example() -> None:
    st.image(example_png(), width=320)
    st.caption(EXAMPLE_CAPTION)


def show_instructions(instructions: str) -> None:
    # The requester wrote these; they are shown as written, formatting included.
    st.markdown(instructions or "Box each area the overlay highlights and name it.")
    show_example()


def spend_time(answer: Answer) -> None:
    """Count the seconds since the last run towards the image that was on screen during them."""
    now = time.monotonic()
    shown = st.session_state.get("shown_image")
    if shown is not None:
        answer.seconds[shown] = answer.seconds.get(shown, 0.0) + now - st.session_state["tick"]
    st.session_state["tick"] = now


DRAFT_SECONDS = 15  # time alone is saved this often; boxes, terms and moves are saved at once


def session_answer(store: CampaignStore, token: str, view: TaskView) -> Answer:
    """This tab's answer to the task: the saved draft when the worker comes back (a reload, a dropped connection),
    else a new one."""
    if st.session_state.get("token") != token:
        draft = store.load_draft(token)
        answer, position = Answer.from_draft(view.image_ids, draft)
        st.session_state.update(token=token, answer=answer, position=position, shown_image=None, initial={},
                                started=draft is not None, saved_draft=(answer.to_draft(position), time.monotonic()))
        if draft is not None:
            st.toast("Your answer so far was restored.", icon=":material/restore:")
    return st.session_state["answer"]


def save_draft(store: CampaignStore, token: str, answer: Answer, position: int) -> None:
    """Save the answer in progress when a box, a term or the image changed (or, for the time alone, every few seconds)."""
    draft, (saved, saved_at) = answer.to_draft(position), st.session_state["saved_draft"]
    changed = {key: value for key, value in draft.items() if key != "seconds"} != {key: value for key, value in saved.items() if key != "seconds"}
    if changed or time.monotonic() - saved_at > DRAFT_SECONDS:
        store.save_draft(token, draft)
        st.session_state["saved_draft"] = (draft, time.monotonic())


def move_to(position: int, image_id: str) -> None:
    st.session_state["position"] = position
    # The canvas is rebuilt from the answer's boxes as they are now, not as they were on an earlier visit.
    st.session_state["initial"].pop(image_id, None)


def keep_term(image_id: str, number: int, field: str, key: str) -> None:
    """Store what was typed as soon as it changes: a callback runs even when the next run shows another image."""
    for box in st.session_state["answer"].boxes.get(image_id, []):
        if box.number == number:
            setattr(box, field, st.session_state[key])


def box_terms(image_id: str, drawn: list[DrawnBox]) -> None:
    """One row of fields per box on the canvas; what is typed stays with the box's number."""
    if not drawn:
        st.info("Drag on the overlay to draw a box around a highlighted area.")
        return
    for box in drawn:
        kind, attributes = st.columns(2)
        for column, field, label, limit, example in (
            (kind, "entity_type", "what is it? (one noun)", MAX_TERM_CHARS, "e.g. stamp"),
            (attributes, "attributes", "what is it like? (adjectives, comma-separated)", MAX_TERM_CHARS * 4, "e.g. white, square"),
        ):
            key = f"{field}:{image_id}:{box.number}"
            column.text_input(f"Box {box.number}: {label}", value=getattr(box, field), key=key, max_chars=limit, placeholder=example,
                              on_change=keep_term, args=(image_id, box.number, field, key))


def numbered_boxes_png(picture_png: bytes, size: tuple[int, int], drawn: list[DrawnBox]) -> bytes:
    """The picture at canvas size with each box outlined and numbered, so the fields below name boxes the worker can see."""
    image = Image.open(io.BytesIO(picture_png)).convert("RGB").resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for box in drawn:
        left, top, right, bottom = box.corners
        draw.rectangle((left, top, right, bottom), outline=BOX_COLOUR, width=2)
        draw.rectangle((left, top, left + 18, top + 16), fill=BOX_COLOUR)
        draw.text((left + 5, top + 2), str(box.number), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_step(store: CampaignStore, token: str, answer: Answer, position: int) -> None:
    from streamlit_drawable_canvas import boxes_to_drawing, st_canvas  # registers its component only inside a running app

    image_id = answer.image_ids[position]
    picture = store.task_picture(token, image_id)
    width, height = canvas_size(picture)
    st.session_state.setdefault("canvas_sizes", {})[image_id] = (width, height)
    drawn = answer.boxes.get(image_id, [])
    initial = st.session_state["initial"]
    if image_id not in initial:
        # Fixed for the whole visit to this image: a changing initial drawing would redraw the canvas under the worker.
        initial[image_id] = boxes_to_drawing(
            [{"left": box.left, "top": box.top, "width": box.width, "height": box.height} for box in drawn],
            stroke_color=BOX_COLOUR,
        )
    touch_draws_boxes()
    left, right = st.columns(2)
    right.markdown("**Where the model looked**: draw your boxes here")
    # A container of its own per image makes each image's canvas a new element, not the last image's canvas reloaded.
    with right.container(key=f"canvas-frame:{image_id}"):
        canvas = st_canvas(
            fill_color="rgba(0, 229, 255, 0.12)", stroke_width=2, stroke_color=BOX_COLOUR, background_image=picture.saliency_png,
            width=width, height=height, drawing_mode="labeled_rect", initial_drawing=initial[image_id], key=f"canvas:{image_id}",
        )
    drawn = answer.update_from_canvas(image_id, canvas.boxes)
    left.markdown("**The image**, with your numbered boxes")
    left.image(numbered_boxes_png(picture.image_png, (width, height), drawn), width=width)
    st.caption("The canvas's toolbar (top right, when the mouse is over it) undoes, redoes and clears; its pencil lets you select a box to move or delete it.")
    box_terms(image_id, drawn)


def navigation(answer: Answer, position: int) -> None:
    last = len(answer.image_ids) - 1
    back, forward, _ = st.columns([1, 1, 4])
    back.button("← Previous image", disabled=position == 0, on_click=move_to, width="stretch",
                args=(position - 1, answer.image_ids[max(position - 1, 0)]))
    forward.button("Next image →", disabled=position == last, on_click=move_to, width="stretch", type="primary",
                   args=(position + 1, answer.image_ids[min(position + 1, last)]))


def submit_step(store: CampaignStore, token: str, visit: Visit, answer: Answer) -> None:
    st.divider()
    done = sum(1 for image_id in answer.image_ids if answer.boxes.get(image_id))
    st.markdown(f"**{done} of {plural(len(answer.image_ids), 'image')}** {'has' if len(answer.image_ids) == 1 else 'have'} boxes.")
    problems = answer.missing()
    if problems:
        st.warning(f"Before you can submit ({len(problems)} to fix):\n\n" + "\n".join(f"- {problem}" for problem in problems[:12]))
    if not st.button("Submit my answer", disabled=bool(problems), type="primary"):
        return
    sizes = {image_id: (picture.width, picture.height) for image_id, picture in
             ((image_id, store.task_picture(token, image_id)) for image_id in answer.image_ids)}
    code = store.submit(token, answer.store_boxes(st.session_state["canvas_sizes"], sizes), answer.seconds,
                        worker_id=visit.worker_id, platform_assignment_id=visit.assignment_id, hit_id=visit.hit_id)
    st.session_state["completion"] = (token, code)
    st.rerun()


def completion(visit: Visit, code: str, again: bool = False) -> None:
    st.success("You have already submitted this task: your answer is saved." if again else "Thank you: your answer is saved.")
    st.markdown("Your completion code:")
    st.code(code, language=None)
    action = mturk_submit_action(visit)
    if action:
        # MTurk takes the answer as a form POST from this frame (its docs: "Defining an HTML form").
        st.html(mturk_submit_form(action, visit.assignment_id, code))
    elif visit.platform == "prolific":
        st.link_button("Return to Prolific", prolific_completion_url(code), type="primary")
    else:
        st.caption("Paste this code where the task asked for it. You can close this page.")


def task_page(store: CampaignStore, visit: Visit) -> None:
    token = visit.token
    finished = st.session_state.get("completion")
    if finished and finished[0] == token:
        completion(visit, finished[1])
        return
    submitted = store.completion_code(token)
    if submitted is not None:
        completion(visit, submitted, again=True)
        return
    if visit.preview:
        st.info("This is a preview: accept the task to start annotating.")
        show_instructions(store.preview(token))
        return
    view = store.open_task(token)
    answer = session_answer(store, token, view)
    spend_time(answer)
    if not st.session_state.get("started"):
        # Read once before the first image; afterwards the instructions stay folded, so nothing above the canvas
        # changes height while a worker draws (the canvas maps the mouse by where it was laid out).
        show_instructions(view.instructions)
        st.button("Start the task", type="primary", on_click=st.session_state.update, kwargs={"started": True})
        return
    position = min(st.session_state["position"], len(view.image_ids) - 1)
    st.session_state["shown_image"] = view.image_ids[position]
    with st.expander("Instructions and an example"):
        show_instructions(view.instructions)
    st.progress((position + 1) / len(view.image_ids), text=f"Image {position + 1} of {len(view.image_ids)}")
    image_step(store, token, answer, position)
    save_draft(store, token, answer, position)
    navigation(answer, position)
    submit_step(store, token, visit, answer)


def main() -> None:
    st.set_page_config(page_title="Annotation task", page_icon=str(FAVICON), layout="wide", initial_sidebar_state="collapsed")
    st.title("What did the model look at?")
    visit = read_visit(st.query_params.to_dict())
    if visit.token is None:
        st.info("Open this page with the task link you were given: it ends in ?token=…")
        return
    try:
        store = campaign_store(worker_database_url(configured_database_url(), workspace_dir(default_demo_dir(), "biased")))
        task_page(store, visit)
    except SliceScopeError as error:
        # Forged, reused or expired links and incomplete answers all end here, in one plain line; nothing typed is lost.
        st.error(str(error))


main()
