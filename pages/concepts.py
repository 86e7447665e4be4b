"""Concepts page (SECA): crowd campaigns on saliency maps, and the concepts that explain each predicted class.

The analyst creates a campaign (which images, which saliency map, how many workers), hands out the task links
(the worker app, ``annotate/``, runs on its own port), follows the answers as they come, and reads what the crowd's
terms say: a reconciled, editable vocabulary; concepts, NOT/AND combinations and rules ranked by typicality per
predicted class; validation queries; and the images and boxes behind any concept.
"""

from __future__ import annotations

import json
import shlex

import pandas as pd
import streamlit as st

from app.concepts import boxed_picture, campaign_boxes, campaign_store, mined_concepts, top_concepts_figure
from app.deployment import configured_worker_url
from app.ui import load_slices, selected_workspace, show_error, streamlit_progress
from core.concepts import RESULT_KINDS, Vocabulary, concept_boxes, filter_results, query_concepts, slice_concepts
from core.crowd import (
    DEFAULT_INSTRUCTIONS,
    INSTRUCTIONS_MAX_CHARS,
    MAX_IMAGES_PER_TASK,
    MAX_WORKERS_PER_TASK,
    SALIENCY_METHODS,
    SAMPLINGS,
    Campaign,
    CampaignConcepts,
    CampaignPlan,
    CampaignStore,
    SaliencyParams,
    create_workspace_campaign,
    save_vocabulary,
    saved_vocabulary,
    task_links,
    worker_summary,
)
from core.errors import SliceScopeError
from core.views import plural
from core.workspace import Workspace

WORKER_APP_URL = "http://localhost:8502"
SALIENCY_LABELS = {"smoothgrad": "SmoothGrad (captum NoiseTunnel, as in SECA §5.1.2)", "gradcam": "GradCAM (the scan's target layer)"}
FINDING_COLUMNS = {
    "concept": st.column_config.TextColumn("Concept", width="medium"),
    "kind": st.column_config.TextColumn("Kind", width="small"),
    "class": st.column_config.TextColumn("Predicted class", width="small"),
    "cramers_v": st.column_config.ProgressColumn("Cramér's V", min_value=0.0, max_value=1.0, format="%.2f",
                                                 help="Typicality: how strongly the concept goes with the class (≥ 0.2 is the paper's threshold)"),
    "p_value": st.column_config.NumberColumn("p-value", format="%.1e", help="Chi-square test of concept × class"),
    "frequency": st.column_config.NumberColumn("In class", format="percent", help="Share of the class's annotated images with the concept"),
    "frequency_outside": st.column_config.NumberColumn("Elsewhere", format="percent", help="Share of the other images with it"),
    "support": st.column_config.NumberColumn("Support", format="%.3f"),
    "confidence": st.column_config.NumberColumn("Confidence", format="%.2f"),
    "lift": st.column_config.NumberColumn("Lift", format="%.2f"),
    "coverage": st.column_config.NumberColumn("Coverage", format="percent"),
    "n_images": st.column_config.NumberColumn("Images", format="%d"),
}
DROPPED_TERM_COLUMNS = {
    "term": st.column_config.TextColumn("Term as typed", width="medium"),
    "count": st.column_config.NumberColumn("Uses", format="%d"),
    "workers": st.column_config.NumberColumn("Workers", format="%d"),
    "reason": st.column_config.TextColumn("Why", width="large"),
}
SLICE_CONCEPT_COLUMNS = {
    "slice": st.column_config.NumberColumn("Slice", width="small"),
    "flagged": st.column_config.CheckboxColumn("Problem", width="small", help="Flagged on the Slices page: clearly less accurate than the rest"),
    "size": st.column_config.NumberColumn("Size", width="small"),
    "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
    "annotated": st.column_config.NumberColumn("Annotated", width="small", help="The slice's images the campaign's workers annotated"),
    "concepts": st.column_config.TextColumn("Named by the crowd", width="large",
                                            help="The concepts that best tell the slice's annotated images from the campaign's other annotated "
                                                 "images (a shallow decision tree), with how many of each match; blank when none does"),
}
KIND_LABELS = {"type": "entity types", "attribute": "attributes", "pair": "attribute-type pairs", "not": "NOT combinations",
               "and": "AND combinations", "rule": "association rules (Apriori)", "tree": "decision-tree rules", "query": "queries"}


def campaign_label(campaign: Campaign) -> str:
    return f"#{campaign.id} · {campaign.name} · {plural(campaign.n_images, 'image')} · {campaign.created_at:%Y-%m-%d %H:%M}"


