"""Counterfactual augmentation: cutting objects out, compositing, batches (preview → accept/discard → history), retraining with them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from core.cli import main as cli_main
from core.errors import SliceScopeError
from core.extract import workspace_model_spec
from core.mitigation import (
    MODEL_FILE,
    AugmentParams,
    ImageGroup,
    TrainingParams,
    accept_batch,
    batch_history,
    batch_images,
    batches_folder,
    check_methods,
    cluster_columns,
    composite,
    discard_batch,
    foreground_masks,
    interrupted_batches,
    largest_component,
    last_linear_layer,
    list_batches,
    load_batches,
    load_training_view,
    make_batch,
    next_version_path,
    object_boxes,
    pair_donors,
    plan_mitigation,
    read_annotations,
    run_mitigation,
    segment_foreground,
    style_clusters,
    transfer_colour,
    usable_mask,
    version_board,
)
from core.models import load_module
from core.training import default_training_data
from tests.mitigation.test_mitigation import tree_digest

SIZE = 64


def scene(seed: int, colour=(220, 30, 30), background=(40, 90, 200), centre=(30, 34), radius=9) -> tuple[np.ndarray, np.ndarray]:
    """A disc of one colour on a noisy background, and its true mask."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.array(background) + rng.normal(0, 18, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius**2
    image[mask] = colour
    return image, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_finds_the_object_from_the_frame_a_box_or_a_map():
    image, truth = scene(0)
    assert iou(segment_foreground(image), truth) > 0.7
    assert iou(segment_foreground(image, box=(18, 22, 42, 46)), truth) > 0.7
    attribution = np.zeros((SIZE, SIZE))
    attribution[truth] = 1.0
    assert iou(segment_foreground(image, attribution=attribution), truth) > 0.7
    with pytest.raises(SliceScopeError, match="outside"):
        segment_foreground(image, box=(80, 80, 90, 90))


def test_clutter_apart_from_the_object_is_left_out():
    image, truth = scene(0)
    image[5:9, 50:58] = (250, 250, 40)  # a small leaf, far from the disc
    mask = segment_foreground(image)
    assert not mask[5:9, 50:58].any() and iou(mask, truth) > 0.7
    two_blobs = np.zeros((SIZE, SIZE), bool)
    two_blobs[10:30, 10:30], two_blobs[40:44, 40:44] = True, True
    assert largest_component(two_blobs).sum() == 400


def test_masks_that_cover_nothing_or_everything_are_not_objects():
    assert not usable_mask(np.zeros((SIZE, SIZE), bool))
    assert not usable_mask(np.ones((SIZE, SIZE), bool))
    assert usable_mask(scene(0)[1])
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)  # nothing to separate: GrabCut cannot run
    assert segment_foreground(flat).dtype == bool


def test_a_counterfactual_keeps_the_object_and_takes_the_donors_context_and_colour():
    source, source_mask = scene(0, colour=(220, 30, 30), background=(40, 90, 200))
    donor, donor_mask = scene(1, colour=(30, 200, 40), background=(200, 180, 90), centre=(14, 14), radius=6)
    result = composite(source, source_mask, donor, donor_mask, AugmentParams(background=True, colour=True))
    inside = result[source_mask].astype(float).mean(axis=0)
    assert inside[1] > inside[0]  # the red disc took the green donor object's colour
    far = np.zeros((SIZE, SIZE), bool)
    far[50:, 50:] = True
    assert np.abs(result[far].astype(float).mean(axis=0) - donor[far].mean(axis=0)).max() < 3  # the donor's background
    assert np.abs(result[14, 14].astype(float) - np.array([200, 180, 90])).max() < 60  # the donor's own object was inpainted away
    only_background = composite(source, source_mask, donor, donor_mask, AugmentParams(colour=False))
    assert np.array_equal(only_background[source_mask], source[source_mask])
    recoloured = transfer_colour(source, source_mask, donor, donor_mask)
    assert np.array_equal(recoloured[~source_mask], source[~source_mask])
    with pytest.raises(SliceScopeError, match="changes nothing"):
        AugmentParams(background=False, colour=False)


def test_donors_are_always_of_another_class():
    rng = np.random.default_rng(0)
    sources = np.array([0, 0, 1, 2, 2, 2])
    pool = np.array([0, 1, 1, 2, 3, 3, 0])
    donors = pair_donors(sources, pool, 3, rng)
    assert len(donors) == 18 and (pool[donors] != np.repeat(sources, 3)).all()
    with pytest.raises(SliceScopeError, match="no images of another class"):
        pair_donors(np.array([1, 1]), np.array([1, 1, 1]), 1, rng)


