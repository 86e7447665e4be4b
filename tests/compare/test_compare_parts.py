"""IMACS's parts: sampling, grid and SLIC segments, segment Shapley values, tiles and their embedding, cluster summaries."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from torch import nn

from core.compare import (
    CELLS,
    EmbeddingParams,
    SegmentParams,
    ShapleyParams,
    balanced_sample,
    blur,
    check_comparable,
    cluster_summary,
    dataset_colour,
    disagreement_sample,
    embedding_model,
    gradcam_players,
    grid_segments,
    player_boxes,
    segment_boxes,
    segment_id_count,
    segment_images,
    segment_tiles,
    shapley_values,
)
from core.compare.attribution import refuse_constant_model
from core.errors import SliceScopeError
from core.workspace import MANIFEST, Workspace, read_manifest


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and " — " in message
    return message


# --- sampling -------------------------------------------------------------------------------------------


def test_balanced_sample_takes_equal_cells_per_model_reproducibly(trained_and_untrained):
    trained, untrained = trained_and_untrained
    sample = balanced_sample(trained, untrained, "circle", per_model=16, seed=3)
    counts = sample.counts.set_index(["model", "cell"])
    assert (counts["requested"] == 4).all()
    assert (counts["taken"] == counts[["requested", "available"]].min(axis=1)).all()
    for model in ("A", "B"):
        drawn = sample.images[sample.images["model"] == model]
        assert drawn["cell"].value_counts().reindex(list(CELLS), fill_value=0).tolist() == counts.loc[model, "taken"].tolist()
        assert drawn["image_id"].is_unique
    # Each model's cells come from its own predictions: A's positives are the images A calls circles.
    a = sample.images[sample.images["model"] == "A"]
    assert ((a["prediction"] == "circle") == a["cell"].isin(["TP", "FP"])).all()
    assert sample.images.equals(balanced_sample(trained, untrained, "circle", per_model=16, seed=3).images)
    assert not sample.images.equals(balanced_sample(trained, untrained, "circle", per_model=16, seed=4).images)


def test_a_class_without_false_positives_still_samples_and_says_so(trained_and_untrained):
    trained, untrained = trained_and_untrained
    assert not (untrained.images["prediction"] == "circle").any()  # the untrained network calls everything one other class
    sample = balanced_sample(trained, untrained, "circle", per_model=16)
    counts = sample.counts.set_index(["model", "cell"])["taken"]
    assert counts[("B", "FP")] == 0 and counts[("B", "TP")] == 0 and counts[("B", "TN")] == 4
    assert any(message.startswith("model B has no false positives for circle") for message in sample.messages)
    assert not any(message.startswith("model A") for message in sample.messages)


def test_disagreement_sample_puts_the_most_confident_disagreements_first(trained_and_untrained):
    trained, untrained = trained_and_untrained
    sample = disagreement_sample(trained, untrained, "circle", per_model=6)
    a, b = (sample.images[sample.images["model"] == model] for model in ("A", "B"))
    assert a["image_id"].tolist() == b["image_id"].tolist() and len(a) == 6
    assert ((a["prediction"].to_numpy() == "circle") != (b["prediction"].to_numpy() == "circle")).all()
    gaps = np.abs(a["score"].to_numpy() - b["score"].to_numpy())
    assert (np.diff(gaps) <= 1e-12).all()
    assert disagreement_sample(trained, trained, "circle", per_model=6).messages == ("models A and B disagree about circle on no images, fewer than the 6 asked for",)


def _copy_with(workspace: Workspace, target, manifest_change=None, images_change=None) -> Workspace:
    shutil.copytree(workspace.path, target)
    if manifest_change:
        manifest = read_manifest(target)
        manifest_change(manifest)
        (target / MANIFEST).write_bytes(tomli_w.dumps(manifest).encode())
    if images_change:
        images_change(pd.read_parquet(target / "images.parquet")).to_parquet(target / "images.parquet", index=False)
    return Workspace(target)


def test_workspaces_that_do_not_compare_are_refused_in_one_line(pair, tmp_path):
    biased, balanced = pair

    def rename_class(manifest):
        manifest["model"]["classes"] = ["circle", "square", "triangle", "hexagon"]

    other_classes = _copy_with(balanced, tmp_path / "other-classes", manifest_change=rename_class)
    with pytest.raises(SliceScopeError, match="different classes") as error:
        balanced_sample(biased, other_classes, "circle", per_model=8)
    assert "hexagon" in _one_line(error)

    fewer = _copy_with(balanced, tmp_path / "fewer-images", images_change=lambda images: images.iloc[:-3])
    with pytest.raises(SliceScopeError, match="hold different images") as error:
        check_comparable(biased, fewer)
    assert "3 only in the first" in _one_line(error)

    with pytest.raises(SliceScopeError, match="class 'hexagon' is not one of") as error:
        balanced_sample(biased, balanced, "hexagon")
    assert "`class_name`" in _one_line(error)
    with pytest.raises(SliceScopeError, match="`per_model`"):
        balanced_sample(biased, balanced, "circle", per_model=3)


# --- segments and Shapley values -------------------------------------------------------------------------


def test_grid_segments_number_cells_row_by_row_and_box_them():
    mask = grid_segments(64, 4)
    assert mask.shape == (64, 64) and mask[0, 0] == 0 and mask[0, 63] == 3 and mask[63, 0] == 12 and mask[63, 63] == 15
    assert np.bincount(mask.ravel()).tolist() == [256] * 16
    boxes = segment_boxes(mask, 16)
    assert boxes[0].tolist() == [0, 0, 16, 16] and boxes[15].tolist() == [48, 48, 64, 64]
    assert np.unique(grid_segments(30, 4)).tolist() == list(range(16))  # a side the grid does not divide
    with pytest.raises(SliceScopeError, match="`grid`"):
        SegmentParams(grid=0)
    # The grid's cache key is what it was before SLIC's parameters existed, so grid results cached then are still found.
    assert SegmentParams().record() == {"method": "grid", "grid": 4}


def _scenes(n: int = 4, size: int = 32) -> torch.Tensor:
    """Flat-coloured images with 1..n rectangles of other colours and a little noise: each gets its own superpixels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 1, 1, generator=generator).expand(n, 3, size, size).clone()
    for image in range(n):
        for _ in range(image + 1):
            x, y = torch.randint(0, size - 8, (2,), generator=generator).tolist()
            images[image, :, y:y + 8 + image, x:x + 8] = torch.rand(3, 1, 1, generator=generator)
    return (images + 0.02 * torch.rand(images.shape, generator=generator)).clamp(0, 1)


