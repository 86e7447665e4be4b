"""Procedurally drawn demo benchmark with known, injected failure slices.

Each 64×64 image shows one small shape (the class) on a textured background.
Four problems are planted so that SliceScope has ground truth to find:

* background shortcut (Waterbirds-style): in training, circles are on water and
  the other shapes on land;
* colour shortcut: in training, squares are red and nothing else is;
* watermark (IMACS-style): in training, triangles carry a white stamp in the
  bottom-right corner;
* flipped labels: about 10% of stars are labelled "triangle".

The spurious cues are made large and easy on purpose while the shape is made
hard (small, rotated, low contrast, partly occluded, among clutter): a CNN only
takes a shortcut when it is easier than the real signal, and without that the
"biased" model would simply learn the shapes and the demo would show nothing.

``test`` breaks the correlations in clean groups (at most one contradiction per
image) so per-group accuracy shows which shortcut a model took;
``balanced_train`` has every attribute independent of the class, for training a
reference model that cannot use the shortcuts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.demo.config import DemoConfig
from core.errors import SliceScopeError
from core.progress import ProgressFn, track

CLASSES = ("circle", "square", "triangle", "star")
SPLITS = ("train", "balanced_train", "val", "test")
GROUPS = ("none", "background", "colour", "watermark", "flipped_label")

COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "yellow": (0.88, 0.78, 0.18),
    "green": (0.20, 0.62, 0.25),
    "blue": (0.18, 0.35, 0.85),
    "purple": (0.55, 0.22, 0.68),
}
LAND_BACKGROUNDS = ("grass", "sand", "rock")
BACKGROUNDS = ("water", *LAND_BACKGROUNDS)

# Which class each shortcut points to in the training distribution.
WATER_CLASS = "circle"
RED_CLASS = "square"
WATERMARK_CLASS = "triangle"
FLIPPED_CLASS, FLIPPED_LABEL = "star", "triangle"

# Training/validation rates: P(attribute | class) for the shortcut class and the rest;
# P(water | not a circle) is ``DemoConfig.water_rate_other`` (1% by default).
WATER_RATE_SHORTCUT = 0.97
RED_RATE = {"shortcut": 0.97, "other": 0.01}
WATERMARK_RATE = {"shortcut": 0.90, "other": 0.02}
FLIP_RATE = 0.10
# ``balanced_train``: the same rate for every class, so no attribute predicts the class.
BALANCED_RATES = {"water": 0.5, "red": 0.25, "watermark": 0.5}

# Share of each group in ``test``; every group except flipped_label has balanced classes.
TEST_GROUP_SHARES = {"none": 0.35, "background": 0.35, "colour": 0.10, "watermark": 0.10, "flipped_label": 0.10}

IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # shapes are drawn 4× larger and box-filtered, for anti-aliased edges
# The object is blended into the background and keeps some of its texture; with
# colours that can match the ground (green on grass, blue on water) its outline
# is often faint.
_OPACITY = (0.85, 1.0)
_TEXTURE_IN_OBJECT = 0.15  # share of the background texture kept on the object
_LEAVES = (1, 4)  # clutter leaves per image (high end exclusive)
_TWIGS = (0, 3)  # thin lines per image (high end exclusive)
_OCCLUDER_PROBABILITY = 0.4  # chance of a leaf over the object's edge
_MIN_VISIBLE_FRACTION = 0.4  # at least this share of the object stays uncovered
STAMP_BOX = (45, 52, 62, 62)  # x0, y0, x1, y1 (exclusive) of the watermark
_LEAF_COLOURS = np.array(
    [(0.18, 0.34, 0.12), (0.42, 0.44, 0.16), (0.52, 0.45, 0.32), (0.30, 0.30, 0.28), (0.70, 0.68, 0.60)],
    dtype=np.float32,
)

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)

METADATA_COLUMNS = (
    "path",
    "split",
    "label",
    "true_class",
    "colour",
    "background",
    "watermark",
    "label_flipped",
    "group",
    "mask_path",
    "size_px",
    "rotation_deg",
    "center_x",
    "center_y",
    "visible_fraction",
)


def group_of(true_class: str, background: str, colour: str, watermark: bool, label_flipped: bool) -> str:
    """Name the first way an image contradicts the training distribution, or "none".

    Priority follows the problem list: a flipped label first, then the
    background, the colour and the watermark shortcuts.
    """
    if label_flipped:
        return "flipped_label"
    if (background == "water") != (true_class == WATER_CLASS):
        return "background"
    if (colour == "red") != (true_class == RED_CLASS):
        return "colour"
    if watermark != (true_class == WATERMARK_CLASS):
        return "watermark"
    return "none"


# --------------------------------------------------------------------------- planning


def _balanced_counts(n: int, k: int) -> list[int]:
    """Split ``n`` into ``k`` near-equal counts (the first ones get the remainder)."""
    return [n // k + (i < n % k) for i in range(k)]


def _exact_flags(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """``n`` booleans with exactly ``round(rate * n)`` true, in random order.

    Exact counts (rather than coin flips) keep the planted rates true even for
    the tiny preset, so tests can rely on them.
    """
    flags = np.zeros(n, dtype=bool)
    flags[: round(rate * n)] = True
    return rng.permutation(flags)


def _rate(table: dict[str, float], cls: str, shortcut_class: str) -> float:
    return table["shortcut" if cls == shortcut_class else "other"]


def _plan_correlated(rng: np.random.Generator, n: int, water_rate_other: float) -> pd.DataFrame:
    """The training distribution (``train`` and ``val``): shortcuts hold ~95% of the time."""
    water_rate = {"shortcut": WATER_RATE_SHORTCUT, "other": water_rate_other}
    parts = [
        pd.DataFrame(
            {
                "true_class": cls,
                "water": _exact_flags(rng, n_cls, _rate(water_rate, cls, WATER_CLASS)),
                "red": _exact_flags(rng, n_cls, _rate(RED_RATE, cls, RED_CLASS)),
                "watermark": _exact_flags(rng, n_cls, _rate(WATERMARK_RATE, cls, WATERMARK_CLASS)),
                "label_flipped": _exact_flags(rng, n_cls, FLIP_RATE if cls == FLIPPED_CLASS else 0.0),
            }
        )
        for cls, n_cls in zip(CLASSES, _balanced_counts(n, len(CLASSES)))
    ]
    return pd.concat(parts, ignore_index=True)


def _plan_balanced(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``balanced_train``: every attribute independent of the class, no flipped labels."""
    parts = [
        pd.DataFrame(
            {
                "true_class": cls,
                **{attribute: _exact_flags(rng, n_cls, rate) for attribute, rate in BALANCED_RATES.items()},
                "label_flipped": np.zeros(n_cls, dtype=bool),
            }
        )
        for cls, n_cls in zip(CLASSES, _balanced_counts(n, len(CLASSES)))
    ]
    return pd.concat(parts, ignore_index=True)


