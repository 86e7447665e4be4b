"""Campaigns made from a workspace: sampling, saliency pictures in the store, links, and the tables the concepts are mined from."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.concepts import ANNOTATION_COLUMNS
from core.crowd import (
    DEFAULT_INSTRUCTIONS,
    Box,
    CampaignPlan,
    CampaignStore,
    SaliencyParams,
    campaign_tables,
    create_workspace_campaign,
    latest_campaign,
    sample_images,
    task_links,
    worker_summary,
)
from core.errors import SliceScopeError
from core.workspace import Workspace


@pytest.fixture
def store(tmp_path):
    opened = CampaignStore(f"sqlite:///{tmp_path / 'crowd.sqlite'}")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def workspace(tiny_demo: Path) -> Workspace:
    return Workspace(tiny_demo / "workspace")


def _images(counts: dict[str, int]) -> pd.DataFrame:
    predictions = [name for name, count in counts.items() for _ in range(count)]
    return pd.DataFrame({"image_id": [f"img-{number:03d}" for number in range(len(predictions))], "prediction": predictions})


def test_stratified_sampling_is_proportional_covers_every_class_and_is_deterministic():
    images = _images({"circle": 60, "square": 30, "star": 9, "triangle": 1})
    chosen = sample_images(images, 20, "stratified", seed=0)
    counts = images.set_index("image_id").loc[chosen, "prediction"].value_counts().to_dict()
    assert len(chosen) == len(set(chosen)) == 20
    assert counts == {"circle": 12, "square": 6, "star": 1, "triangle": 1}  # 12/6/1.8/0.2, and the rare class gets one
    assert sample_images(images.sample(frac=1, random_state=3), 20, "stratified", seed=0) == chosen  # row order does not matter
    assert sample_images(images, 20, "stratified", seed=1) != chosen
    # Shuffled, so that every task of 10 mixes classes.
    assert images.set_index("image_id").loc[chosen[:10], "prediction"].nunique() > 1

    half = sample_images(images, 50, "stratified", seed=0)
    assert images.set_index("image_id").loc[half, "prediction"].value_counts().to_dict() == {"circle": 30, "square": 15, "star": 4, "triangle": 1}


def test_random_sampling_and_clamping():
    images = _images({"circle": 7, "square": 5})
    chosen = sample_images(images, 5, "random", seed=0)
    assert len(set(chosen)) == 5 and set(chosen) <= set(images["image_id"]) and chosen == sample_images(images, 5, "random", seed=0)
    assert sorted(sample_images(images, 500, "random", seed=0)) == sorted(images["image_id"])  # more than there are: all of them
    assert sorted(sample_images(images, 500, "stratified", seed=0)) == sorted(images["image_id"])
    with pytest.raises(SliceScopeError, match="unknown sampling 'systematic'"):
        sample_images(images, 5, "systematic")
    with pytest.raises(SliceScopeError, match="needs image_id"):
        sample_images(images[["image_id"]], 5, "stratified")


def test_plan_is_validated():
    assert CampaignPlan().settings().saliency_params == SaliencyParams().as_dict()
    assert "entity type" in DEFAULT_INSTRUCTIONS and "attribute" in DEFAULT_INSTRUCTIONS and "Bad example" in DEFAULT_INSTRUCTIONS
    for bad, message in [({"n_images": 0}, "number of images"), ({"sampling": "all"}, "unknown sampling"),
                         ({"saliency": "smoothgrad"}, "SaliencyParams"), ({"images_per_task": 0}, "images per task"),
                         ({"workers_per_task": 99}, "workers per task"), ({"min_seconds_per_image": -1}, "minimum seconds"),
                         ({"hours_valid": 0}, "hours"), ({"instructions": "x" * 6000}, "instructions"), ({"display_size": 4}, "display size")]:
        with pytest.raises(SliceScopeError, match=message):
            CampaignPlan(**bad)


def test_workspace_campaign_stores_pictures_and_tokens_open_the_right_images(workspace, store):
    plan = CampaignPlan(n_images=12, sampling="stratified", saliency=SaliencyParams(samples=3), images_per_task=5, workers_per_task=2)
    steps = []
    campaign = create_workspace_campaign(workspace, store, "test campaign", plan, progress=lambda step, done, total: steps.append(step))
    assert {"computing saliency maps", "rendering pictures"} <= set(steps)
    assert campaign.scope == workspace.fingerprint and campaign.n_images == 12 and len(campaign.tokens) == 3 * 2
    stored = store.campaign(campaign.id).settings
    assert (stored.sampling, stored.saliency_method, stored.saliency_params) == ("stratified", "smoothgrad", plan.saliency.as_dict())

    sizes = store.picture_sizes(campaign.id)
    assert len(sizes) == 12 and set(sizes.values()) == {(64, 64)}  # the original size, not the display size
    seen = []
    for token in campaign.tokens[::2]:  # one assignment per task
        view = store.open_task(token.token)
        seen.extend(view.image_ids)
        picture = store.task_picture(token.token, view.image_ids[0])
        for png in (picture.image_png, picture.saliency_png):
            assert Image.open(io.BytesIO(png)).size == (320, 320)
        original = np.asarray(Image.open(workspace.image_path(workspace.images.set_index("image_id").loc[view.image_ids[0], "path"])).convert("RGB"))
        shown = np.asarray(Image.open(io.BytesIO(picture.image_png)).convert("RGB"))
        np.testing.assert_array_equal(shown[::5, ::5], original)  # enlarged 5× by whole pixels
    assert sorted(seen) == sorted(sizes) and len(seen) == 12
    assert latest_campaign(workspace, store) == store.campaign(campaign.id)

    everything = create_workspace_campaign(workspace, store, "all", CampaignPlan(n_images=1000, saliency=SaliencyParams("gradcam")))
    assert everything.n_images == len(workspace.images)  # clamped to the workspace
    assert latest_campaign(workspace, store).id == everything.id


def test_task_links(workspace, store):
    campaign = create_workspace_campaign(workspace, store, "links", CampaignPlan(n_images=4, saliency=SaliencyParams("gradcam"), images_per_task=2))
    links = task_links(campaign, "https://crowd.example.org:8502/")
    assert list(links.columns) == ["task_id", "assignment_id", "link", "expires_at"] and len(links) == 6
    for row, token in zip(links.itertuples(), campaign.tokens, strict=True):
        parsed = urlparse(row.link)
        assert (parsed.scheme, parsed.netloc, parsed.path) == ("https", "crowd.example.org:8502", "/")
        assert parse_qs(parsed.query) == {"token": [token.token]} and row.expires_at == token.expires_at
        assert (row.task_id, row.assignment_id) == (token.task_id, token.assignment_id)
    with pytest.raises(SliceScopeError, match="not the address of the worker app"):
        task_links(campaign, "javascript:alert(1)")
    with pytest.raises(SliceScopeError, match="carries no tokens"):
        task_links(store.campaign(campaign.id), "http://localhost:8502")


def test_campaign_tables_give_concepts_its_inputs(workspace, store, tiny_demo):
    campaign = create_workspace_campaign(workspace, store, "tables", CampaignPlan(n_images=4, saliency=SaliencyParams("gradcam"), images_per_task=4,
                                                                                    workers_per_task=2, min_seconds_per_image=2))
    fast, slow = campaign.tokens
    image_ids = store.open_task(slow.token).image_ids
    store.submit(slow.token, [Box(image_id, 1, 1, 20, 20, "stamp", ("white",)) for image_id in image_ids], dict.fromkeys(image_ids, 9.0),
                 worker_id="W1")
    store.submit(fast.token, [Box(image_id, 1, 1, 20, 20, "thing", ("nice",)) for image_id in image_ids], dict.fromkeys(image_ids, 0.5))
    annotations, images = campaign_tables(workspace, store, campaign.id)
    assert list(annotations.columns) == list(ANNOTATION_COLUMNS) and set(annotations["entity_type"]) == {"stamp"}
    expected = workspace.images.set_index("image_id").loc[list(image_ids), ["prediction", "label"]].reset_index()
    pd.testing.assert_frame_equal(images, expected.astype(str))
    assert len(campaign_tables(workspace, store, campaign.id, include_rejected=True)[0]) == 8

    balanced = Workspace(tiny_demo / "workspace-balanced")
    with pytest.raises(SliceScopeError, match="made on another workspace"):
        campaign_tables(balanced, store, campaign.id)


def test_mine_campaign_finds_the_planted_concept(image_folder, small_net_checkpoint, tmp_path, store):
    from core.concepts import filter_results
    from core.crowd import CampaignSettings, mine_campaign, save_vocabulary, saved_vocabulary
    from core.extract import scan
    from tests.helpers import small_scan_config

    workspace = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    predictions = workspace.images.set_index("image_id")["prediction"]
    assert predictions.nunique() >= 2  # the untrained SmallNet still tells some colours apart
    planted = predictions.value_counts().index[-1]  # the rarer predicted class
    campaign = store.create_campaign(workspace.fingerprint, "planted", list(predictions.index),
                                     CampaignSettings(images_per_task=len(predictions), workers_per_task=2, min_seconds_per_image=0))
    with pytest.raises(SliceScopeError, match="has no accepted annotations yet"):
        mine_campaign(workspace, store, campaign.id)
    for token, worker in zip(campaign.tokens, ("W1", "W2"), strict=True):
        boxes = [Box(image_id, 0, 0, 10, 10, *(("stamp", ("yellow",)) if prediction == planted else ("grass", ("green",))))
                 for image_id, prediction in predictions.items()]
        store.submit(token.token, boxes, dict.fromkeys(predictions.index, 6.0), worker_id=worker)
    mined = mine_campaign(workspace, store, campaign.id)
    assert latest_campaign(workspace, store) == mined.campaign
    assert saved_vocabulary(workspace, campaign.id) is None
    save_vocabulary(workspace, campaign.id, mined.vocabulary.rename(mined.vocabulary.terms["concept"].iloc[0], "renamed"))
    assert "renamed" in set(saved_vocabulary(workspace, campaign.id).terms["concept"])
    save_vocabulary(workspace, campaign.id, None)
    assert saved_vocabulary(workspace, campaign.id) is None
    assert set(mined.table.prediction) == set(predictions) and len(mined.table.concepts) == len(predictions)
    typical = filter_results(mined.findings, kinds=["type", "attribute", "pair"])
    top = typical[typical["class"] == planted].nlargest(1, "cramers_v")
    assert top["concept"].iloc[0] in {"stamp", "yellow", "yellow-stamp"} and top["cramers_v"].iloc[0] == pytest.approx(1.0)


def test_worker_summary_counts_each_worker_and_keeps_anonymous_answers_apart():
    progress = pd.DataFrame({
        "task_id": [1, 1, 2, 2, 3],
        "assignment_id": [10, 11, 12, 13, 14],
        "status": ["submitted", "submitted", "submitted", "submitted", "open"],
        "worker_id": ["ann", "", "ann", "", ""],
        "seconds": [30.0, 10.0, 50.0, 5.0, 0.0],
        "boxes": [3, 0, 2, 1, 0],
        "rejection": ["", "too fast", "", "", ""],
    })
    summary = worker_summary(progress)
    assert list(summary.index) == ["ann", "assignment 11", "assignment 13"]  # the open assignment is not an answer
    assert summary.loc["ann", ["answers", "boxes", "seconds", "rejected"]].tolist() == [2, 5, 80.0, 0]
    assert summary.loc["assignment 11", "rejected"] == 1
    assert summary.loc["ann", "seconds per box"] == 16.0
    assert summary.loc["assignment 11", "seconds per box"] == 10.0  # no box: divided by one, not by zero