def new_campaign_form(workspace: Workspace, store: CampaignStore) -> None:
    with st.form("new_campaign", clear_on_submit=True):
        st.markdown("**New campaign**: workers box and name what the saliency map highlights on each image.")
        left, middle, right = st.columns(3)
        n_images = left.number_input("Images to annotate", 1, len(workspace.images), min(300, len(workspace.images)),
                                     help="The paper found about 300 images enough to recover the concepts of a model's errors.")
        sampling = left.selectbox("Sampling", SAMPLINGS, help="stratified: each predicted class gets its share of the images")
        method = middle.selectbox("Saliency", SALIENCY_METHODS, format_func=SALIENCY_LABELS.get)
        sigma = middle.number_input("SmoothGrad σ (share of the input range)", 0.0, 1.0, SaliencyParams().sigma, 0.05)
        samples = middle.number_input("SmoothGrad samples", 1, 500, SaliencyParams().samples)
        per_task = right.number_input("Images per task", 1, MAX_IMAGES_PER_TASK, 10)
        workers = right.number_input("Workers per task", 1, MAX_WORKERS_PER_TASK, 3)
        minimum = right.number_input("Minimum seconds per image", 0.0, 600.0, 5.0, 1.0,
                                     help="Answers faster than this are kept but flagged as rejected and left out of the concepts.")
        name = st.text_input("Campaign name", f"Campaign on {workspace.name}", max_chars=100)
        instructions = st.text_area("Instructions shown to workers (Markdown)", DEFAULT_INSTRUCTIONS, max_chars=INSTRUCTIONS_MAX_CHARS, height=180)
        base_url = st.text_input("Address of the worker app", configured_worker_url() or WORKER_APP_URL,
                                 help="Where `streamlit run annotate/main.py --server.port 8502` answers ([worker] url in the "
                                      "deployment's secrets, if set); task links start with it.")
        if not st.form_submit_button("Create campaign", type="primary"):
            return
    plan = CampaignPlan(n_images=int(n_images), sampling=sampling, images_per_task=int(per_task), workers_per_task=int(workers),
                        min_seconds_per_image=float(minimum), instructions=instructions,
                        saliency=SaliencyParams(method=method, sigma=float(sigma), samples=int(samples)))
    progress = st.container()
    campaign = create_workspace_campaign(workspace, store, name, plan, progress=streamlit_progress(progress))
    progress.empty()
    # The tokens exist only now: the links are kept in the session until the analyst has downloaded them,
    # and the campaign picker switches to the new campaign so that they are in view.
    st.session_state["new_links"] = (campaign.id, task_links(campaign, base_url))
    st.session_state["campaign_id"] = st.session_state["campaign_pick"] = campaign.id
    st.toast(f"Campaign #{campaign.id} created: {len(campaign.tokens)} task links.", icon=":material/task_alt:")
    st.rerun()


def worker_app_command(store: CampaignStore) -> str:
    """How to start the worker app on this campaign's database: a local SQLite file is named; a server's URL (with its
    password) is left to the deployment's secrets or environment, which the worker app reads like this app."""
    command = "streamlit run annotate/main.py --server.port 8502"
    return f"SLICESCOPE_DATABASE_URL={shlex.quote(store.url)} {command}" if store.url.startswith("sqlite:") else command


def new_links(store: CampaignStore, campaign: Campaign) -> None:
    stored = st.session_state.get("new_links")
    if not stored or stored[0] != campaign.id:
        return
    links = stored[1]
    st.success(f"Campaign #{campaign.id} “{campaign.name}” is created: {plural(campaign.n_images, 'image')} in {plural(len(links), 'task link')}.",
               icon=":material/task_alt:")
    st.warning(f"The {len(links)} task links are shown only now: download them before leaving the page.", icon=":material/key:")
    st.download_button("Download the task links (CSV)", links.to_csv(index=False), f"campaign-{campaign.id}-links.csv", "text/csv", type="primary")
    st.dataframe(links, hide_index=True, column_config={"link": st.column_config.LinkColumn("Link")}, height=200)
    st.caption("Workers open their link in the worker app, started on the same database with:")
    st.code(worker_app_command(store), language="bash")


