"""Fixtures of the mitigation tests: a private copy of the tiny demo's biased workspace and its annotation store."""

from __future__ import annotations

import shutil

import pytest

from core.demo import workspace_dir
from core.store import AnnotationStore
from core.workspace import Workspace


@pytest.fixture
def line(tiny_demo, tmp_path, monkeypatch) -> Workspace:
    """A private copy of the tiny demo's biased workspace (versions are written beside it)."""
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    root = tmp_path / "line" / "workspace"
    shutil.copytree(workspace_dir(tiny_demo, "biased"), root)
    return Workspace(root)


@pytest.fixture
def store(line):
    opened = AnnotationStore.for_workspace(line.path)
    yield opened
    opened.close()
