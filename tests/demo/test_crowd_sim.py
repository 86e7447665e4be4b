"""The SIMULATED crowd (demo and tests only), the demo's simulated campaign, and the campaign / concepts commands."""

from __future__ import annotations

import os
import subprocess
import sys
from difflib import get_close_matches
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.concepts import RESULT_COLUMNS, Vocabulary
from core.crowd import (
    CampaignPlan,
    CampaignSettings,
    CampaignStore,
    SaliencyParams,
    create_workspace_campaign,
    latest_campaign,
    mine_campaign,
    save_vocabulary,
)
from core.demo.crowd import (
    BACKGROUND_TERMS,
    DEMO_CAMPAIGN_NAME,
    LAZY_ATTRIBUTES,
    LAZY_TYPES,
    SHAPE_TERMS,
    TYPOS,
    WATERMARK_TERMS,
    ensure_demo_campaign,
    simulate_campaign,
)
from core.errors import SliceScopeError
from core.extract import scan
from core.workspace import Workspace
from tests.helpers import small_scan_config

ROOT = Path(__file__).resolve().parents[2]
PLAN = CampaignPlan(n_images=40, sampling="stratified", saliency=SaliencyParams(samples=4), images_per_task=5, workers_per_task=3)
UNTYPO = {typo: word for word, typo in TYPOS.items()}
# What each known term says about the image: its shape, its background, or that it has a watermark.
MEANING = {
    **{term: ("true_class", shape) for shape, terms in SHAPE_TERMS.items() for term in terms},
    **{term: ("background", background) for background, terms in BACKGROUND_TERMS.items() for term in terms},
    **{term: ("watermark", True) for term in WATERMARK_TERMS},
}


@pytest.fixture(scope="module")
def workspace(tiny_demo: Path) -> Workspace:
    return Workspace(tiny_demo / "workspace")


def _store(path: Path) -> CampaignStore:
    return CampaignStore(f"sqlite:///{path}")


def test_simulated_crowd_answers_every_assignment_from_the_ground_truth(workspace, tmp_path):
    store = _store(tmp_path / "crowd.sqlite")
    campaign = create_workspace_campaign(workspace, store, "Simulated crowd (test)", PLAN)
    answered = simulate_campaign(workspace, store, campaign, seed=0)

    assert len(answered) == len(campaign.tokens) == 8 * 3
    assert answered["worker_id"].str.fullmatch(r"sim-worker-\d\d").all()
    assert (answered.groupby("task_id")["worker_id"].nunique() == 3).all()  # three different workers per task
    lazy = answered.loc[answered["lazy"], "worker_id"].unique()
    assert len(lazy) == 1
    progress = store.progress(campaign.id).merge(answered[["assignment_id", "lazy"]], on="assignment_id")
    assert (progress["status"] == "submitted").all() and (progress["task_status"] == "done").all()
    assert ((progress["rejection"] != "") == progress["lazy"]).all()  # only the lazy worker answered too fast

    accepted = store.annotations_frame(campaign.id)
    everything = store.annotations_frame(campaign.id, include_rejected=True)
    lazy_terms = set(LAZY_TYPES) - {"object"} | set(LAZY_ATTRIBUTES)
    assert not lazy_terms & (set(accepted["entity_type"].str.lower()) | set(accepted["attribute"].str.lower()))
    assert lazy_terms & (set(everything["entity_type"]) | set(everything["attribute"]))
    assert accepted["image_id"].nunique() == 40  # every image got accepted boxes

    # Every recognisable term matches the image it was typed on (typos and the odd generic word aside).
    truth = workspace.images.set_index("image_id")
    entity = accepted["entity_type"].str.lower().str.removesuffix("s").replace({"wave": "waves", **UNTYPO})
    known = entity.map(MEANING)
    checked = accepted[known.notna()].assign(meaning=known[known.notna()])
    assert len(checked) >= 0.85 * len(accepted)
    for row in checked.itertuples():
        column, value = row.meaning
        actual = truth.loc[row.image_id, column]
        assert (str(actual).lower() == "true") if column == "watermark" else actual == value, (row.entity_type, row.image_id)
    assert set(entity) & {"water", "grass", "sand", "rock"}  # the barely trained tiny model's maps are mostly on the background

    coco = store.export_coco(campaign.id)
    assert all(0 <= a["bbox"][0] and a["bbox"][0] + a["bbox"][2] <= 64 and 0 <= a["bbox"][1] and a["bbox"][1] + a["bbox"][3] <= 64
               for a in coco["annotations"])
    assert simulate_campaign(workspace, store, campaign).empty  # nothing left to answer

    again = _store(tmp_path / "again.sqlite")
    simulate_campaign(workspace, again, create_workspace_campaign(workspace, again, "Simulated crowd (test)", PLAN), seed=0)
    pd.testing.assert_frame_equal(again.annotations_frame(1), accepted)  # seeded: the same answers again
    store.close()
    again.close()


