"""Do crowd concepts (SECA) name the demo's injected problems, for the biased model and not for the balanced one?

    python -m benchmarks.concepts [--demo DIR] [--out DIR] [--repeats 3] [--images 300]

On the demo's biased and balanced workspaces, a 300-image stratified SmoothGrad
campaign (the library defaults) is answered by the SIMULATED crowd
(:mod:`core.demo.crowd`, seeded) in a temporary SQLite database of its own, and
mined with :func:`core.crowd.pipeline.mine_campaign` (MiniLM reconciliation, chi-square,
Cramér's V). Each injected problem has a concept and the predicted class it
pushes towards:

    background → circle: "water";  watermark → triangle: "stamp" or "watermark";  colour → square: "red"

**Rank** of a concept in its class: among the class's significant (p < 0.05)
single concepts (entity types, attributes, attribute-type pairs), dense by
Cramér's V at two decimals (equal V, equal rank, as the paper's Table 2 prints
"hour, NOT hour (1-.93)"). NOT/AND combinations are left out of the rank: each
concept spawns dozens of near-copies of itself ("water AND NOT square"). A
problem is *found* when its concept has V ≥ 0.2 and rank ≤ 3.

1. Table 2 (the paper's format): the injected concept's p-value, V, frequency in
   the class and elsewhere, and rank, per model, with the class's top concepts.
2. Recall against the number of annotated images (the paper's Fig. 4): random
   subsets of the campaign's images (n = 20, 50, 100, 200, 300; ``--repeats``
   subsets each), reconciled and tested again; recall = share of the three
   problems found.
3. Control: the held-out split keeps every shortcut's correlation with the true
   class outside the group that breaks it (90% of squares are red), so a concept
   can be typical of a class for a model that never uses it. Per problem, a
   *decorrelated* campaign of images from the "none" group and the problem's own
   group, balanced so that within every true class half the images have the
   attribute, isolates what the model does with it.

Tables are printed; recall.csv and table2.csv are written to ``--out`` (with
recall.png when kaleido is installed). The last line reads
``found_biased=<x>/3 found_balanced=<y>/3``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.concepts import ConceptStatistics, MiniLMEmbedder, build_concept_table, reconcile
from core.crowd import CampaignPlan, CampaignStore, campaign_tables, create_workspace_campaign, mine_campaign
from core.demo import build_demo, default_demo_dir, workspace_dir
from core.demo.crowd import simulate_campaign
from core.progress import tqdm_progress
from core.workspace import Workspace

SIZES = (20, 50, 100, 200, 300)
SINGLE_KINDS = ("type", "attribute", "pair")
TOP = 3
MIN_TYPICALITY = 0.2
ALPHA = 0.05


@dataclass(frozen=True)
class Problem:
    name: str  # the demo's test group that breaks it
    klass: str  # the predicted class the shortcut pushes towards
    concepts: tuple[str, ...]  # the concept names that say it
    column: str  # ground-truth column and value that carry the attribute
    value: object


PROBLEMS = (
    Problem("background", "circle", ("water",), "background", "water"),
    Problem("watermark", "triangle", ("stamp", "watermark"), "watermark", True),
    Problem("colour", "square", ("red",), "colour", "red"),
)


def rank_of(findings: pd.DataFrame, problem: Problem) -> dict:
    """The problem's concept in its class: rank (None if not significant), V, p, frequencies, and the class's top concepts."""
    rows = findings[findings["kind"].isin(SINGLE_KINDS) & (findings["class"] == problem.klass) & (findings["p_value"] < ALPHA)]
    rows = rows.sort_values("cramers_v", ascending=False).drop_duplicates("concept")
    ranks = rows["cramers_v"].round(2).rank(method="dense", ascending=False).astype(int)
    top = ", ".join(f"{concept}({rank}-{v:.2f})".replace("-0.", "-.") for concept, rank, v in
                    zip(rows["concept"].head(5), ranks.head(5), rows["cramers_v"].head(5)))
    mine = rows[rows["concept"].isin(problem.concepts)]
    if mine.empty:
        every = findings[findings["kind"].isin(SINGLE_KINDS) & (findings["class"] == problem.klass) & findings["concept"].isin(problem.concepts)]
        best = every.sort_values("cramers_v", ascending=False).head(1)
        row = best.iloc[0] if len(best) else None
        return {"concept": "/".join(problem.concepts), "rank": None, "found": False, "top": top,
                **({"p_value": row["p_value"], "cramers_v": row["cramers_v"], "frequency": row["frequency"],
                    "frequency_outside": row["frequency_outside"]} if row is not None else {})}
    row = mine.iloc[0]
    rank = int(ranks.loc[row.name])
    return {"concept": row["concept"], "rank": rank, "found": bool(rank <= TOP and row["cramers_v"] >= MIN_TYPICALITY), "top": top,
            "p_value": row["p_value"], "cramers_v": row["cramers_v"], "frequency": row["frequency"], "frequency_outside": row["frequency_outside"]}


def simulated_campaign(workspace: Workspace, store: CampaignStore, name: str, plan: CampaignPlan, image_ids=None):
    campaign = create_workspace_campaign(workspace, store, name, plan, image_ids=image_ids)
    answered = simulate_campaign(workspace, store, campaign, seed=plan.seed)
    return campaign, answered


def statistics_of(annotations: pd.DataFrame, images: pd.DataFrame, embedder) -> pd.DataFrame:
    vocabulary = reconcile(annotations, embedder)
    return ConceptStatistics().fit(build_concept_table(annotations, images, vocabulary)).results_


def recall_curve(annotations: pd.DataFrame, images: pd.DataFrame, repeats: int, embedder) -> pd.DataFrame:
    annotated = np.asarray(sorted(annotations["image_id"].unique()))
    rows = []
    for n in SIZES:
        for repeat in range(repeats if n < len(annotated) else 1):
            chosen = set(np.random.default_rng([n, repeat]).choice(annotated, size=min(n, len(annotated)), replace=False))
            findings = statistics_of(annotations[annotations["image_id"].isin(chosen)], images[images["image_id"].isin(chosen)], embedder)
            found = [rank_of(findings, problem)["found"] for problem in PROBLEMS]
            rows.append({"n": min(n, len(annotated)), "repeat": repeat, "recall": float(np.mean(found)),
                         **{problem.name: hit for problem, hit in zip(PROBLEMS, found)}})
    return pd.DataFrame(rows)


def _has(images: pd.DataFrame, problem: Problem) -> pd.Series:
    values = images[problem.column]
    if isinstance(problem.value, bool):
        return values.astype(str).str.lower() == str(problem.value).lower()
    return values == problem.value


def decorrelated_images(images: pd.DataFrame, problem: Problem, n: int, seed: int = 0) -> list[str]:
    """Images of the "none" group and the problem's group where, within each true class, half have the attribute."""
    pool = images[images["group"].isin(["none", problem.name])]
    has = _has(pool, problem)
    cells = [(pool[(pool["true_class"] == klass) & (has == flag)]) for klass in sorted(pool["true_class"].unique()) for flag in (True, False)]
    per_cell = min(min(len(cell) for cell in cells), n // len(cells))
    rng = np.random.default_rng(seed)
    chosen = [image_id for cell in cells for image_id in rng.choice(np.sort(cell["image_id"].to_numpy()), size=per_cell, replace=False)]
    return list(rng.permutation(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir())
    parser.add_argument("--out", type=Path, default=Path("/tmp/slicescope-concepts-benchmark"))
    parser.add_argument("--repeats", type=int, default=3, help="random subsets per size for the recall curve (default 3)")
    parser.add_argument("--images", type=int, default=300, help="images per campaign (default 300)")
    args = parser.parse_args()

    started = time.perf_counter()
    build_demo(args.demo, progress=tqdm_progress())
    args.out.mkdir(parents=True, exist_ok=True)
    embedder = MiniLMEmbedder()
    plan = CampaignPlan(n_images=args.images, sampling="stratified")
    table2, curves, controls = [], [], []
    with tempfile.TemporaryDirectory(prefix="slicescope-concepts-") as scratch:
        for model in ("biased", "balanced"):
            workspace = Workspace(workspace_dir(args.demo, model))
            store = CampaignStore(f"sqlite:///{Path(scratch) / f'{model}.sqlite'}")
            try:
                tick = time.perf_counter()
                campaign, answered = simulated_campaign(workspace, store, f"Simulated crowd (benchmark, {model})", plan)
                mined = mine_campaign(workspace, store, campaign.id, embedder=embedder)
                rejected = int(answered["lazy"].sum())
                print(f"\n{model}: campaign of {campaign.n_images} images, {len(answered)} simulated assignments ({rejected} rejected), "
                      f"{len(mined.annotations)} accepted annotation rows, {mined.table.concepts.shape[1]} concepts "
                      f"[{time.perf_counter() - tick:.0f} s]")
                for problem in PROBLEMS:
                    table2.append({"model": model, "problem": problem.name, "class": problem.klass, **rank_of(mined.findings, problem)})
                tick = time.perf_counter()
                annotations, images = campaign_tables(workspace, store, campaign.id)
                curve = recall_curve(annotations, images, args.repeats, embedder).assign(model=model)
                curves.append(curve)
                print(f"  recall curve: {len(curve)} subsets [{time.perf_counter() - tick:.0f} s]")
                tick = time.perf_counter()
                for problem in PROBLEMS:
                    ids = decorrelated_images(workspace.images, problem, args.images)
                    control, _ = simulated_campaign(workspace, store, f"Simulated crowd (benchmark, {model}, {problem.name} control)",
                                                    plan, image_ids=ids)
                    findings = statistics_of(*campaign_tables(workspace, store, control.id), embedder)
                    controls.append({"model": model, "problem": problem.name, "class": problem.klass, "images": len(ids), **rank_of(findings, problem)})
                print(f"  decorrelated controls [{time.perf_counter() - tick:.0f} s]")
            finally:
                store.close()

    table = pd.DataFrame(table2)
    table.to_csv(args.out / "table2.csv", index=False)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    columns = ["model", "problem", "class", "concept", "p_value", "cramers_v", "frequency", "frequency_outside", "rank", "found"]
    print("\nTable 2 (injected concept in its class; rank among significant single concepts by Cramér's V):")
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\nTop concepts of each affected class (rank-V):")
    for row in table.to_dict("records"):
        print(f"  {row['model']:9s} {row['problem']:10s} {row['class']:9s} {row['top']}")

    recall = pd.concat(curves, ignore_index=True)
    recall.to_csv(args.out / "recall.csv", index=False)
    summary = recall.groupby(["n", "model"])["recall"].agg(["mean", "std"]).unstack("model")
    print("\nRecall of the 3 injected concepts (share found in the top 3 of their class) against annotated images:")
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))
    _plot(recall, args.out)

    control = pd.DataFrame(controls)
    control.to_csv(args.out / "controls.csv", index=False)
    print("\nControl: decorrelated campaigns (within each true class, half the images carry the attribute):")
    print(control[["model", "problem", "class", "images", "concept", "cramers_v", "frequency", "frequency_outside", "rank", "found"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3g}"))

    found = table.groupby("model")["found"].sum()
    print(f"\nwrote {args.out}/table2.csv, recall.csv, controls.csv; {time.perf_counter() - started:.0f} s in all")
    print(f"found_biased={int(found.get('biased', 0))}/3 found_balanced={int(found.get('balanced', 0))}/3")


def _plot(recall: pd.DataFrame, out: Path) -> None:
    try:
        import kaleido  # noqa: F401
        import plotly.express as px
    except ImportError:
        print(f"(kaleido is not installed: no recall.png; the curve is in {out / 'recall.csv'})")
        return
    mean = recall.groupby(["model", "n"], as_index=False)["recall"].mean()
    figure = px.line(mean, x="n", y="recall", color="model", markers=True, title="Recall of the injected concepts (top 3 of their class)")
    figure.write_image(out / "recall.png")


if __name__ == "__main__":
    main()
