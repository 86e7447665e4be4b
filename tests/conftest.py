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
def tiny_demo(tmp_path_factory) -> Path:
    """The demo at its tiny preset, built once for the whole test session."""
    from core.demo import build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, preset="tiny")
    return out