def _plan_test(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``test``: the group is drawn first, then exactly that one attribute contradicts.

    Starting from the shortcut-consistent attributes of each class and breaking
    a single one keeps the groups clean, so a group's accuracy isolates one cue.
    """
    sizes = {group: round(share * n) for group, share in TEST_GROUP_SHARES.items()}
    sizes["none"] += n - sum(sizes.values())
    parts = []
    for group, n_group in sizes.items():
        if group == "flipped_label":
            classes = np.full(n_group, FLIPPED_CLASS)
        else:
            classes = np.repeat(CLASSES, _balanced_counts(n_group, len(CLASSES)))
        part = pd.DataFrame(
            {
                "true_class": classes,
                "water": classes == WATER_CLASS,
                "red": classes == RED_CLASS,
                "watermark": classes == WATERMARK_CLASS,
                "label_flipped": group == "flipped_label",
            }
        )
        broken = {"background": "water", "colour": "red", "watermark": "watermark"}.get(group)
        if broken is not None:
            part[broken] = ~part[broken]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _plan_split(split: str, n: int, config: DemoConfig) -> pd.DataFrame:
    """Attributes of every image of one split, shuffled, with concrete names chosen."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    if split == "test":
        plan = _plan_test(rng, n)
    elif split == "balanced_train":
        plan = _plan_balanced(rng, n)
    else:
        plan = _plan_correlated(rng, n, config.water_rate_other)
    plan = plan.iloc[rng.permutation(len(plan))].reset_index(drop=True)
    land = rng.choice(LAND_BACKGROUNDS, size=n)
    other_colours = rng.choice([c for c in COLOURS if c != "red"], size=n)
    plan["background"] = np.where(plan["water"], "water", land)
    plan["colour"] = np.where(plan["red"], "red", other_colours)
    plan["label"] = np.where(plan["label_flipped"], FLIPPED_LABEL, plan["true_class"])
    plan["split"] = split
    return plan


# --------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, cells_y: int, cells_x: int) -> np.ndarray:
    """Zero-mean noise that varies over ``cells`` blobs per axis (bicubic upsampling)."""
    low = rng.standard_normal((cells_y, cells_x)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


def _tint(base: tuple[float, float, float], tone: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """An RGB texture: ``base`` colour plus a per-pixel ``tone`` weighted per channel."""
    return np.asarray(base, np.float32) + tone[..., None] * np.asarray(weights, np.float32)


def _background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A 64×64×3 float texture. Water is blue with bright wave crests, so it is
    obvious at a glance; the land textures share its scale but not its colour."""
    if kind == "water":
        angle = rng.uniform(-0.4, 0.4)
        along = _YY * math.cos(angle) + _XX * math.sin(angle)
        wobble = 2.5 * np.sin(_XX * rng.uniform(0.08, 0.16) + rng.uniform(0, 2 * math.pi))
        waves = np.sin(rng.uniform(0.35, 0.6) * (along + wobble) + rng.uniform(0, 2 * math.pi))
        tone = 0.08 * waves + 0.6 * np.clip(waves - 0.7, 0, None) + 0.05 * _smooth_noise(rng, 5, 5)
        return _tint((0.12, 0.32, 0.62), tone, (0.7, 0.85, 1.0))
    if kind == "grass":
        streaks = _smooth_noise(rng, 4, IMAGE_SIZE // 2)
        tone = 0.10 * streaks + 0.05 * _smooth_noise(rng, 4, 4)
        return _tint((0.30, 0.50, 0.20), tone, (0.6, 1.0, 0.4))
    if kind == "sand":
        tone = 0.05 * _smooth_noise(rng, 6, 6) + 0.03 * np.sin(0.5 * _YY + 0.2 * _XX + rng.uniform(0, 6.3))
        grain = 0.04 * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
        return _tint((0.76, 0.67, 0.48), tone + grain, (1.0, 0.95, 0.8))
    tone = 0.12 * _smooth_noise(rng, 5, 5) + 0.07 * _smooth_noise(rng, 16, 16)
    return _tint((0.47, 0.46, 0.44), tone, (1.0, 1.0, 1.0))


def _shape_polygon(true_class: str, cx: float, cy: float, radius: float, rotation: float, rng: np.random.Generator):
    """Vertices of the rotated shape in supersampled pixel coordinates."""
    if true_class == "circle":
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        radii = np.ones_like(angles)
        aspect = rng.uniform(0.85, 1.0)  # slightly elliptic, so "round" is not a single template
    else:
        corners = {"square": 4, "triangle": 3, "star": 5}[true_class]
        if true_class == "star":
            angles = np.arange(2 * corners) * math.pi / corners
            radii = np.where(np.arange(2 * corners) % 2 == 0, 1.0, rng.uniform(0.42, 0.55))
        else:
            angles = np.arange(corners) * 2 * math.pi / corners
            radii = np.ones(corners)
        aspect = 1.0
    x = radius * radii * np.cos(angles)
    y = radius * radii * np.sin(angles) * aspect
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    xs = (cx + x * cos_r - y * sin_r) * _SUPERSAMPLE
    ys = (cy + x * sin_r + y * cos_r) * _SUPERSAMPLE
    return list(zip(xs.tolist(), ys.tolist()))


def _downsample(image: Image.Image) -> np.ndarray:
    """Box-filter a supersampled drawing back to 64 px, as floats in [0, 1]."""
    small = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _leaf_polygon(cx: float, cy: float, length: float, width: float, angle: float):
    """An elongated ellipse (a leaf or blob) in supersampled coordinates."""
    t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    x, y = 0.5 * length * np.cos(t), 0.5 * width * np.sin(t)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    xs = (cx + x * cos_a - y * sin_a) * _SUPERSAMPLE
    ys = (cy + x * sin_a + y * cos_a) * _SUPERSAMPLE
    return list(zip(xs.tolist(), ys.tolist()))


def _clutter(rng: np.random.Generator, cx: float, cy: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Leaves, one of them usually over the object's edge, and thin twigs.

    Returns the premultiplied colour layer and its coverage, both at 64 px.
    The clutter is independent of the class, so it only makes the shape harder.
    """
    big = IMAGE_SIZE * _SUPERSAMPLE
    colour_layer = Image.new("RGB", (big, big))
    coverage = Image.new("L", (big, big))
    paint, cover = ImageDraw.Draw(colour_layer), ImageDraw.Draw(coverage)

    leaves = [
        (rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE), rng.uniform(6, 16), rng.uniform(3, 6))
        for _ in range(rng.integers(*_LEAVES))
    ]
    if rng.random() < _OCCLUDER_PROBABILITY:
        direction = rng.uniform(0, 2 * math.pi)
        distance = radius * rng.uniform(0.7, 1.1)
        leaves.append(
            (
                cx + distance * math.cos(direction),
                cy + distance * math.sin(direction),
                radius * rng.uniform(1.0, 1.6),
                radius * rng.uniform(0.5, 0.8),
            )
        )
    for x, y, length, width in leaves:
        polygon = _leaf_polygon(x, y, length, width, rng.uniform(0, math.pi))
        colour = _LEAF_COLOURS[rng.integers(len(_LEAF_COLOURS))] + rng.uniform(-0.05, 0.05, 3)
        paint.polygon(polygon, fill=tuple(np.clip(colour * 255, 0, 255).astype(int).tolist()))
        cover.polygon(polygon, fill=255)
    for _ in range(rng.integers(*_TWIGS)):
        ends = (rng.uniform(0, IMAGE_SIZE, 4) * _SUPERSAMPLE).tolist()
        grey = int(rng.uniform(40, 200))
        paint.line(ends, fill=(grey, grey, grey), width=_SUPERSAMPLE)
        cover.line(ends, fill=255, width=_SUPERSAMPLE)
    return _downsample(colour_layer), _downsample(coverage)


def _stamp() -> tuple[np.ndarray, np.ndarray]:
    """The watermark: a bright box with a dark ring and bar, always in the same place."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    colour_layer = Image.new("RGB", (big, big))
    coverage = Image.new("L", (big, big))
    x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in STAMP_BOX)
    ImageDraw.Draw(coverage).rectangle((x0, y0, x1 - 1, y1 - 1), fill=235)
    paint = ImageDraw.Draw(colour_layer)
    paint.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(235, 235, 225))
    s = _SUPERSAMPLE
    paint.ellipse((x0 + 2 * s, y0 + 2 * s, x0 + 8 * s, y0 + 8 * s), outline=(30, 30, 60), width=s)
    paint.rectangle((x0 + 10 * s, y0 + 3 * s, x1 - 2 * s, y0 + 5 * s), fill=(30, 30, 60))
    paint.rectangle((x0 + 10 * s, y0 + 6 * s, x1 - 4 * s, y0 + 7 * s), fill=(30, 30, 60))
    return _downsample(colour_layer) * 235 / 255, _downsample(coverage)


_STAMP_COLOUR, _STAMP_COVERAGE = _stamp()


def _place_object(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    """A centre keeping the shape inside the image and clear of the stamp corner,
    so that the object never reveals whether a watermark could be there (one
    exists for any size up to ``config.MAX_OBJECT_SIZE_PX``)."""
    x0, y0, _, _ = STAMP_BOX
    while True:
        cx, cy = rng.uniform(radius + 1, IMAGE_SIZE - radius - 1, 2)
        if cx + radius < x0 - 1 or cy + radius < y0 - 1:
            return float(cx), float(cy)


def render_image(
    rng: np.random.Generator, true_class: str, background: str, colour: str, watermark: bool, object_size_px: tuple[float, float]
):
    """Draw one image; return it (uint8 H×W×3), the visible object mask and drawing facts.

    ``object_size_px`` is the (min, max) diameter of the circle around the shape.
    """
    image = _background(rng, background)
    texture = image - image.mean(axis=(0, 1))

    radius = rng.uniform(*object_size_px) / 2
    rotation = rng.uniform(0, 2 * math.pi)
    cx, cy = _place_object(rng, radius)
    big = IMAGE_SIZE * _SUPERSAMPLE
    silhouette = Image.new("L", (big, big))
    ImageDraw.Draw(silhouette).polygon(_shape_polygon(true_class, cx, cy, radius, rotation, rng), fill=255)
    shape_alpha = _downsample(silhouette)
    silhouette_mask = shape_alpha >= 0.5
    jitter = rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    fill = np.asarray(COLOURS[colour], np.float32) + jitter + _TEXTURE_IN_OBJECT * texture
    alpha = (shape_alpha * rng.uniform(*_OPACITY))[..., None]
    image = image * (1 - alpha) + fill * alpha

    # Redraw the clutter in the rare case it hides most of the object, so that
    # every image still shows enough of its shape to deserve its class.
    while True:
        clutter_colour, clutter_coverage = _clutter(rng, cx, cy, radius)
        visible = silhouette_mask & (clutter_coverage < 0.5)
        if visible.sum() >= _MIN_VISIBLE_FRACTION * silhouette_mask.sum():
            break
    image = image * (1 - clutter_coverage[..., None]) + clutter_colour
    if watermark:
        image = image * (1 - _STAMP_COVERAGE[..., None]) + _STAMP_COLOUR
    image = image + rng.normal(0, 0.025, image.shape).astype(np.float32)

    facts = {
        "size_px": round(2 * radius, 2),
        "rotation_deg": round(math.degrees(rotation), 1),
        "center_x": round(cx, 2),
        "center_y": round(cy, 2),
        "visible_fraction": round(float(visible.sum() / silhouette_mask.sum()), 3),
    }
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return pixels, visible, facts


# --------------------------------------------------------------------------- writing


def generate_dataset(data_dir: Path, config: DemoConfig, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Draw all four splits under ``data_dir`` and write ``metadata.csv``.

    Output is a pure function of ``config`` (same seed → byte-identical PNGs and
    CSV): each image has its own random stream keyed by (seed, split, index), so
    images do not depend on the order or the number of other images drawn.
    Returns the metadata table as written.
    """
    if config.image_size != IMAGE_SIZE:
        raise SliceScopeError(
            f"the demo draws {IMAGE_SIZE}-px images, not {config.image_size}-px",
            f"use image_size={IMAGE_SIZE} in the DemoConfig",
        )
    data_dir = Path(data_dir)
    # Without a balanced model (the quick demo) its training split is not drawn.
    sizes = {"train": config.n_train, "balanced_train": config.n_train if config.balanced_model else 0, "val": config.n_val, "test": config.n_test}
    plan = pd.concat([_plan_split(split, n, config) for split, n in sizes.items()], ignore_index=True)
    for split in SPLITS:
        (data_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (data_dir / "masks" / split).mkdir(parents=True, exist_ok=True)

    plan["position"] = plan.groupby("split").cumcount()
    samples = plan.to_dict("records")
    rows = []
    for image_id, sample in enumerate(track(samples, "drawing demo images", len(samples), progress)):
        split = sample["split"]
        rng = np.random.default_rng([config.seed, SPLITS.index(split), sample["position"], 1])
        watermark, label_flipped = bool(sample["watermark"]), bool(sample["label_flipped"])
        pixels, mask, facts = render_image(
            rng, sample["true_class"], sample["background"], sample["colour"], watermark, config.object_size_px
        )
        image_path = f"images/{split}/{image_id:05d}.png"
        mask_path = f"masks/{split}/{image_id:05d}.png"
        Image.fromarray(pixels, "RGB").save(data_dir / image_path)
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(data_dir / mask_path)
        rows.append(
            {
                "path": image_path,
                "split": split,
                "label": sample["label"],
                "true_class": sample["true_class"],
                "colour": sample["colour"],
                "background": sample["background"],
                "watermark": watermark,
                "label_flipped": label_flipped,
                "group": group_of(
                    sample["true_class"], sample["background"], sample["colour"], watermark, label_flipped
                ),
                "mask_path": mask_path,
                **facts,
            }
        )
    metadata = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    # Lower-case booleans, as documented; pandas reads them back as bool.
    written = metadata.copy()
    for column in ("watermark", "label_flipped"):
        written[column] = written[column].map({True: "true", False: "false"})
    written.to_csv(data_dir / "metadata.csv", index=False, lineterminator="\n")
    return metadata
