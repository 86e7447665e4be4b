"""Fixtures of the model-comparison tests: private copies of the tiny demo's two workspaces, and a trained and an untrained model's scans."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from core.data import Preprocess, read_image
from core.demo import workspace_dir
from core.demo.dataset import CLASSES
from core.extract import ScanConfig, scan
from core.models import ModelSpec
from core.workspace import Workspace
from tests.helpers import SMALL_NET_FACTORY, build_small_net

SIZE = 32  # the scans' input size: the small network trains in a second or two at it


@pytest.fixture
def pair(tiny_demo, tmp_path) -> tuple[Workspace, Workspace]:
    """Private copies of the tiny demo's biased and balanced workspaces, so derived results written here stay here."""
    copies = []
    for name in ("biased", "balanced"):
        target = tmp_path / workspace_dir(Path(""), name)
        shutil.copytree(workspace_dir(tiny_demo, name), target)
        copies.append(Workspace(target))
    return copies[0], copies[1]


def _scan_test_split(demo: Path, checkpoint: Path, out: Path, name: str) -> Workspace:
    spec = ModelSpec(checkpoint=checkpoint, factory=SMALL_NET_FACTORY, num_classes=len(CLASSES))
    config = ScanConfig(data=demo / "data" / "metadata.csv", model=spec, out=out, image_size=SIZE, normalize="none", classes=CLASSES,
                        split="test", batch_size=64, workers=0, name=name)
    return scan(config)


def _train_split(demo: Path) -> tuple[torch.Tensor, torch.Tensor]:
    metadata = pd.read_csv(demo / "data" / "metadata.csv")
    rows = metadata[metadata["split"] == "train"]
    preprocess = Preprocess(SIZE, "none")
    images = torch.from_numpy(np.stack([preprocess.to_array(read_image(demo / "data" / path).image) for path in rows["path"]]))
    return images, torch.tensor([CLASSES.index(label) for label in rows["label"]])


@pytest.fixture(scope="module")
def trained_and_untrained(tiny_demo, tmp_path_factory) -> tuple[Workspace, Workspace]:
    """IMACS §6.1's pair on the tiny demo's held-out images: a small network fitted to the tiny training split (the tiny
    demo's own models barely moved from their start) and the same network untrained, both scanned at 32 px; the
    embedding model learns from the manifest's train split (default_training_data's fallback)."""
    root = tmp_path_factory.mktemp("trained-untrained")
    images, labels = _train_split(tiny_demo)
    with torch.random.fork_rng(devices=[]):
        untrained = build_small_net(len(CLASSES))
        trained = build_small_net(len(CLASSES))
        optimiser = torch.optim.Adam(trained.parameters(), lr=0.01)
        for _ in range(30):  # full-batch steps: enough to read water as circle, too few to saturate the softmax (whose attributions would vanish)
            optimiser.zero_grad()
            nn.functional.cross_entropy(trained(images), labels).backward()
            optimiser.step()
    workspaces = []
    for name, model in (("trained", trained), ("untrained", untrained)):
        checkpoint = root / f"{name}.pt"
        torch.save(model.state_dict(), checkpoint)
        workspaces.append(_scan_test_split(tiny_demo, checkpoint, root / name, f"{name} model"))
    return workspaces[0], workspaces[1]
