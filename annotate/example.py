"""The worked example shown with the instructions: one good box and one bad box on a drawn saliency overlay.

Drawn on the spot (nothing is shipped or downloaded) so that it always matches what the task page looks like.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_SIZE = 320


def _label(draw: ImageDraw.ImageDraw, origin: tuple[int, int], text: str, colour: tuple[int, int, int], font) -> None:
    """Text on a white chip, readable over the heat map."""
    left, top, right, bottom = draw.textbbox(origin, text, font=font)
    draw.rectangle((left - 4, top - 3, right + 4, bottom + 3), fill=(255, 255, 255), outline=colour, width=2)
    draw.text(origin, text, fill=colour, font=font)


def example_png() -> bytes:
    """A picture of a shape on water with a stamp; the heat sits on the stamp; green box: good, red box: bad."""
    rows, cols = np.mgrid[0:_SIZE, 0:_SIZE]
    waves = 0.5 + 0.5 * np.sin(rows / 9.0 + np.sin(cols / 23.0))
    water = np.stack([40 + 30 * waves, 90 + 40 * waves, 170 + 50 * waves], axis=-1)
    heat = np.exp(-(((cols - 252) / 62.0) ** 2 + ((rows - 263) / 50.0) ** 2))
    heat_rgb = np.stack([np.full_like(heat, 255), 60 + 170 * heat, np.zeros_like(heat)], axis=-1)  # red rim, yellow core
    pixels = np.clip(water * (1 - 0.85 * heat[..., None]) + 0.85 * heat[..., None] * heat_rgb, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((90, 90, 170, 170), fill=(210, 190, 60))
    draw.rectangle((222, 242, 282, 284), fill=(245, 245, 245))
    font = ImageFont.load_default(size=15)
    draw.rectangle((214, 234, 290, 292), outline=(20, 170, 60), width=4)
    _label(draw, (132, 205), "good: stamp / white", (20, 150, 50), font)
    draw.rectangle((6, 6, _SIZE - 7, _SIZE - 7), outline=(210, 30, 30), width=3)
    _label(draw, (14, 14), "bad: picture / nice", (210, 30, 30), font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


EXAMPLE_CAPTION = (
    "Good: a tight box on the highlighted stamp, typed **stamp** with the attribute **white**. "
    "Bad: one box around the whole picture, typed **picture** / **nice**: it says nothing about what the model looked at."
)
