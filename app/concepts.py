"""What the Concepts page caches and draws: the campaign store, mined concepts, pictures with their boxes."""

from __future__ import annotations

import io

import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image, ImageDraw

from app.database import configured_database_url
from core.concepts import FastTextEmbedder, Vocabulary
from core.crowd import CampaignConcepts, CampaignStore, mine_campaign
from core.workspace import Workspace

BOX_COLOURS = ("#00e5ff", "#ffd400", "#ff3d7f", "#7cff4f", "#b388ff")  # one per worker, bright on heat maps


@st.cache_resource(show_spinner=False)
def campaign_store(workspace_path: str) -> CampaignStore:
    """The campaigns of the workspace's version line, in the same database as its annotations."""
    return CampaignStore.for_version_line(Workspace(workspace_path), configured_database_url())


@st.cache_data(show_spinner=False, max_entries=8)
def mined_concepts(workspace_path: str, campaign_id: int, answers: int, vocabulary_csv: str | None, fasttext_path: str) -> CampaignConcepts:
    """The campaign mined; recomputed when an answer arrives (``answers``), the vocabulary is edited or the embedder changes."""
    workspace = Workspace(workspace_path)
    vocabulary = Vocabulary(pd.read_csv(io.StringIO(vocabulary_csv), keep_default_na=False)) if vocabulary_csv else None
    embedder = FastTextEmbedder(fasttext_path) if fasttext_path else None
    return mine_campaign(workspace, campaign_store(workspace_path), campaign_id, embedder=embedder, vocabulary=vocabulary)


@st.cache_data(show_spinner=False, max_entries=4)
def campaign_boxes(workspace_path: str, campaign_id: int, answers: int) -> pd.DataFrame:
    """Every accepted box with its place in image pixels: ``box_id, image_id, worker_id, x, y, width, height``."""
    coco = campaign_store(workspace_path).export_coco(campaign_id)
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    return pd.DataFrame([
        {"box_id": str(box["id"]), "image_id": files[box["image_id"]], "worker_id": box["worker_id"], "x": box["bbox"][0],
         "y": box["bbox"][1], "width": box["bbox"][2], "height": box["bbox"][3]}
        for box in coco["annotations"]
    ], columns=["box_id", "image_id", "worker_id", "x", "y", "width", "height"])


def boxed_picture(store: CampaignStore, campaign_id: int, image_id: str, boxes: pd.DataFrame, overlay: bool) -> bytes:
    """The picture workers saw (or its saliency overlay) with ``boxes`` (image pixels) drawn on it, one colour per worker."""
    picture = store.picture(campaign_id, image_id)
    image = Image.open(io.BytesIO(picture.saliency_png if overlay else picture.image_png)).convert("RGB")
    scale_x, scale_y = image.width / picture.width, image.height / picture.height
    draw = ImageDraw.Draw(image)
    workers = sorted(boxes["worker_id"].unique())
    for box in boxes.itertuples():
        colour = BOX_COLOURS[workers.index(box.worker_id) % len(BOX_COLOURS)]
        draw.rectangle((box.x * scale_x, box.y * scale_y, (box.x + box.width) * scale_x, (box.y + box.height) * scale_y), outline=colour, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def top_concepts_figure(findings: pd.DataFrame, per_class: int = 5):
    """The most typical concepts of each predicted class, as bars of Cramér's V."""
    top = findings.sort_values("cramers_v", ascending=False).groupby("class", sort=True).head(per_class)
    figure = px.bar(top.sort_values(["class", "cramers_v"]), x="cramers_v", y="concept", color="kind", facet_col="class",
                    facet_col_wrap=2, facet_col_spacing=0.18, facet_row_spacing=0.12, orientation="h", hover_data=["p_value", "frequency"],
                    labels={"cramers_v": "Cramér's V (typicality)", "concept": ""})
    figure.update_yaxes(matches=None, showticklabels=True)
    figure.for_each_annotation(lambda annotation: annotation.update(text=f"predicted {annotation.text.split('=')[-1]}"))
    rows = -(-top["class"].nunique() // 2)
    figure.update_layout(height=120 + rows * 40 * per_class, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="kind")
    return figure