def test_simulated_workers_box_what_the_maps_highlight(workspace, tmp_path):
    """Maps hot on the stamp where there is one, else on the object: the boxes and terms follow them."""
    store = _store(tmp_path / "crowd.sqlite")
    campaign = create_workspace_campaign(workspace, store, "Simulated crowd (test)", CampaignPlan(n_images=30, saliency=SaliencyParams("gradcam")))
    truth = workspace.images.set_index("image_id")
    maps = {}
    for image_id in truth.index:
        row = truth.loc[image_id]
        hot = np.zeros((64, 64), dtype=np.float32)
        if str(row["watermark"]).lower() == "true":
            hot[52:62, 45:62] = 1.0
        else:
            hot[np.asarray(Image.open(workspace.image_path(row["mask_path"]))) > 127] = 1.0
        maps[image_id] = hot
    simulate_campaign(workspace, store, campaign, seed=1, maps=maps)
    boxes = store.annotations_frame(campaign.id).drop_duplicates("box_id")
    assert boxes["image_id"].nunique() == 30
    for image_id, terms in boxes["entity_type"].str.lower().groupby(boxes["image_id"]):
        row = truth.loc[image_id]
        expected = list(WATERMARK_TERMS) if str(row["watermark"]).lower() == "true" else [*SHAPE_TERMS[row["true_class"]], "shape", "object"]
        expected += [f"{term}s" for term in expected]
        # Typos aside (difflib's similarity ≥ 0.75 forgives one or two letters), every box names what its map highlights.
        assert all(get_close_matches(term, expected, n=1, cutoff=0.75) for term in terms), (image_id, list(terms))
    coco = store.export_coco(campaign.id)
    stamps = [a["bbox"] for a in coco["annotations"] if a["entity_type"].lower().removesuffix("s") in WATERMARK_TERMS]
    assert stamps and all(40 <= x <= 50 and 47 <= y <= 57 for x, y, _, _ in stamps)  # around the stamp's corner (45, 52)
    store.close()


def test_the_simulated_crowd_needs_ground_truth(image_folder, small_net_checkpoint, tmp_path):
    plain = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "ws"))
    store = _store(tmp_path / "crowd.sqlite")
    campaign = store.create_campaign(plain.fingerprint, "x", list(plain.images["image_id"][:2]), CampaignSettings(images_per_task=2))
    with pytest.raises(SliceScopeError, match="needs the demo's ground truth"):
        simulate_campaign(plain, store, campaign)
    with pytest.raises(SliceScopeError, match="carries no tokens"):
        simulate_campaign(plain, store, store.campaign(campaign.id))
    store.close()


def test_the_demo_ships_a_finished_simulated_campaign(workspace, tiny_demo):
    store = _store(workspace.path / "annotations.sqlite")
    campaign = latest_campaign(workspace, store)
    assert campaign is not None and campaign.name == DEMO_CAMPAIGN_NAME and campaign.n_images == len(workspace.images) == 64
    assert (campaign.settings.sampling, campaign.settings.saliency_method) == ("stratified", "smoothgrad")
    progress = store.progress(campaign.id)
    assert (progress["status"] == "submitted").all() and progress["worker_id"].str.startswith("sim-worker-").all()
    assert (progress["rejection"] != "").any()
    assert not (tiny_demo / "simulated-crowd-tokens.json").exists()
    assert ensure_demo_campaign(workspace, 64, 2, state_path=tiny_demo / "simulated-crowd-tokens.json") is None  # already there

    mined = mine_campaign(workspace, store, campaign.id)
    assert mined.campaign == campaign and list(mined.findings.columns) == list(RESULT_COLUMNS)
    assert set(mined.table.concepts.index) <= set(mined.images["image_id"]) and not mined.findings.empty
    assert {"water", "grass", "sand", "rock"} & set(mined.vocabulary.terms["concept"])
    store.close()