def monitor(store: CampaignStore, campaign: Campaign) -> pd.DataFrame:
    progress = store.progress(campaign.id)
    tasks = progress.drop_duplicates("task_id")["task_status"].value_counts()
    columns = st.columns(5)
    columns[0].metric("Tasks done", f"{tasks.get('done', 0)} / {progress['task_id'].nunique()}")
    columns[1].metric("In progress", int(tasks.get("in progress", 0)))
    columns[2].metric("Open", int(tasks.get("open", 0)))
    submitted = progress[progress["status"] == "submitted"]
    columns[3].metric("Answers", f"{len(submitted)} / {len(progress)}")
    columns[4].metric("Rejected", int((submitted["rejection"] != "").sum()), help="By the automatic checks: too fast on some images")
    per_worker = worker_summary(progress)
    with st.expander(f"Workers ({len(per_worker)})"):
        st.dataframe(per_worker.reset_index(), hide_index=True, column_config={
            "seconds": st.column_config.NumberColumn("Seconds", format="%.0f"),
            "seconds per box": st.column_config.NumberColumn(format="%.1f")})
    rejected = submitted[submitted["rejection"] != ""]
    if not rejected.empty:
        with st.expander(f"Rejected answers ({len(rejected)}): why"):
            st.dataframe(rejected[["task_id", "assignment_id", "worker_id", "seconds", "boxes", "rejection"]], hide_index=True)
    return progress


def live_monitor(store: CampaignStore, campaign: Campaign, answers_shown: int) -> None:
    progress = monitor(store, campaign)
    if int((progress["status"] == "submitted").sum()) != answers_shown:
        st.rerun(scope="app")  # new answers: mine the concepts again


def embedder_choice() -> str:
    with st.expander("Term embedding", icon=":material/tune:"):
        st.caption("Terms are clustered by meaning. The default is the bundled sentence-embedding model (all-MiniLM-L6-v2); "
                   "the paper used fastText: give the path of a fastText .bin model you have.")
        return st.text_input("fastText model (.bin)", "", key="fasttext_path").strip()


def vocabulary_editor(workspace: Workspace, campaign: Campaign, concepts: CampaignConcepts) -> None:
    vocabulary = concepts.vocabulary
    st.caption(f"{len(vocabulary.terms)} typed terms reconciled into {vocabulary.terms['concept'].nunique()} concepts "
               "(spelling, singular forms, and clusters of similar meaning). Edits are saved with the workspace.")
    st.dataframe(vocabulary.concepts, hide_index=True, height=240, column_config={"count": st.column_config.NumberColumn("Uses")})
    dropped_terms_view(vocabulary.dropped)
    names = sorted(vocabulary.terms["concept"].unique())
    rename, merge, split = st.tabs(["Rename", "Merge", "Split"])
    with rename:
        concept = st.selectbox("Concept", names, key="rename_concept")
        new_name = st.text_input("New name", key="rename_to", max_chars=60)
        if st.button("Rename", disabled=not new_name.strip()):
            edit_vocabulary(workspace, campaign, vocabulary.rename(concept, new_name))
    with merge:
        chosen = st.multiselect("Concepts to merge", names, key="merge_concepts")
        into = st.text_input("Name of the merged concept", chosen[0] if chosen else "", key="merge_into", max_chars=60)
        if st.button("Merge", disabled=len(chosen) < 2 or not into.strip()):
            edit_vocabulary(workspace, campaign, vocabulary.merge(chosen, into))
    with split:
        concept = st.selectbox("Concept", names, key="split_concept")
        own = vocabulary.terms.loc[vocabulary.terms["concept"] == concept, "term"].tolist()
        terms = st.multiselect("Terms to move out", own, key="split_terms")
        new_name = st.text_input("Name of the new concept", key="split_to", max_chars=60)
        if st.button("Split", disabled=not terms or not new_name.strip()):
            edit_vocabulary(workspace, campaign, vocabulary.split(concept, terms, new_name))
    if saved_vocabulary(workspace, campaign.id) is not None and st.button("Discard my edits (reconcile again)"):
        save_vocabulary(workspace, campaign.id, None)
        st.rerun()


def dropped_terms_view(dropped: pd.DataFrame) -> None:
    if dropped.empty:
        return
    # Worker text goes only into the table, which shows it as plain text: labels and captions would render its Markdown.
    with st.expander(f"Dropped terms ({len(dropped)}): typed by workers, but no concept can come from them"):
        st.dataframe(dropped, hide_index=True, column_config=DROPPED_TERM_COLUMNS)


def edit_vocabulary(workspace: Workspace, campaign: Campaign, vocabulary: Vocabulary) -> None:
    save_vocabulary(workspace, campaign.id, vocabulary)
    st.rerun()


