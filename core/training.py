"""The training data a workspace's model was fitted on: one record, read by influence and by mitigation.

Influence embeddings need the training images (their gradients define the
Hessian and the opponents); a mitigation retrains on them. Both read the same
``[training]`` table of the workspace's manifest, written by
:func:`attach_training_data` (``python -m core attach-train``, or ``scan
--train-data``). The images are indexed when attached (not decoded) and
fingerprinted, so later runs can tell whether they changed.

When nothing is attached, :func:`default_training_data` falls back on the
scanned manifest's ``train`` split (and ``val`` for validation), the layout the
demo and the SpotCheck-style benchmark use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from core.data import ImageIndex, load_index
from core.errors import SliceScopeError
from core.workspace import MANIFEST, Workspace, save_manifest

__all__ = [
    "TrainingData",
    "attach_command",
    "attach_training_data",
    "default_training_data",
    "require_training_data",
    "training_data",
    "training_index",
]

_TRAIN, _VALIDATION = "train", "val"


@dataclass(frozen=True)
class TrainingData:
    """Training images: a manifest or ImageFolder, optionally one split of it (and a split to validate on).

    ``fingerprint`` and ``num_images`` are filled when the data is attached to a workspace ('' and 0 otherwise).
    """

    data: Path
    split: str | None = None
    validation_split: str | None = None
    fingerprint: str = ""
    num_images: int = 0

    def attach_arguments(self) -> str:
        return f"--data {self.data}" + (f" --split {self.split}" if self.split else "")


def training_data(workspace: Workspace) -> TrainingData | None:
    """The training data attached to ``workspace``, or None (cheap: reads the manifest only)."""
    record = workspace.manifest.get("training")
    if not isinstance(record, dict) or "data" not in record:
        return None
    return TrainingData(
        Path(record["data"]), record.get("split"), record.get("validation_split"), str(record.get("fingerprint", "")), int(record.get("num_images", 0))
    )


def _splits(data: Path) -> frozenset[str]:
    """The split names of a CSV manifest (none for an ImageFolder or a missing file)."""
    if data.suffix.lower() != ".csv" or not data.is_file():
        return frozenset()
    import pandas as pd

    return frozenset(pd.read_csv(data, usecols=lambda column: column == "split", dtype=str).get("split", pd.Series(dtype=str)).dropna())


def _scanned_manifest(workspace: Workspace) -> Path | None:
    data = (workspace.manifest.get("scan") or {}).get("data")
    return Path(data) if data else None


def default_training_data(workspace: Workspace) -> TrainingData:
    """What a mitigation retrains on when not told: the attached training data, else the scanned manifest's ``train`` split.

    A ``train`` split is validated on the same manifest's ``val`` split when it has one.
    """
    training = training_data(workspace)
    if training is None:
        scanned = _scanned_manifest(workspace)
        splits = _splits(scanned) if scanned is not None else frozenset()
        if _TRAIN not in splits:
            raise SliceScopeError(
                f"SliceScope cannot tell which images {workspace.name}'s model was trained on",
                "attach them to the workspace (attach_training_data, or python -m core attach-train), or name the `train_data` to retrain on",
            )
        return TrainingData(scanned, _TRAIN, _VALIDATION if _VALIDATION in splits else None)
    if training.validation_split is None and training.split == _TRAIN and _VALIDATION in _splits(training.data):
        training = replace(training, validation_split=_VALIDATION)
    return training


def attach_command(workspace: Workspace) -> str:
    """The command that attaches the training data: the scanned manifest's ``train`` split when it has one, else placeholders."""
    scanned = _scanned_manifest(workspace)
    splits = _splits(scanned) if scanned is not None else set()
    if not splits:
        return f"python -m core attach-train {workspace.path} --data PATH [--split NAME]"
    return f"python -m core attach-train {workspace.path} --data {scanned} --split {_TRAIN if _TRAIN in splits else 'NAME'}"


def require_training_data(workspace: Workspace, purpose: str = "influence embeddings") -> TrainingData:
    """The workspace's attached training data, or a SliceScopeError that says how to attach it."""
    training = training_data(workspace)
    if training is None:
        raise SliceScopeError(
            f"workspace {workspace.name} does not record the training data its model was fitted on, which {purpose} need",
            f"attach it with: {attach_command(workspace)}",
        )
    return training


def training_index(workspace: Workspace) -> ImageIndex:
    """The workspace's training images in their recorded order, refused if they changed since they were attached."""
    training = require_training_data(workspace)
    index = load_index(training.data, training.split)
    if index.fingerprint() != training.fingerprint:
        raise SliceScopeError(
            f"the training data {training.data} changed since it was attached (files added, removed or modified)",
            f"attach it again with: python -m core attach-train {workspace.path} {training.attach_arguments()}",
        )
    return index


def attach_training_data(workspace: Workspace, data: str | Path, split: str | None = None, validation_split: str | None = None) -> TrainingData:
    """Record in ``workspace`` the training data its model was fitted on.

    The data is indexed now (not decoded) and fingerprinted; its labels must be
    classes of the workspace's model.

    >>> attach_training_data(workspace, "data/metadata.csv", split="train")  # doctest: +SKIP
    """
    data = Path(data).expanduser().resolve()
    index = load_index(data, split)
    unknown = sorted(set(index.classes) - set(workspace.classes))
    if unknown:
        raise SliceScopeError(
            f"training label '{unknown[0]}' is not one of the model's classes ({', '.join(workspace.classes[:6])}{', ...' if len(workspace.classes) > 6 else ''})",
            "attach the data the model was trained on, labelled with the workspace's class names",
        )
    if validation_split is not None:
        load_index(data, validation_split)  # refuse a split the data does not have now, not at the end of a retraining
    record = {"data": str(data), "fingerprint": index.fingerprint(), "num_images": len(index.table), "attached": datetime.now(UTC).isoformat(timespec="seconds")}
    record.update({name: value for name, value in (("split", split), ("validation_split", validation_split)) if value is not None})
    manifest = {**workspace.manifest, "training": record}
    save_manifest(workspace.path / MANIFEST, manifest)
    workspace.manifest = manifest
    return training_data(workspace)