def test_slic_segments_are_connected_regions_covering_every_pixel_numbered_without_gaps():
    from scipy import ndimage

    images = _scenes()
    masks = segment_images(len(images), 32, SegmentParams(method="slic", n_segments=16), images)
    assert masks.shape == (4, 32, 32) and masks.dtype == np.int64
    counts = [int(mask.max()) + 1 for mask in masks]
    assert len(set(counts)) > 1 and all(8 <= count <= 24 for count in counts)  # around n_segments, differing per image
    for mask, count in zip(masks, counts):
        assert np.unique(mask).tolist() == list(range(count))  # every pixel has a segment, ids 0..k−1
        assert all(ndimage.label(mask == segment)[1] == 1 for segment in range(count))  # each one connected region
    assert segment_id_count(masks, SegmentParams(method="slic")) == max(counts)
    np.testing.assert_array_equal(masks, segment_images(4, 32, SegmentParams(method="slic", n_segments=16), images))  # deterministic
    assert (segment_images(4, 32, SegmentParams(method="slic", compactness=1000.0), images) != masks).any()
    with pytest.raises(ValueError, match="pass their pixels"):
        segment_images(4, 32, SegmentParams(method="slic"))


@pytest.mark.parametrize(("params", "named"), [
    ({"method": "voronoi"}, "`method`"),
    ({"method": "slic", "n_segments": 0}, "`n_segments`"),
    ({"method": "slic", "n_segments": 2.5}, "`n_segments`"),
    ({"method": "slic", "compactness": 0}, "`compactness`"),
    ({"method": "slic", "compactness": float("nan")}, "`compactness`"),
])
def test_bad_segment_params_are_refused_in_one_line(params, named):
    with pytest.raises(SliceScopeError) as error:
        SegmentParams(**params)
    assert named in _one_line(error)