def test_crowd_boxes_name_objects_by_class():
    boxes = pd.DataFrame({"image_id": ["a", "a", "b"], "entity_type": ["Circles", "water", "star"],
                          "x0": [1, 0, 5], "y0": [2, 0, 5], "x1": [10, 64, 9], "y1": [12, 64, 9]})
    assert object_boxes(boxes, ["circle", "star"]) == {"a": [(1.0, 2.0, 10.0, 12.0)], "b": [(5.0, 5.0, 9.0, 9.0)]}


def test_image_groups_parse_and_refuse():
    assert ImageGroup.parse("slice:1,2") == ImageGroup("slice", (1, 2)) and str(ImageGroup.parse(" rest ")) == "rest"
    for bad in ("slices:1", "slice:", "cluster:x"):
        with pytest.raises(SliceScopeError):
            ImageGroup.parse(bad)


def test_methods_combine_or_say_why_not():
    assert check_methods(("reweight", "augment"), TrainingParams(), ("batch-001",)) == ("augment", "reweight")
    with pytest.raises(SliceScopeError, match="at least one accepted batch"):
        check_methods(("augment",), TrainingParams(), ())
    with pytest.raises(SliceScopeError, match="last-layer refit"):
        check_methods(("corm", "last_layer"), TrainingParams(), ())
    with pytest.raises(SliceScopeError, match="unknown mitigation method"):
        check_methods(("gan",), TrainingParams(), ())
    with pytest.raises(SliceScopeError, match="cannot start from scratch"):
        check_methods(("last_layer",), TrainingParams(from_scratch=True), ())


# ---------------------------------------------------------------------------- on the tiny demo


@pytest.fixture
def state(line, store):
    return read_annotations(store, line)


@pytest.fixture
def view(line, state):
    return load_training_view(line, state.slice_ids, {}, default_training_data(line))


def test_cluster_view_columns_hold_each_clusters_nearest_images(view):
    labels, distances = style_clusters(view.features, 4)
    assert set(labels) == {0, 1, 2, 3}
    for cluster, rows in cluster_columns(labels, distances, 3).items():
        members = np.flatnonzero(labels == cluster)
        assert set(rows) <= set(members) and distances[rows].max() <= np.sort(distances[members])[len(rows) - 1]
    with pytest.raises(SliceScopeError, match="2 to 20"):
        style_clusters(view.features, 1)


def test_batches_are_previewed_decided_once_and_never_changed(line, view):
    clusters, _ = style_clusters(view.features, 3)
    sources = ImageGroup("slice", (int(view.nearest_slice[0]),))
    record = make_batch(line, view, sources, ImageGroup("rest"), max_images=20, clusters=clusters)
    assert record.state == "preview" and 0 < record.images <= 20 and sum(record.per_class.values()) == record.images
    arrays = batch_images(line, record.batch_id)
    assert arrays["pixels"].shape == (record.images, SIZE, SIZE, 3)
    # every counterfactual keeps its source's label, and its donor is of another class
    labels_of = dict(zip(view.image_ids, view.labels))
    assert all(view.classes[labels_of[s]] == label for s, label in zip(arrays["source_ids"], arrays["labels"]))
    assert all(labels_of[s] != labels_of[d] for s, d in zip(arrays["source_ids"], arrays["donor_ids"]))

    accepted = accept_batch(line, record.batch_id)
    digest = tree_digest(batches_folder(line) / record.batch_id)
    with pytest.raises(SliceScopeError, match="already accepted"):
        discard_batch(line, record.batch_id)
    other = make_batch(line, view, ImageGroup("rest"), sources, max_images=10)
    discard_batch(line, other.batch_id)
    assert tree_digest(batches_folder(line) / record.batch_id) == digest
    assert [r.state for r in list_batches(line)] == ["accepted", "discarded"] and accepted.batch_id == "batch-001"
    history = batch_history(line)
    assert list(history["batch"]) == ["batch-001", "batch-002"] and history["style"].iat[0] == "rest (of 3 clusters)"

    # killed mid-batch: the half-made folder never counts and the next batch clears it
    (batches_folder(line) / "batch-003.partial").mkdir()
    assert interrupted_batches(line) == ["batch-003"] and len(list_batches(line)) == 2
    with pytest.raises(SliceScopeError, match="not accepted"):
        load_batches(line, ["batch-002"], view.classes)

    # a batch changed on disk is refused, not trained on
    images = batches_folder(line) / record.batch_id / "images.npz"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(SliceScopeError, match="changed or went missing"):
        load_batches(line, [record.batch_id], view.classes)