def findings_view(concepts: CampaignConcepts) -> None:
    findings = concepts.findings
    left, middle, right = st.columns([1, 2, 1])
    typicality = left.slider("Minimum typicality (Cramér's V)", 0.0, 1.0, 0.2, 0.05, key="min_typicality")
    kinds = middle.multiselect("Kinds", RESULT_KINDS[:-1], default=list(RESULT_KINDS[:-1]), format_func=KIND_LABELS.get, key="finding_kinds")
    classes = sorted(concepts.images["prediction"].unique())
    shown_class = right.selectbox("Predicted class", ["all", *classes], key="finding_class")
    kept = filter_results(findings, typicality)
    kept = kept[kept["kind"].isin(kinds)]
    if shown_class != "all":
        kept = kept[kept["class"] == shown_class]
    if kept.empty:
        st.info("No finding passes these filters: lower the typicality or add kinds.")
        return
    concept_kinds = kept[kept["kind"].isin(("type", "attribute", "pair"))]
    if not concept_kinds.empty:
        st.plotly_chart(top_concepts_figure(concept_kinds), key="top_concepts")
    st.dataframe(kept, hide_index=True, column_config=FINDING_COLUMNS, height=360)


def concepts_by_typicality(concepts: CampaignConcepts) -> list[str]:
    """The campaign's concept names, the most typical (highest Cramér's V in any finding) first."""
    ranked = concepts.findings.dropna(subset=["cramers_v"]).sort_values("cramers_v", ascending=False)["concept"]
    columns = list(concepts.table.concepts.columns)
    return list(dict.fromkeys([*(name for name in ranked if name in columns), *columns]))


def example_query(concepts: CampaignConcepts) -> str:
    """A query built from this campaign's own most typical concepts, so the example can be typed as it is."""
    names = concepts_by_typicality(concepts)
    if len(names) >= 2:
        return f"{names[0]} AND NOT {names[1]}"
    return names[0] if names else "a concept"


def query_view(concepts: CampaignConcepts) -> None:
    st.markdown("**Validation questions**: combine concepts with AND, OR, NOT and parentheses.")
    text = st.text_input("Query", placeholder=example_query(concepts), key="concept_query", max_chars=500)
    if not text.strip():
        return
    try:
        answer = query_concepts(concepts.table, text)
    except SliceScopeError as error:
        show_error(error)
        return
    st.dataframe(answer, hide_index=True, column_config=FINDING_COLUMNS)


def concept_images(workspace: Workspace, store: CampaignStore, campaign: Campaign, concepts: CampaignConcepts, answers: int) -> None:
    concept = st.selectbox("Concept", concepts_by_typicality(concepts), key="images_concept", help="The images whose boxes named this concept, with those boxes")
    overlay = st.toggle("Show the saliency overlay", value=True, key="images_overlay")
    hits = concept_boxes(concepts.annotations, concepts.vocabulary, concept)
    boxes = campaign_boxes(str(workspace.path), campaign.id, answers)
    boxes = boxes[boxes["box_id"].isin(hits["box_id"])]
    image_ids = list(dict.fromkeys(boxes["image_id"]))
    prediction = concepts.images.set_index("image_id")
    st.caption(f"{plural(len(image_ids), 'image')}, {plural(len(boxes), 'box', 'boxes')}; one colour per worker.")
    columns = st.columns(6)
    for number, image_id in enumerate(image_ids[:24]):
        row = prediction.loc[image_id]
        columns[number % 6].image(boxed_picture(store, campaign.id, image_id, boxes[boxes["image_id"] == image_id], overlay),
                                  caption=f"label {row['label']} · predicted {row['prediction']}")


def slices_view(workspace: Workspace, concepts: CampaignConcepts) -> None:
    """The Slices page's slices named by the crowd's concepts (issue 15: SECA terms naming slices)."""
    selection = st.session_state["selection"]
    try:
        slice_ids, table = load_slices(str(selection.workspace), selection.slice_on, selection.k, selection.method)
    except SliceScopeError as error:
        show_error(error)
        return
    named = slice_concepts(concepts.table, pd.Series(slice_ids, index=workspace.images["image_id"].to_numpy()))
    if named.empty:
        st.info("None of the campaign's annotated images is in this workspace's slices.")
        return
    shown = table[["slice", "flagged", "size", "accuracy"]].merge(named, on="slice")
    shown = shown.sort_values(["flagged", "accuracy"], ascending=[False, True], kind="stable")
    label = selection.slicing_label
    st.caption(f"{label[0].upper()}{label[1:]} (Slicing settings in the System Menu), each named by the concepts its annotated "
               "images share; a slice needs 5 annotated images to be named. Problem slices first.")
    st.dataframe(shown, hide_index=True, column_config=SLICE_CONCEPT_COLUMNS, height=360)