def test_campaign_and_concepts_commands(workspace, tmp_path, monkeypatch, capsys):
    from core.cli import main

    database = tmp_path / "cli.sqlite"
    env = {**os.environ, "SLICESCOPE_DATABASE_URL": f"sqlite:///{database}"}
    created = subprocess.run(
        [sys.executable, "-m", "core", "campaign", str(workspace.path), "--images", "20", "--sampling", "stratified", "--samples", "3",
         "--images-per-task", "5", "--workers-per-task", "2", "--min-seconds", "4", "--links", str(tmp_path / "links.csv"), "--simulate"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert created.returncode == 0, created.stderr
    assert "20 images in 4 tasks × 2 workers" in created.stdout and "SIMULATED crowd: 8 assignments" in created.stdout
    links = pd.read_csv(tmp_path / "links.csv")
    assert len(links) == 8 and links["link"].str.startswith("http://localhost:8502/?token=").all()
    assert oct((tmp_path / "links.csv").stat().st_mode & 0o777) == "0o600"

    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", f"sqlite:///{database}")
    out = tmp_path / "concepts.csv"
    # The tiny demo's barely trained model predicts one class, so nothing is typical of anything: the pipeline runs, a
    # query is answered (mining on a model with several classes: test_crowd.py::test_mine_campaign_finds_the_planted_concept).
    assert main(["concepts", str(workspace.path), "--out", str(out), "--save-vocabulary", str(tmp_path / "vocabulary.csv")]) == 0
    assert "campaign 1 (Simulated crowd" in capsys.readouterr().out
    columns = {"concept", "kind", "class", "p_value", "cramers_v", "frequency", "support", "confidence", "lift"}
    assert columns <= set(pd.read_csv(out).columns)
    vocabulary = pd.read_csv(tmp_path / "vocabulary.csv")
    concept = vocabulary.groupby("concept")["count"].sum().idxmax()
    assert main(["concepts", str(workspace.path), "--campaign", "1", "--vocabulary", str(tmp_path / "vocabulary.csv"),
                 "--query", concept, "--out", str(tmp_path / "query.csv")]) == 0
    answered = pd.read_csv(tmp_path / "query.csv")
    assert columns <= set(answered.columns) and answered["kind"].tolist() == ["query"] and answered["frequency"].iloc[0] > 0

    # A vocabulary edited on the Concepts page is the campaign's, for the CLI too.
    save_vocabulary(workspace, 1, Vocabulary(vocabulary).rename(concept, "renamed by analyst"))
    assert main(["concepts", str(workspace.path), "--query", "renamed_by_analyst", "--out", str(tmp_path / "edited.csv")]) == 0
    assert "using the vocabulary edited on the Concepts page" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "edited.csv")["concept"].iloc[-1] == "renamed_by_analyst"
    save_vocabulary(workspace, 1, None)

    assert main(["concepts", str(workspace.path), "--images", "x.csv", "--out", str(out)]) == 2
    assert "--images goes with an annotation CSV" in capsys.readouterr().err
    assert main(["concepts", str(workspace.path), "--campaign", "7", "--out", str(out)]) == 2
    assert "there is no campaign 7" in capsys.readouterr().err
    assert main(["concepts", str(tmp_path), "--out", str(out)]) == 2
    assert f"{tmp_path} is not a workspace" in capsys.readouterr().err
    monkeypatch.setenv("SLICESCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert main(["concepts", str(workspace.path), "--out", str(out)]) == 2
    assert "has no crowd campaign — create one with: python -m core campaign" in capsys.readouterr().err
