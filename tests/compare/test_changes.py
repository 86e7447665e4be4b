"""DASH's Mosaic and Trace views' data: versions lined up by image, the two-version confusion mosaic, the trace's transitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.compare import (
    OTHER_CLASSES,
    VersionOutcomes,
    confusion_mosaic,
    false_positive_sample,
    mosaic_members,
    trace_steps,
    version_outcomes,
)
from core.compare.sampling import outcomes as class_outcomes
from core.errors import SliceScopeError


def outcomes_of(labels: list[str], *predictions: list[str], classes: tuple[str, ...] | None = None) -> VersionOutcomes:
    stacked = np.stack([np.asarray(p, dtype=object) for p in predictions], axis=1)
    labels_array = np.asarray(labels, dtype=object)
    return VersionOutcomes(
        names=tuple(f"v{i}" for i in range(len(predictions))), classes=classes or tuple(sorted(set(labels))),
        images=pd.DataFrame({"image_id": [f"img{i}" for i in range(len(labels))], "label": labels_array}),
        rows=np.tile(np.arange(len(labels))[:, None], (1, len(predictions))), predictions=stacked, correct=stacked == labels_array[:, None],
    )


def test_versions_line_up_by_image_whatever_the_row_order(pair):
    biased, balanced = pair
    outcomes = version_outcomes([biased, balanced])
    assert outcomes.names == (biased.name, balanced.name)
    for version, workspace in enumerate((biased, balanced)):
        table = workspace.images.set_index("image_id")
        assert (table.loc[outcomes.images["image_id"], "prediction"].to_numpy() == outcomes.predictions[:, version]).all()
        assert (table.loc[outcomes.images["image_id"], "correct"].to_numpy() == outcomes.correct[:, version]).all()
        assert (workspace.images["image_id"].to_numpy()[outcomes.rows[:, version]] == outcomes.images["image_id"].to_numpy()).all()
    wrong = outcomes.always_wrong()
    assert (~outcomes.correct[wrong]).all() and outcomes.correct[np.setdiff1d(np.arange(len(outcomes.images)), wrong)].any(axis=1).all()
    with pytest.raises(SliceScopeError, match="choose two or more versions"):
        version_outcomes([biased])


def test_mosaic_areas_follow_the_counts_and_colour_says_where_b_does_better():
    labels = ["cat"] * 6 + ["dog"] * 4
    before = ["cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "cat", "cat"]
    after = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "dog", "dog", "cat"]
    cells = confusion_mosaic(outcomes_of(labels, before, after)).set_index(["label", "prediction"])
    assert cells.loc[("cat", "cat"), ["count_a", "count_b", "improvement"]].tolist() == [2, 4, 2]
    assert cells.loc[("cat", "dog"), ["count_a", "count_b", "improvement"]].tolist() == [4, 2, 2]  # fewer errors is better
    assert cells.loc[("dog", "cat"), ["count_a", "count_b", "improvement"]].tolist() == [2, 1, 1]
    area = (cells["x1"] - cells["x0"]) * (cells["y1"] - cells["y0"])
    mean_count = (cells["count_a"] + cells["count_b"]) / 2
    assert np.allclose(area / mean_count, (area / mean_count).iloc[0])  # area ∝ the versions' mean count
    for _, column in cells.groupby(level="label"):  # each column's cells stack from top to bottom without gaps
        assert column["y1"].max() == pytest.approx(1) and column["y0"].min() == pytest.approx(0)
        assert np.allclose(column["y0"].to_numpy()[:-1], column["y1"].to_numpy()[1:])
    assert cells.loc[("cat", "cat"), "x1"] < cells.loc[("dog", "dog"), "x0"]  # columns apart, in class order


def test_many_classes_pool_the_least_changed_and_members_follow_the_pooling():
    rng = np.random.default_rng(0)
    classes = tuple(f"c{i:02d}" for i in range(15))
    labels = list(rng.choice(classes, 600))
    before = [label if rng.random() < 0.7 else rng.choice(classes) for label in labels]
    after = list(before)
    for i in np.flatnonzero(np.isin(labels, ["c03", "c07"]))[:40]:
        after[i] = "c11"  # B breaks c03 and c07 into c11: the classes that changed most
    outcomes = outcomes_of(labels, before, after, classes=classes)
    cells = confusion_mosaic(outcomes, max_classes=6)
    groups = set(cells["label"]) | set(cells["prediction"])
    assert len(groups) == 6 and OTHER_CLASSES in groups and {"c03", "c07", "c11"} <= groups
    assert cells["count_a"].sum() == cells["count_b"].sum() == len(labels)
    picked = cells[(cells["label"] == "c03") & (cells["prediction"] == "c11")]["cell"].tolist()
    members = mosaic_members(outcomes, cells, picked, max_classes=6)
    expected = np.flatnonzero((np.asarray(labels) == "c03") & ((np.asarray(before) == "c11") | (np.asarray(after) == "c11")))
    assert members.tolist() == expected.tolist()
    with pytest.raises(SliceScopeError, match="max_classes"):
        confusion_mosaic(outcomes, max_classes=1)


def test_trace_steps_partition_the_images_at_every_step():
    labels = ["a", "a", "b", "b", "a"]
    outcomes = outcomes_of(labels, ["a", "b", "b", "a", "b"], ["b", "a", "b", "a", "b"], ["a", "a", "b", "b", "b"])
    steps = trace_steps(outcomes)
    assert len(steps) == 2 * 4
    for _, step in steps.groupby("step"):
        assert sorted(np.concatenate(step["images"].tolist()).tolist()) == list(range(5))
    first = steps[steps["step"] == 0].set_index(["source", "target"])
    assert first.loc[("correct", "incorrect"), "images"].tolist() == [0]
    assert first.loc[("incorrect", "correct"), "images"].tolist() == [1]
    assert outcomes.always_wrong().tolist() == [4]
    assert trace_steps(outcomes, [3, 4])["count"].sum() == 2 * 2


def test_one_models_false_positives_are_sampled_for_both_models(pair):
    biased, balanced = pair
    for model, workspace in (("A", biased), ("B", balanced)):
        table = class_outcomes(workspace, "square")
        sample = false_positive_sample(biased, balanced, "square", model, per_model=5)
        mine = sample.images[sample.images["model"] == model]
        assert (mine["cell"] == "FP").all() and len(mine) == min(5, int((table["cell"] == "FP").sum()))
        assert sample.image_ids("A") == sample.image_ids("B")  # both models attributed on the same images
    with pytest.raises(SliceScopeError, match="model"):
        false_positive_sample(biased, balanced, "square", "C")
