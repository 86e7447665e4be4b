"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import build_small_net, write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def small_net_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "small.pt"
    torch.save(build_small_net().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A SliceScope home whose demo is built at the tiny preset, once per session."""
    from core.demo import build_demo

    home = tmp_path_factory.mktemp("slicescope-home")
    build_demo(home / "demo", preset="tiny")
    return home


@pytest.fixture(scope="session")
def tiny_demo(demo_home) -> Path:
    return demo_home / "demo"
