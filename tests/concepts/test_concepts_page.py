"""The Concepts page, driven with AppTest on private copies of the tiny demo (whose build adds a simulated campaign)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.concepts import campaign_store
from core.concepts.annotations import MAX_SHOWN_TERM_CHARS, MAX_WORD_CHARS
from core.crowd import Box, CampaignPlan, CampaignStore, SaliencyParams, create_workspace_campaign, saved_vocabulary
from core.demo.crowd import DEMO_CAMPAIGN_NAME
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"


# What the test's own crowd calls the regions of each predicted class: a stand-in for people, chosen so that every
# class has concepts typical of it and the page has findings to show.
TERMS = {"apple": ("stamp", "white"), "leaf": ("water", "blue"), "sky": ("grass", "green")}
# Attributes the worker app accepts but no concept can come from, typed on the first task's boxes.
ODD_TERMS = ("🦈🌊", "zorb" * 16)


def open_concepts(workspace: Workspace | None = None) -> AppTest:
    app = AppTest.from_file(str(MAIN), default_timeout=180)
    if workspace is not None:
        app.query_params["workspace"] = str(workspace.path)
    app.switch_page(str(ROOT / "pages" / "concepts.py")).run()
    assert not app.exception, app.exception
    return app


@pytest.fixture
def answered_workspace(trained_workspace) -> Workspace:
    """The trained workspace with a campaign over all its images, answered by two workers per task (the first task's
    boxes also carry :data:`ODD_TERMS`)."""
    store = CampaignStore.for_workspace(trained_workspace.path)
    plan = CampaignPlan(n_images=len(trained_workspace.images), images_per_task=6, workers_per_task=2, min_seconds_per_image=1,
                        saliency=SaliencyParams(method="gradcam"))
    campaign = create_workspace_campaign(trained_workspace, store, "colours", plan)
    prediction = trained_workspace.images.set_index("image_id")["prediction"]
    for number, token in enumerate(campaign.tokens):
        image_ids = store.open_task(token.token).image_ids
        odd = ODD_TERMS if number == 0 else ()
        boxes = [Box(image_id, 2, 2, 20, 20, TERMS[prediction[image_id]][0], (TERMS[prediction[image_id]][1], *odd)) for image_id in image_ids]
        store.submit(token.token, boxes, {image_id: 8.0 for image_id in image_ids}, worker_id=f"W{number % 3}")
    store.close()
    return trained_workspace


def test_the_tiny_demo_ships_a_simulated_campaign(tiny_demo, monkeypatch):
    monkeypatch.setenv("SLICESCOPE_HOME", str(tiny_demo.parent))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    app = open_concepts()
    assert any(DEMO_CAMPAIGN_NAME in option for option in app.selectbox(key="campaign_pick").options)
    assert any("simulated crowd" in caption.value for caption in app.caption)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Open"] == "0" and metrics["In progress"] == "0"


def test_a_campaign_is_mined_into_findings_queries_and_images(answered_workspace):
    app = open_concepts(answered_workspace)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert (metrics["Tasks done"], metrics["Answers"], metrics["Rejected"]) == ("3 / 3", "6 / 6", "0")
    tables = [frame.value for frame in app.dataframe if "cramers_v" in frame.value.columns]
    findings = tables[0]  # at the default typicality (Cramér's V ≥ 0.2, p < 0.05)
    assert (findings["cramers_v"] >= 0.2).all() and (findings["p_value"] < 0.05).all()
    prediction = answered_workspace.images["prediction"]
    for name, (entity_type, attribute) in TERMS.items():
        if (prediction == name).any():
            typical = findings[(findings["class"] == name) & findings["kind"].isin(("type", "attribute"))]
            assert {entity_type, attribute} <= set(typical["concept"]), (name, typical)

    # The query box's example is made of this campaign's own concepts, so it can be typed as it is.
    example = app.text_input(key="concept_query").placeholder
    concepts = set(next(frame.value for frame in app.dataframe if "_prediction" in frame.value.columns).columns)
    assert " AND NOT " in example and set(example.split(" AND NOT ")) <= concepts, example

    # A query naming a misspelt concept gets a one-line answer with the nearest names, not a traceback.
    concept = tables[0]["concept"].iloc[0].split("-")[0]
    app.text_input(key="concept_query").input(f"{concept}x AND NOT nothing_like_this").run()
    assert not app.exception
    assert any(f"there is no concept '{concept}x'" in error.value and "did you mean" in error.value for error in app.error)
    app.text_input(key="concept_query").input(f"{concept} OR NOT {concept}").run()
    answers = [frame.value for frame in app.dataframe if "kind" in frame.value.columns and (frame.value["kind"] == "query").any()]
    assert answers and set(answers[0]["frequency"]) == {1.0}  # true on every image of every class

    # Images per concept: pictures with their boxes drawn, captioned with label and prediction.
    captions = [caption for image in app.get("image") for caption in image.captions if "predicted" in caption]
    concept = app.selectbox(key="images_concept").value
    named_by = {term: name for name, terms in TERMS.items() for term in terms}
    assert concept in named_by, concept  # the page opens on the most typical concept
    assert len(captions) == (prediction == named_by[concept]).sum()
    assert all(caption.endswith(f"predicted {named_by[concept]}") for caption in captions), captions
    concept_table = next(frame.value for frame in app.dataframe if "_prediction" in frame.value.columns)
    assert len(concept_table) == len(answered_workspace.images) and set(concept_table["_prediction"]) == set(prediction)
    # Slices named by the crowd: every annotated image counted in its slice of the System Menu's slicing.
    named = next(frame.value for frame in app.dataframe if "concepts" in frame.value.columns)
    assert named["annotated"].sum() == len(answered_workspace.images) and named["annotated"].le(named["size"]).all()
    downloads = {button.proto.label for button in app.get("download_button")}
    assert {"Annotations (COCO JSON)", "Concept table (CSV)", "All findings (CSV)", "Rules (CSV)", "Vocabulary (CSV)"} <= downloads


def test_dropped_terms_are_listed_with_the_vocabulary(answered_workspace):
    app = open_concepts(answered_workspace)
    assert any(expander.label.startswith("Dropped terms (2)") for expander in app.expander)
    dropped = next(frame.value for frame in app.dataframe if "reason" in frame.value.columns).set_index("term")
    assert dropped.loc["🦈🌊", "reason"] == "no letters or digits: emoji or symbols only"
    assert dropped.loc[f"{ODD_TERMS[1][:MAX_SHOWN_TERM_CHARS]}…", "reason"] == f"a word longer than {MAX_WORD_CHARS} letters"
    assert set(dropped["workers"]) == {1} and set(dropped["count"]) == {6}  # the first task: one worker, six boxes


def test_vocabulary_edits_are_saved_with_the_workspace(answered_workspace):
    app = open_concepts(answered_workspace)
    concept = app.selectbox(key="rename_concept").value
    app.text_input(key="rename_to").input("renamed concept").run()
    app.button[[button.label for button in app.button].index("Rename")].click().run()
    assert not app.exception, app.exception
    campaign = campaign_store(str(answered_workspace.path)).campaigns(answered_workspace.fingerprint)[-1]
    saved = saved_vocabulary(answered_workspace, campaign.id)
    assert saved is not None and "renamed_concept" in set(saved.terms["concept"]) and concept not in set(saved.terms["concept"])
    # The page now mines with the edited vocabulary and offers to discard the edits.
    assert "renamed_concept" in app.selectbox(key="rename_concept").options
    assert any(expander.label.startswith("Dropped terms (2)") for expander in app.expander)  # the saved CSV has no drops: found again
    app.button[[button.label for button in app.button].index("Discard my edits (reconcile again)")].click().run()
    assert saved_vocabulary(answered_workspace, campaign.id) is None


def test_a_new_campaign_hands_out_its_links_once(trained_workspace):
    workspace = trained_workspace
    app = open_concepts(workspace)
    assert any("No crowd campaign on this workspace yet" in info.value for info in app.info)
    settings = {"Images to annotate": 8, "Images per task": 4, "Workers per task": 2, "SmoothGrad samples": 2}
    for widget in app.number_input:
        if widget.label in settings:
            widget.set_value(settings[widget.label])
    app.button[[button.label for button in app.button].index("Create campaign")].click().run()
    assert not app.exception, app.exception
    assert any("8 images in 4 task links" in success.value for success in app.success)
    assert any("The 4 task links are shown only now" in warning.value for warning in app.warning)
    database = workspace.path / "annotations.sqlite"
    assert any(code.value == f"SLICESCOPE_DATABASE_URL=sqlite:///{database} streamlit run annotate/main.py --server.port 8502" for code in app.code)
    campaigns = campaign_store(str(workspace.path)).campaigns(workspace.fingerprint)
    assert len(campaigns) == 1 and campaigns[0].n_images == 8
    assert any("No answer yet" in info.value for info in app.info)