class _Net(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Linear(8, 4)

    def forward(self, images):
        return self.head(self.body(images).mean(dim=(2, 3)))


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapley_values_sum_to_the_score_minus_the_baseline_score():
    images, net = _images(), _Net().eval()
    segments = torch.from_numpy(grid_segments(32, 4)).expand(3, 32, 32)

    def score(pixels):
        return net(pixels)[:, 2]

    every = torch.arange(16).expand(3, 16)
    result = shapley_values(score, images, segments, every, ShapleyParams(n_samples=3))
    assert result.values.shape == (3, 16)
    np.testing.assert_allclose(result.values.sum(axis=1), result.scores - result.baseline_scores, atol=1e-5)
    with torch.no_grad():
        # The default baseline: the images' mean colour everywhere (a caller passes the dataset's), or the paper's blur.
        flat = images.mean(dim=(0, 2, 3)).view(1, 3, 1, 1).expand_as(images)
        np.testing.assert_allclose(result.baseline_scores, score(flat).numpy(), atol=1e-6)
        colour = torch.tensor([0.2, 0.4, 0.6])
        coloured = shapley_values(score, images, segments, every, ShapleyParams(n_samples=1), colour=colour)
        np.testing.assert_allclose(coloured.baseline_scores, score(colour.view(1, 3, 1, 1).expand_as(images)).numpy(), atol=1e-6)
        blurred = shapley_values(score, images, segments, every, ShapleyParams(n_samples=1, baseline="blur"))
        np.testing.assert_allclose(blurred.baseline_scores, score(blur(images, 2.0)).numpy(), atol=1e-6)  # σ = 32/16 px
    # Only some players: the others keep their pixels, and the efficiency holds against that image's baseline.
    some = torch.tensor([[0, 5, 10], [1, 2, 3], [15, 14, 12]])
    partial = shapley_values(score, images, segments, some, ShapleyParams(n_samples=3, images_per_call=2, perturbations_per_eval=2))
    np.testing.assert_allclose(partial.values.sum(axis=1), partial.scores - partial.baseline_scores, atol=1e-5)
    np.testing.assert_allclose(partial.scores, result.scores, atol=1e-6)


def test_images_with_different_numbers_of_slic_segments_get_exact_shapley_values_and_zero_for_padding():
    images, net = _scenes(), _Net().eval()
    masks = segment_images(len(images), 32, SegmentParams(method="slic"), images)
    counts = masks.reshape(len(masks), -1).max(axis=1) + 1
    players = gradcam_players(np.ones((len(images), 4, 4)), masks, segment_id_count(masks, SegmentParams(method="slic")), None)
    assert players.shape == (4, counts.max())  # one width for all: an image with fewer segments gets ids it lacks

    def score(pixels):
        return net(pixels)[:, 3]

    result = shapley_values(score, images, torch.from_numpy(masks), torch.from_numpy(players), ShapleyParams(n_samples=3))
    np.testing.assert_allclose(result.values.sum(axis=1), result.scores - result.baseline_scores, atol=1e-5)
    padding = players >= counts[:, None]
    assert padding.any() and (result.values[padding] == 0).all()
    assert (player_boxes(masks, players)[padding] == -1).all() and (player_boxes(masks, players)[~padding] >= 0).all()


def test_gradcam_picks_an_images_own_segments_before_padding():
    masks = np.zeros((2, 8, 8), dtype=np.int64)
    masks[0, :, 4:] = 1  # image 0: 2 segments
    masks[1] = np.arange(8)[None, :] // 2  # image 1: 4 columns of 2 px
    cams = np.zeros((2, 8, 8))
    cams[0, :, :4] = 1.0  # all of image 0's mass on segment 0
    cams[1, :, 6:] = 1.0  # image 1's on segment 3
    players = gradcam_players(cams, masks, 4, top_n=3)
    assert players[0].tolist() == [0, 1, 2] and players[1].tolist() == [0, 1, 3]  # image 0 has too few: id 2 pads it
    boxes = player_boxes(masks, players)
    assert boxes[0, 2].tolist() == [-1, -1, -1, -1] and boxes[1, 2].tolist() == [6, 0, 8, 8]


def test_batching_perturbations_changes_speed_not_values():
    images, net = _images(), _Net().eval()
    segments = torch.from_numpy(grid_segments(32, 4)).expand(3, 32, 32)
    every = torch.arange(16).expand(3, 16)

    def score(pixels):
        return net(pixels)[:, 1]

    batched = shapley_values(score, images, segments, every, ShapleyParams(n_samples=2))
    one_at_a_time = shapley_values(score, images, segments, every, ShapleyParams(n_samples=2, perturbations_per_eval=1))
    np.testing.assert_allclose(batched.values, one_at_a_time.values, atol=1e-5)


def test_an_additive_score_gets_each_segments_own_difference_exactly():
    images = _images(2)
    weights = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))

    def score(pixels):
        return (pixels * weights).sum(dim=(1, 2, 3))

    segments = torch.from_numpy(grid_segments(32, 4)).expand(2, 32, 32)
    colour = torch.tensor([0.5, 0.3, 0.1])
    for params, baseline in ((ShapleyParams(n_samples=1), colour.view(1, 3, 1, 1)), (ShapleyParams(n_samples=1, baseline="blur"), blur(images, 2.0))):
        result = shapley_values(score, images, segments, torch.arange(16).expand(2, 16), params, colour=colour)
        difference = ((images - baseline) * weights).sum(dim=1)  # N × S × S
        expected = torch.stack([difference[:, segments[0] == segment].sum(dim=1) for segment in range(16)], dim=1)
        np.testing.assert_allclose(result.values, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_both_models_are_measured_against_the_same_dataset_colour(pair):
    biased, balanced = pair
    colour = dataset_colour(biased)
    assert colour.shape == (3,) and bool(((colour > 0) & (colour < 1)).all())
    torch.testing.assert_close(dataset_colour(balanced), colour)
    with pytest.raises(SliceScopeError, match="unknown baseline 'grey'"):
        ShapleyParams(baseline="grey")


def test_a_constant_model_is_refused_and_gives_no_nans(trained_and_untrained):
    class Constant(nn.Module):
        def forward(self, images):
            return torch.zeros(len(images), 4)

    images = _images()
    with pytest.raises(SliceScopeError, match="gives the same output for every image") as error:
        refuse_constant_model(trained_and_untrained[0], Constant(), images, "none", "cpu")
    _one_line(error)
    segments = torch.from_numpy(grid_segments(32, 4)).expand(3, 32, 32)
    result = shapley_values(lambda pixels: Constant()(pixels).softmax(dim=1)[:, 0], images, segments, torch.arange(16).expand(3, 16))
    assert np.isfinite(result.values).all() and not result.values.any()


# --- tiles, embeddings, summaries ------------------------------------------------------------------------


def test_tiles_are_their_segments_resized():
    pixels = torch.zeros(1, 3, 32, 32)
    pixels[0, 0, :8, :8] = 1.0  # the first cell of a 4 × 4 grid is pure red
    boxes = segment_boxes(grid_segments(32, 4), 16)[None]
    tiles = segment_tiles(pixels, boxes, 16)
    assert tiles.shape == (16, 3, 16, 16)
    assert torch.allclose(tiles[0, 0], torch.ones(16, 16)) and tiles[1:].abs().max() == 0
    padded = np.concatenate([boxes, np.full((1, 2, 4), -1)], axis=1)  # two padding players: no tiles
    torch.testing.assert_close(segment_tiles(pixels, padded, 16), tiles)


def test_a_torchvision_embedding_model_loads_safely_and_embeds_at_its_penultimate_layer(pair, tmp_path):
    import torchvision

    checkpoint = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), checkpoint)
    embedder = embedding_model(pair[0], EmbeddingParams(arch="resnet18", checkpoint=checkpoint, num_classes=4, image_size=32))
    assert embedder.embed(torch.rand(5, 3, 32, 32)).shape == (5, 512)
    with pytest.raises(SliceScopeError, match="set `num_classes` to 4"):
        embedding_model(pair[0], EmbeddingParams(arch="resnet18", checkpoint=checkpoint))
    with pytest.raises(SliceScopeError, match="both `arch` and `checkpoint`"):
        EmbeddingParams(arch="resnet18")