def exports(store: CampaignStore, campaign: Campaign, concepts: CampaignConcepts) -> None:
    columns = st.columns(5)
    columns[0].download_button("Annotations (COCO JSON)", json.dumps(store.export_coco(campaign.id), default=str),
                               f"campaign-{campaign.id}-coco.json", "application/json")
    columns[1].download_button("Concept table (CSV)", concepts.table.to_frame().to_csv(), f"campaign-{campaign.id}-concepts.csv", "text/csv")
    columns[2].download_button("All findings (CSV)", concepts.findings.to_csv(index=False), f"campaign-{campaign.id}-findings.csv", "text/csv")
    rules = concepts.findings[concepts.findings["kind"].isin(("rule", "tree"))]
    columns[3].download_button("Rules (CSV)", rules.to_csv(index=False), f"campaign-{campaign.id}-rules.csv", "text/csv",
                               help="Apriori association rules and decision-tree rules, with support, confidence, lift and coverage")
    columns[4].download_button("Vocabulary (CSV)", concepts.vocabulary.terms.to_csv(index=False), f"campaign-{campaign.id}-vocabulary.csv", "text/csv")


def results(workspace: Workspace, store: CampaignStore, campaign: Campaign, answers: int) -> None:
    fasttext_path = embedder_choice()
    saved = saved_vocabulary(workspace, campaign.id)
    with st.spinner("Reconciling terms and mining concepts…"):
        concepts = mined_concepts(str(workspace.path), campaign.id, answers, None if saved is None else saved.terms.to_csv(index=False),
                                  fasttext_path)
    findings, vocabulary, table, queries, slices, images, export = st.tabs(
        ["Findings", "Vocabulary", "Table", "Queries", "Slices", "Images per concept", "Export"])
    with findings:
        findings_view(concepts)
    with vocabulary:
        vocabulary_editor(workspace, campaign, concepts)
    with table:
        st.caption(f"The tabular representation: {concepts.table.concepts.shape[0]} annotated images × {concepts.table.concepts.shape[1]} "
                   "concepts (entity types, attributes and attribute-type pairs), 1 where a worker's box named the concept.")
        st.dataframe(concepts.table.to_frame(), height=360)
    with queries:
        query_view(concepts)
    with slices:
        slices_view(workspace, concepts)
    with images:
        concept_images(workspace, store, campaign, concepts, answers)
    with export:
        exports(store, campaign, concepts)


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    st.title(f"Concepts · {workspace.name}")
    store = campaign_store(str(workspace.path))
    campaigns = store.campaigns(workspace.fingerprint)
    with st.expander("New campaign", expanded=not campaigns, icon=":material/add_task:"):
        new_campaign_form(workspace, store)
    if not campaigns:
        st.info("No crowd campaign on this workspace yet: create one above, hand out its links, and the concepts appear here as answers come in.")
        return
    by_id = {campaign.id: campaign for campaign in campaigns}
    default = st.session_state.get("campaign_id", campaigns[-1].id)
    chosen = st.selectbox("Campaign", list(by_id), index=list(by_id).index(default) if default in by_id else len(by_id) - 1,
                          format_func=lambda campaign_id: campaign_label(by_id[campaign_id]), key="campaign_pick")
    campaign = by_id[chosen]
    if "simulated" in campaign.name.lower():
        st.caption("This campaign was answered by the **simulated crowd** of the demo (terms drawn from the demo's ground truth "
                   "with typos, synonyms and a lazy worker), not by people.")
    new_links(store, campaign)
    progress = store.progress(campaign.id)
    answers = int((progress["status"] == "submitted").sum())
    finished = bool((progress["status"].isin(("submitted", "expired"))).all())
    live = st.toggle("Follow live", value=not finished, key="follow_live",
                     help="Check the campaign every 10 s; the concepts are mined again when new answers arrive.")
    st.fragment(live_monitor, run_every=10 if live else None)(store, campaign, answers)
    if answers == 0:
        st.info("No answer yet: the concepts appear once workers submit their tasks.")
        return
    results(workspace, store, campaign, answers)


try:
    main()
except SliceScopeError as error:
    show_error(error)
