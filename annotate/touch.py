"""A finger draws boxes on the canvas as a mouse does.

streamlit-drawable-canvas 0.13's box tool adds a box only for ``event.button === 0``, which a touch event does not
have, so on a phone a worker's drag drew nothing. This bridge (a Streamlit component that renders nothing) turns a
one-finger touch on a drawing canvas into the mouse events the tool listens to; two fingers still pinch and scroll.
Written here because the canvas exposes no option for it (Fabric's ``enablePointerEvents`` is fixed in its bundle).
"""

from __future__ import annotations

from functools import cache

import streamlit as st

# Listeners on the document, capturing: the canvas sits in a component's shadow root, and the touch must be stopped
# before Fabric's own touch handler on the canvas sees it (a drag would otherwise start twice).
TOUCH_AS_MOUSE_JS = """
export default function () {
  if (window.__slicescopeTouchAsMouse) return;
  window.__slicescopeTouchAsMouse = true;
  const drawingCanvas = (event) =>
    event.composedPath().find((node) => node instanceof HTMLCanvasElement && node.classList.contains("upper-canvas"));
  const forward = (mouseType) => (event) => {
    const canvas = drawingCanvas(event);
    if (!canvas || event.touches.length > 1) return;
    const touch = event.changedTouches[0];
    event.preventDefault();
    event.stopImmediatePropagation();
    canvas.dispatchEvent(new MouseEvent(mouseType, {
      bubbles: true, composed: true, cancelable: true, view: window, button: 0,
      buttons: mouseType === "mouseup" ? 0 : 1,
      clientX: touch.clientX, clientY: touch.clientY, screenX: touch.screenX, screenY: touch.screenY,
    }));
  };
  const options = {capture: true, passive: false};
  document.addEventListener("touchstart", forward("mousedown"), options);
  document.addEventListener("touchmove", forward("mousemove"), options);
  document.addEventListener("touchend", forward("mouseup"), options);
  document.addEventListener("touchcancel", forward("mouseup"), options);
}
"""


@cache
def _touch_as_mouse():
    return st.components.v2.component("slicescope_touch_as_mouse", js=TOUCH_AS_MOUSE_JS)


def touch_draws_boxes() -> None:
    """Let a finger draw on the page's drawing canvases (once per page; it renders nothing)."""
    _touch_as_mouse()(key="touch-as-mouse", height=0)
