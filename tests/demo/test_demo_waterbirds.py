"""The Waterbirds-like variant of the demo: larger objects and a weaker water shortcut.

Drawn at a few hundred images so the checks run in seconds; only the two
settings it changes may differ from the default drawing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.demo import build_demo
from core.demo.config import PRESETS, DemoConfig
from core.demo.dataset import STAMP_BOX, generate_dataset
from core.errors import SliceScopeError

WATERBIRDS = PRESETS["waterbirds"]
DEFAULT = DemoConfig(n_train=400, n_val=32, n_test=64, epochs=1, batch_size=32, seed=0)
VARIANT = dataclasses.replace(DEFAULT, object_size_px=WATERBIRDS.object_size_px, water_rate_other=WATERBIRDS.water_rate_other)
PLAN_COLUMNS = ["split", "label", "true_class", "colour", "background", "watermark", "label_flipped", "group"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    drawings = {}
    for name, config in (("default", DEFAULT), ("variant", VARIANT)):
        data_dir = tmp_path_factory.mktemp(name)
        drawings[name] = data_dir, generate_dataset(data_dir, config)
    return drawings


def _mask_areas(data_dir: Path, metadata: pd.DataFrame) -> np.ndarray:
    return np.array([(np.asarray(Image.open(data_dir / path)) == 255).sum() for path in metadata["mask_path"]])


def test_the_preset_is_full_with_larger_objects_and_more_non_circles_on_water():
    assert WATERBIRDS == dataclasses.replace(PRESETS["full"], object_size_px=(26.0, 40.0), water_rate_other=0.05)
    assert PRESETS["full"].object_size_px == (12.0, 24.0) and PRESETS["full"].water_rate_other == 0.01


def test_objects_are_drawn_larger(drawn):
    default_dir, default = drawn["default"]
    variant_dir, variant = drawn["variant"]
    assert variant["size_px"].between(*WATERBIRDS.object_size_px).all()
    assert default["size_px"].between(*DEFAULT.object_size_px).all()
    # Mean diameters 33 px against 18 px: about 3.4 times the area.
    assert np.median(_mask_areas(variant_dir, variant)) > 2.5 * np.median(_mask_areas(default_dir, default))


def test_large_objects_stay_inside_the_frame_and_off_the_stamp(drawn):
    data_dir, metadata = drawn["variant"]
    radius = metadata["size_px"] / 2
    for centre in (metadata["center_x"], metadata["center_y"]):
        assert (centre - radius >= 0).all() and (centre + radius <= 64).all()
    x0, y0, x1, y1 = STAMP_BOX
    for row in metadata.itertuples():
        mask = np.asarray(Image.open(data_dir / row.mask_path)) == 255
        assert not mask[y0:y1, x0:x1].any(), row.mask_path
        ys, xs = np.nonzero(mask)
        assert np.hypot(xs + 0.5 - row.center_x, ys + 0.5 - row.center_y).max() <= row.size_px / 2 + 1, row.mask_path
        assert row.visible_fraction >= 0.4, row.mask_path


def test_more_non_circles_are_on_water_in_training_only(drawn):
    _, default = drawn["default"]
    _, variant = drawn["variant"]
    for config, metadata in ((DEFAULT, default), (VARIANT, variant)):
        train = metadata[metadata["split"] == "train"]
        on_water = train["background"] == "water"
        circle = train["true_class"] == "circle"
        assert on_water[~circle].mean() == pytest.approx(config.water_rate_other, abs=0.01)
        assert on_water[circle].mean() >= 0.95
    # Which images are drawn with which attributes does not depend on the object size,
    # and the held-out and balanced splits do not depend on the training rate.
    for split in ("balanced_train", "test"):
        pd.testing.assert_frame_equal(
            default.loc[default["split"] == split, PLAN_COLUMNS], variant.loc[variant["split"] == split, PLAN_COLUMNS]
        )


@pytest.mark.parametrize(
    "settings",
    [
        {"object_size_px": (0.0, 20.0)},
        {"object_size_px": (-4.0, 20.0)},
        {"object_size_px": (30.0, 20.0)},
        {"object_size_px": (26.0, 49.0)},
        {"object_size_px": (26.0,)},
        {"object_size_px": 30.0},
        {"object_size_px": ("small", "large")},
        {"water_rate_other": -0.01},
        {"water_rate_other": 1.0},
        {"water_rate_other": math.nan},
    ],
)
def test_invalid_variant_settings_are_refused(settings):
    name = next(iter(settings))
    with pytest.raises(SliceScopeError, match=f"`{name}`"):
        dataclasses.replace(DEFAULT, **settings)


def test_sizes_given_as_a_list_mean_the_same_config():
    config = dataclasses.replace(DEFAULT, object_size_px=[26, 40])
    assert config.object_size_px == (26.0, 40.0) and config == dataclasses.replace(DEFAULT, object_size_px=(26.0, 40.0))
    assert hash(config)


def test_a_demo_recorded_before_the_variant_settings_existed_is_still_found(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "recorded", DEFAULT)
    out = tmp_path / "demo"
    out.mkdir()
    old_record = {key: value for key, value in dataclasses.asdict(DEFAULT).items() if key not in ("object_size_px", "water_rate_other")}
    rows = [{"model": "biased", "group": "none", "n": 1, "accuracy": 1.0}]
    (out / "demo.json").write_text(json.dumps({"config": old_record, "preset": "recorded", "group_accuracy": rows}))
    assert build_demo(out, "recorded").group_accuracy.to_dict("records") == rows
    # A record written now holds the sizes as a JSON list.
    (out / "demo.json").write_text(json.dumps({"config": dataclasses.asdict(DEFAULT), "preset": "recorded", "group_accuracy": rows}))
    assert build_demo(out, "recorded").group_accuracy.to_dict("records") == rows
    monkeypatch.setitem(PRESETS, "recorded", VARIANT)
    with pytest.raises(SliceScopeError, match="other settings"):
        build_demo(out, "recorded")