def test_cluster_summary_orders_by_absolute_disparity_and_fills_absent_models():
    segments = pd.DataFrame({
        "cluster": [0, 0, 1, 1, 2],
        "image_id": ["a", "b", "c", "d", "e"],
        "model": ["A", "B", "A", "B", "A"],
        "attribution": [0.1, 0.1, 0.9, -0.1, 0.3],
    })
    summary = cluster_summary(segments, k=4)
    assert summary["cluster"].tolist() == [1, 2, 0, 3]
    assert summary.loc[0, "disparity"] == pytest.approx(1.0)
    row = summary.set_index("cluster").loc[2]
    assert row["size_B"] == 0 and row["images_B"] == 0 and row["mean_B"] == 0 and row["disparity"] == pytest.approx(0.3)
    assert summary.notna().all().all()


def test_a_pattern_spanning_many_cells_counts_per_image_not_per_cell():
    """Per image, a cluster's segments add up: a background over 4 cells weighs what an object in 1 cell does; per segment, a quarter."""
    segments = pd.DataFrame({
        "cluster": [0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
        "image_id": ["a"] * 5 + ["b"] * 5,
        "model": ["A"] * 5 + ["B"] * 5,
        "attribution": [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],
    })
    per_image = cluster_summary(segments, k=2).set_index("cluster")
    assert per_image.loc[0, ["mean_A", "mean_B", "size_A", "images_A"]].tolist() == [2.0, 0.0, 4, 1]
    assert per_image.loc[1, "disparity"] == pytest.approx(-2.0)
    per_segment = cluster_summary(segments, k=2, per="segment").set_index("cluster")
    assert per_segment.loc[0, "mean_A"] == pytest.approx(0.5) and per_segment.loc[1, "mean_B"] == pytest.approx(2.0)
    with pytest.raises(SliceScopeError, match="unknown cluster mean"):
        cluster_summary(segments, per="cell")