def test_bad_sources_and_styles_get_one_line(line, view):
    circle = view.classes.index("circle")
    circles_only = np.flatnonzero(view.labels == circle)
    clusters = np.where(view.labels == circle, 0, 1)
    with pytest.raises(SliceScopeError, match="no images of another class"):
        make_batch(line, view, ImageGroup("cluster", (0,)), ImageGroup("cluster", (0,)), clusters=clusters)
    # circles among the sources of a circles-only style are left out (and counted), the others are served
    with_a_mixed_cluster = clusters.copy()
    with_a_mixed_cluster[circles_only[:4]] = 2
    with_a_mixed_cluster[np.flatnonzero(view.labels != circle)[:4]] = 2
    mixed = make_batch(line, view, ImageGroup("cluster", (2,)), ImageGroup("cluster", (0,)), clusters=with_a_mixed_cluster)
    assert "circle" not in mixed.per_class and mixed.left_out >= 4
    discard_batch(line, mixed.batch_id)
    with pytest.raises(SliceScopeError, match="cannot both be the rest"):
        make_batch(line, view, ImageGroup("rest"), ImageGroup("rest"))
    with pytest.raises(SliceScopeError, match="no object boxes"):
        foreground_masks(view, circles_only, "crowd", crowd_boxes={"not-an-image-of-this-line": [(0, 0, 5, 5)]})
    with pytest.raises(SliceScopeError, match="annotated core"):
        foreground_masks(view, circles_only, "attribution", core_slices=[])
    with pytest.raises(SliceScopeError, match="empty batch"):
        make_batch(line, view, ImageGroup("cluster", (0,)), ImageGroup("cluster", (1,)), clusters=clusters, max_images=0)
    assert [record.state for record in list_batches(line)] == ["discarded"]  # the refusals left no batch behind


def test_retraining_with_batches_and_slice_balance_records_its_history(line, state, view):
    record = make_batch(line, view, ImageGroup("slice", (int(view.nearest_slice[0]),)), ImageGroup("rest"), max_images=30)
    with pytest.raises(SliceScopeError, match="not accepted"):
        run_mitigation(plan_mitigation(line, state, "annotations", next_version_path(line), params=TrainingParams(epochs=1),
                                       methods=("augment",), batches=[record.batch_id]), state.slice_ids)
    accept_batch(line, record.batch_id)
    before = tree_digest(line.path)
    out = next_version_path(line)
    job = plan_mitigation(line, state, "annotations", out, params=TrainingParams(epochs=1, batch_size=32), methods=("reweight", "augment"),
                          batches=[record.batch_id])
    assert job.methods == ("augment", "reweight") and job.treated_slices == () and len(job.batch_hashes) == 1
    version = run_mitigation(job, state.slice_ids)
    info = json.loads((version.path / "version.json").read_text())
    assert info["augmented_images"] == record.images and info["job"]["batches"] == [record.batch_id]
    assert tree_digest(line.path) == before  # the parent (and its accepted batch) untouched
    assert batch_history(line)["versions"].iat[0] == "v2"
    board = version_board(line)
    assert list(board["mitigation"]) == ["original model", "augment + reweight"] and board["batches"].iat[1] == record.batch_id


def test_last_layer_refit_changes_only_the_last_layer(line, state):
    job = plan_mitigation(line, state, "annotations", next_version_path(line), params=TrainingParams(epochs=3, learning_rate=0.05),
                          methods=("last_layer", "reweight"))
    version = run_mitigation(job, state.slice_ids)
    before = load_module(workspace_model_spec(line)).state_dict()
    after = torch.load(job.folder / MODEL_FILE, weights_only=True)
    layer = last_linear_layer(load_module(workspace_model_spec(line)))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith(("weight", "bias")) for name in changed)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in changed)
    assert len(changed) <= len(list(layer.parameters()))
    assert len(json.loads((version.path / "version.json").read_text())["history"]) == 3


def test_cli_augments_lists_and_retrains(line, capsys):
    assert cli_main(["augment", str(line.path), "--sources", "rest", "--style", "cluster:0", "--clusters", "2", "--max-images", "12", "--accept",
                     "--out", str(line.path.parent / "batch-pictures")]) == 0
    printed = capsys.readouterr().out
    assert "batch-001 (accepted)" in printed and "PNG files and labels.csv" in printed
    assert len(list((line.path.parent / "batch-pictures").glob("*.png"))) == len(pd.read_csv(line.path.parent / "batch-pictures" / "labels.csv"))
    assert cli_main(["batches", str(line.path)]) == 0
    assert "batch-001" in capsys.readouterr().out
    out = line.path.with_name("workspace-v2")
    assert cli_main(["mitigate", str(line.path), "--method", "augment", "--method", "last-layer", "--epochs", "2", "--lr", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "retraining with augment + last_layer" in printed and "batches batch-001" in printed and "new version ready" in printed
    assert cli_main(["mitigate", str(line.path), "--method", "gan", "--out", str(line.path.with_name("workspace-v3"))]) == 2
    assert "error: unknown mitigation method 'gan'" in capsys.readouterr().err
