"""Which images IMACS attributes: a balanced confusion matrix per model, or the images two models disagree on.

IMACS (§4) samples 100 images per model, 200 in all, with as many true
positives, false positives, true negatives and false negatives of the chosen
class (one-vs-rest) as each model's own predictions give; a cluster whose
segments come mostly from one model's sample then points at what that model
gets wrong. §5.4 names the alternative of confident disagreements; one model's
false positives ask what made it call those images the class.

Both workspaces must be scans of the same images by two models with the same
classes; the predictions and scores are the scans' own, so sampling runs no model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import SliceScopeError
from core.workspace import Workspace

MODELS = ("A", "B")
CELLS = ("TP", "FP", "TN", "FN")
CELL_WORDS = {"TP": "true positives", "FP": "false positives", "TN": "true negatives", "FN": "false negatives"}
STRATEGIES = ("balanced", "disagreement", "false_positives_a", "false_positives_b")


@dataclass(frozen=True)
class Sample:
    """The images each model's attributions are computed on.

    ``images``: one row per (model, image): model ('A'/'B'), image_id, cell (TP, FP,
    TN, FN for the chosen class, by that model's prediction), label, prediction
    and score (the model's softmax probability of the class). ``counts``: per model
    and cell, how many images there were to draw from, how many were asked for
    (for disagreements: in all, not per cell) and how many were taken;
    ``messages`` say in words where the sample fell short.
    """

    class_name: str
    strategy: str
    images: pd.DataFrame
    counts: pd.DataFrame
    messages: tuple[str, ...] = field(default=())

    def image_ids(self, model: str) -> list[str]:
        return self.images.loc[self.images["model"] == model, "image_id"].tolist()

    def key(self, model: str) -> str:
        """A short hash of the model's images in order, for cache keys."""
        return hashlib.sha256("\n".join(self.image_ids(model)).encode()).hexdigest()[:16]


def as_workspace(workspace: Workspace | str) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def check_comparable(workspace_a: Workspace, workspace_b: Workspace) -> None:
    """Refuse two workspaces that are not two models' scans of the same images with the same classes."""
    classes_a, classes_b = set(workspace_a.classes), set(workspace_b.classes)
    if classes_a != classes_b:
        only_a, only_b = sorted(classes_a - classes_b), sorted(classes_b - classes_a)
        differences = "; ".join(part for part in (
            f"only {workspace_a.name} has {', '.join(only_a[:5])}" if only_a else "",
            f"only {workspace_b.name} has {', '.join(only_b[:5])}" if only_b else "",
        ) if part)
        raise SliceScopeError(f"workspaces {workspace_a.name} and {workspace_b.name} have different classes ({differences})",
                              "compare two models of the same classes")
    ids_a, ids_b = set(workspace_a.images["image_id"]), set(workspace_b.images["image_id"])
    if ids_a != ids_b:
        raise SliceScopeError(
            f"workspaces {workspace_a.name} and {workspace_b.name} hold different images "
            f"({len(ids_a - ids_b)} only in the first, {len(ids_b - ids_a)} only in the second)",
            "scan the same evaluation images with both models",
        )


def class_index(workspace: Workspace, class_name: str) -> int:
    if class_name not in workspace.classes:
        raise SliceScopeError(f"class '{class_name}' is not one of {workspace.name}'s classes ({', '.join(workspace.classes[:8])})",
                              "set `class_name` to one of them")
    return workspace.classes.index(class_name)


def outcomes(workspace: Workspace, class_name: str) -> pd.DataFrame:
    """Per image (in the workspace's row order): image_id, label, prediction, score and cell for ``class_name`` one-vs-rest."""
    column = class_index(workspace, class_name)
    logits = np.asarray(workspace.array("logits"), dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    score = shifted[:, column] / shifted.sum(axis=1)
    images = workspace.images
    positive = (images["label"] == class_name).to_numpy()
    predicted = (images["prediction"] == class_name).to_numpy()
    cell = np.select([positive & predicted, ~positive & predicted, ~positive & ~predicted], ["TP", "FP", "TN"], "FN")
    return pd.DataFrame({"image_id": images["image_id"].astype(str).to_numpy(), "label": images["label"].to_numpy(),
                         "prediction": images["prediction"].to_numpy(), "score": score, "cell": cell})


def _prepare(workspace_a, workspace_b, class_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    workspace_a, workspace_b = as_workspace(workspace_a), as_workspace(workspace_b)
    check_comparable(workspace_a, workspace_b)
    return outcomes(workspace_a, class_name), outcomes(workspace_b, class_name)


def balanced_sample(workspace_a: Workspace | str, workspace_b: Workspace | str, class_name: str, per_model: int = 100, seed: int = 0) -> Sample:
    """Per model, ``per_model`` / 4 images of each confusion cell of ``class_name``, drawn at random (seeded).

    A cell with fewer images gives all it has and the sample is smaller; the
    counts and messages say so (a model without false positives is a finding,
    not an error). Each model's cells come from its own predictions, so the two
    samples differ; the draw depends only on the image ids, not on row order.
    """
    if not isinstance(per_model, int) or per_model < len(CELLS):
        raise SliceScopeError(f"`per_model` = {per_model} cannot hold one image of each of the {len(CELLS)} confusion cells",
                              f"set `per_model` to {len(CELLS)} or more (the paper: 100)")
    tables = _prepare(workspace_a, workspace_b, class_name)
    per_cell = per_model // len(CELLS)
    chosen, counts, messages = [], [], []
    for model_number, (model, table) in enumerate(zip(MODELS, tables)):
        for cell_number, cell in enumerate(CELLS):
            candidates = table[table["cell"] == cell].sort_values("image_id")
            rng = np.random.default_rng([seed, model_number, cell_number])
            taken = candidates.iloc[np.sort(rng.choice(len(candidates), min(per_cell, len(candidates)), replace=False))]
            chosen.append(taken.assign(model=model))
            counts.append({"model": model, "cell": cell, "available": len(candidates), "requested": per_cell, "taken": len(taken)})
            if len(taken) < per_cell:
                have = f"no {CELL_WORDS[cell]}" if taken.empty else f"only {len(taken)} {CELL_WORDS[cell]}"
                messages.append(f"model {model} has {have} for {class_name}, so its sample holds {len(taken)} of them instead of {per_cell}")
    return Sample(class_name, "balanced", _images_frame(chosen), pd.DataFrame(counts), tuple(messages))


def disagreement_sample(workspace_a: Workspace | str, workspace_b: Workspace | str, class_name: str, per_model: int = 100) -> Sample:
    """The ``per_model`` images on which A and B disagree about ``class_name`` (one predicts it, the other not), most confident first.

    Confidence is how far apart the two models' probabilities of the class are
    (§5.4: confident disagreements). Both models are attributed on the same images.
    """
    if not isinstance(per_model, int) or per_model < 1:
        raise SliceScopeError(f"`per_model` = {per_model} images is not a sample", "set `per_model` to 1 or more")
    table_a, table_b = _prepare(workspace_a, workspace_b, class_name)
    joined = table_a.merge(table_b, on="image_id", suffixes=("_a", "_b"))
    disagree = joined[(joined["prediction_a"] == class_name) != (joined["prediction_b"] == class_name)]
    gap = (disagree["score_a"] - disagree["score_b"]).abs()
    ranked = disagree.assign(gap=gap).sort_values(["gap", "image_id"], ascending=[False, True]).head(per_model)
    chosen, counts = [], []
    for model, suffix in zip(MODELS, ("_a", "_b")):
        columns = {f"{name}{suffix}": name for name in ("label", "prediction", "score", "cell")}
        taken = ranked[["image_id", *columns]].rename(columns=columns).assign(model=model)
        chosen.append(taken)
        counts.extend({"model": model, "cell": cell, "available": int((disagree[f"cell{suffix}"] == cell).sum()), "requested": per_model,
                       "taken": int((taken["cell"] == cell).sum())} for cell in CELLS)
    messages = () if len(ranked) >= per_model else (
        f"models A and B disagree about {class_name} on {'no' if ranked.empty else f'only {len(ranked)}'} images, fewer than the {per_model} asked for",)
    return Sample(class_name, "disagreement", _images_frame(chosen), pd.DataFrame(counts), messages)


def false_positive_sample(workspace_a: Workspace | str, workspace_b: Workspace | str, class_name: str, model: str = "A",
                          per_model: int = 100, seed: int = 0) -> Sample:
    """Up to ``per_model`` of ``model``'s false positives of ``class_name``, drawn at random (seeded); both models are attributed on them.

    What made one model call these images ``class_name``, and does the other model see the same there?
    """
    if model not in MODELS:
        raise SliceScopeError(f"unknown model '{model}'", f"set `model` to one of: {', '.join(MODELS)}")
    if not isinstance(per_model, int) or per_model < 1:
        raise SliceScopeError(f"`per_model` = {per_model} images is not a sample", "set `per_model` to 1 or more")
    tables = dict(zip(MODELS, _prepare(workspace_a, workspace_b, class_name)))
    candidates = tables[model][tables[model]["cell"] == "FP"].sort_values("image_id")
    rng = np.random.default_rng([seed, MODELS.index(model)])
    taken_ids = candidates["image_id"].to_numpy()[np.sort(rng.choice(len(candidates), min(per_model, len(candidates)), replace=False))]
    chosen, counts = [], []
    for each, table in tables.items():
        taken = table.set_index("image_id").loc[taken_ids].reset_index().assign(model=each)
        chosen.append(taken)
        for cell in CELLS:
            drawn_from = (each, cell) == (model, "FP")
            in_cell = int((taken["cell"] == cell).sum())
            counts.append({"model": each, "cell": cell, "available": len(candidates) if drawn_from else in_cell,
                           "requested": per_model if drawn_from else 0, "taken": in_cell})
    messages = () if len(taken_ids) >= per_model else (
        f"model {model} has {'no' if len(taken_ids) == 0 else f'only {len(taken_ids)}'} false positives for {class_name}, fewer than the {per_model} asked for",)
    return Sample(class_name, f"false_positives_{model.lower()}", _images_frame(chosen), pd.DataFrame(counts), messages)


def _images_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(parts, ignore_index=True)
    return frame[["model", "image_id", "cell", "label", "prediction", "score"]]


def draw_sample(workspace_a, workspace_b, class_name: str, strategy: str = "balanced", per_model: int = 100, seed: int = 0) -> Sample:
    """The sample by ``strategy``: ``balanced`` (the paper's), ``disagreement``, or one model's false positives (``false_positives_a`` / ``_b``)."""
    if strategy == "balanced":
        return balanced_sample(workspace_a, workspace_b, class_name, per_model, seed)
    if strategy == "disagreement":
        return disagreement_sample(workspace_a, workspace_b, class_name, per_model)
    if strategy.startswith("false_positives_") and strategy in STRATEGIES:
        return false_positive_sample(workspace_a, workspace_b, class_name, strategy.removeprefix("false_positives_").upper(), per_model, seed)
    raise SliceScopeError(f"unknown sampling '{strategy}'", f"use one of: {', '.join(STRATEGIES)}")
