"""Fast checks of the demo benchmark generator (tiny preset), plus a training smoke test.

The planted ground truth is what SliceScope's demo is judged against, so these
tests pin the invariants it relies on: reproducibility, the table layout, masks
that cover the drawn object, and groups that agree with the attributes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.demo.config import PRESETS
from core.demo.dataset import BACKGROUNDS, CLASSES, COLOURS, generate_dataset
from core.demo.model import build_demo_cnn
from core.demo.train import group_accuracy, train_classifier

TINY = PRESETS["tiny"]
EXPECTED_COLUMNS = [
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
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    data_dir = tmp_path_factory.mktemp("demo")
    return data_dir, generate_dataset(data_dir, TINY)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_gives_identical_files_and_other_seed_differs(demo, tmp_path):
    data_dir, metadata = demo
    again = generate_dataset(tmp_path / "again", TINY)
    pd.testing.assert_frame_equal(metadata, again)
    assert (data_dir / "metadata.csv").read_bytes() == (tmp_path / "again" / "metadata.csv").read_bytes()
    for relative in list(metadata["path"]) + list(metadata["mask_path"]):
        assert (data_dir / relative).read_bytes() == (tmp_path / "again" / relative).read_bytes(), relative

    other = generate_dataset(tmp_path / "other", dataclasses.replace(TINY, seed=TINY.seed + 1))
    assert not metadata.equals(other)
    first = metadata["path"].iloc[0]
    assert (data_dir / first).read_bytes() != (tmp_path / "other" / first).read_bytes()


def test_metadata_columns_and_csv_round_trip(demo):
    data_dir, metadata = demo
    assert list(metadata.columns[: len(EXPECTED_COLUMNS)]) == EXPECTED_COLUMNS
    pd.testing.assert_frame_equal(pd.read_csv(data_dir / "metadata.csv"), metadata)
    header, first_row = (data_dir / "metadata.csv").read_text().splitlines()[:2]
    assert header.startswith(",".join(EXPECTED_COLUMNS))
    assert ",true," in first_row or ",false," in first_row  # documented lower-case booleans
    sizes = metadata["split"].value_counts()
    assert sizes.to_dict() == {
        "train": TINY.n_train,
        "balanced_train": TINY.n_train,
        "val": TINY.n_val,
        "test": TINY.n_test,
    }
    assert metadata["path"].is_unique
    assert all(path == f"images/{split}/{Path(path).name}" for path, split in zip(metadata["path"], metadata["split"]))
    assert all(Path(path).stem.isdigit() and len(Path(path).stem) == 5 for path in metadata["path"])
    assert set(metadata["colour"]) <= set(COLOURS)
    assert set(metadata["background"]) <= set(BACKGROUNDS)
    assert set(metadata["true_class"]) <= set(CLASSES) and set(metadata["label"]) <= set(CLASSES)


def test_images_are_64px_rgb(demo):
    data_dir, metadata = demo
    for path in metadata["path"]:
        with Image.open(data_dir / path) as image:
            assert image.mode == "RGB" and image.size == (64, 64)


def test_masks_are_binary_nonempty_and_cover_the_object(demo):
    data_dir, metadata = demo
    for row in metadata.itertuples():
        mask = _pixels(data_dir / row.mask_path)
        assert mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        inside = mask == 255
        assert inside.sum() > 10, row.mask_path
        assert row.visible_fraction >= 0.4, row.mask_path
        # Every mask pixel lies within the drawn shape's circle (from the metadata)...
        ys, xs = np.nonzero(inside)
        radius = np.hypot(xs + 0.5 - row.center_x, ys + 0.5 - row.center_y)
        assert radius.max() <= row.size_px / 2 + 1, row.mask_path
        # ...and shows the object's named colour, more than the rest of the image does.
        image = _pixels(data_dir / row.path).astype(float) / 255
        distance = np.linalg.norm(image - np.asarray(COLOURS[row.colour]), axis=2)
        assert np.median(distance[inside]) < 0.25, row.path
        assert np.median(distance[inside]) < np.median(distance[~inside]), row.path


def _expected_group(row) -> str:
    if row.label_flipped:
        return "flipped_label"
    if (row.background == "water") != (row.true_class == "circle"):
        return "background"
    if (row.colour == "red") != (row.true_class == "square"):
        return "colour"
    if row.watermark != (row.true_class == "triangle"):
        return "watermark"
    return "none"


def test_groups_and_labels_agree_with_attributes(demo):
    _, metadata = demo
    assert list(metadata["group"]) == [_expected_group(row) for row in metadata.itertuples()]
    flipped = metadata[metadata["label_flipped"]]
    assert (flipped["true_class"] == "star").all() and (flipped["label"] == "triangle").all()
    unflipped = metadata[~metadata["label_flipped"]]
    assert (unflipped["label"] == unflipped["true_class"]).all()
    assert not metadata.loc[metadata["split"] == "balanced_train", "label_flipped"].any()
    test = metadata[metadata["split"] == "test"]
    assert set(test["group"]) == {"none", "background", "colour", "watermark", "flipped_label"}


def test_training_split_carries_the_shortcuts(demo):
    _, metadata = demo
    train = metadata[metadata["split"] == "train"]
    by_class = train.groupby("true_class")
    on_water = by_class["background"].apply(lambda s: (s == "water").mean())
    red = by_class["colour"].apply(lambda s: (s == "red").mean())
    stamped = by_class["watermark"].mean()
    assert on_water["circle"] >= 0.95 and on_water.drop("circle").max() <= 0.02
    assert red["square"] >= 0.95 and red.drop("square").max() <= 0.02
    assert stamped["triangle"] >= 0.85 and stamped.drop("triangle").max() <= 0.03


def test_every_split_has_all_four_classes(demo):
    _, metadata = demo
    for split, rows in metadata.groupby("split"):
        assert set(rows["true_class"]) == set(CLASSES), split


def test_model_feature_map_and_training_smoke(demo):
    data_dir, metadata = demo
    model = build_demo_cnn(num_classes=4)
    assert model.features(torch.rand(2, 3, 64, 64)).shape[-2:] == (8, 8)

    trained, history = train_classifier(metadata, data_dir, "train", TINY)
    assert not trained.training
    assert [entry["epoch"] for entry in history] == list(range(1, TINY.epochs + 1))
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    again, _ = train_classifier(metadata, data_dir, "train", TINY)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name

    table = group_accuracy(trained, metadata, data_dir, "test")
    assert list(table.columns) == ["group", "n", "accuracy"]
    assert table["n"].sum() == TINY.n_test
    assert table["accuracy"].between(0, 1).all()


def test_a_demo_without_balanced_model_or_crowd_builds_one_workspace_and_records_progress(tmp_path, monkeypatch):
    import fcntl

    from core.demo import BUILD_LOG, build_demo, build_progress, is_demo_built, workspace_dir

    # The quick preset's shape (one model, no campaign) at the tiny preset's size.
    monkeypatch.setitem(PRESETS, "tiny-quick", dataclasses.replace(TINY, balanced_model=False, crowd_images=0))
    out = tmp_path / "demo"
    assert build_progress(out) is None
    build_demo(out, "tiny-quick")
    assert is_demo_built(out) and workspace_dir(out, "biased").is_dir() and not workspace_dir(out, "balanced").exists()
    metadata = pd.read_csv(out / "data" / "metadata.csv")
    assert "balanced_train" not in set(metadata["split"]) and not (out / "models" / "balanced.pt").exists()
    assert not (out / "simulated-crowd-tokens.json").exists()
    finished = build_progress(out)
    assert finished is not None and not finished.running and finished.step and finished.fraction == 1.0
    # Another builder holds the folder's lock: the build is reported as running, with what it last recorded.
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert build_progress(out).running
    assert not (out / BUILD_LOG).exists()  # only a background build writes a log
