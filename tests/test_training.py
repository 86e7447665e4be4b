"""One TrainingData: attached once, read by influence and by mitigation alike."""

from __future__ import annotations

import shutil
import tomllib

import pytest

from core.errors import SliceScopeError
from core.training import attach_training_data, default_training_data, training_data
from core.workspace import MANIFEST, Workspace, save_manifest


@pytest.fixture
def bare_workspace(tiny_demo, tmp_path) -> Workspace:
    """The tiny demo's biased workspace without the training data the demo attaches."""
    target = tmp_path / "ws"
    shutil.copytree(tiny_demo / "workspace", target)
    manifest = tomllib.loads((target / MANIFEST).read_text())
    manifest.pop("training", None)
    save_manifest(target / MANIFEST, manifest)
    return Workspace(target)


def test_mitigation_retrains_on_the_attached_data_not_the_scan_manifests_guess(bare_workspace, tiny_demo):
    manifest = tiny_demo / "data" / "metadata.csv"
    guessed = default_training_data(bare_workspace)  # nothing attached: the scanned manifest's train split, validated on val
    assert (guessed.data, guessed.split, guessed.validation_split) == (manifest, "train", "val")

    attached = attach_training_data(bare_workspace, manifest, "balanced_train")
    assert training_data(Workspace(bare_workspace.path)) == attached and attached.num_images > 0 and attached.fingerprint
    chosen = default_training_data(bare_workspace)
    assert (chosen.split, chosen.validation_split) == ("balanced_train", None)  # what the model was trained on, as attached

    attach_training_data(bare_workspace, manifest, "balanced_train", validation_split="val")
    assert default_training_data(Workspace(bare_workspace.path)).validation_split == "val"


def test_a_validation_split_the_data_lacks_is_refused_when_attached(bare_workspace, tiny_demo):
    with pytest.raises(SliceScopeError):
        attach_training_data(bare_workspace, tiny_demo / "data" / "metadata.csv", "train", validation_split="no_such_split")
    assert training_data(bare_workspace) is None  # nothing half-recorded
