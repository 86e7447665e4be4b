"""The worked example shown with the instructions: one good box and one bad box on a drawn saliency overlay.

Drawn on the spot (nothing is shipped or downloaded) so that it always matches what the task page looks like.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

_SIZE = 320


def example_png() -> bytes:
    """A picture of a shape on water with a stamp; the heat sits on the stamp; green box: good, red box: bad."""
    rows, cols = np.mgrid[0:_SIZE, 0:_SIZE]
    waves = 0.5 + 0.5 * np.sin(rows / 9.0 + np.sin(cols / 23.0))
    water = np.stack([40 + 30 * waves, 90 + 40 * waves, 170 + 50 * waves], axis=-1)
    heat = np.exp(-(((cols - 250) / 40.0) ** 2 + ((rows - 262) / 32.0) ** 2))
    heat_rgb = np.stack([255 * heat, 200 * heat * (1 - heat), np.zeros_like(heat)], axis=-1)
    pixels = np.clip(water * (1 - 0.6 * heat[..., None]) + 0.6 * heat_rgb, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((90, 90, 170, 170), fill=(210, 190, 60))
    draw.rectangle((222, 242, 282, 284), fill=(245, 245, 245))
    draw.rectangle((214, 234, 290, 292), outline=(20, 170, 60), width=4)
    draw.text((150, 300), "good: stamp / white", fill=(20, 120, 40))
    draw.rectangle((6, 6, _SIZE - 7, _SIZE - 7), outline=(210, 30, 30), width=3)
    draw.text((12, 12), "bad: picture / nice", fill=(210, 30, 30))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


EXAMPLE_CAPTION = (
    "Good: a tight box on the highlighted stamp, typed **stamp** with the attribute **white**. "
    "Bad: one box around the whole picture, typed **picture** / **nice**: it says nothing about what the model looked at."
)
