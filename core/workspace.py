"""The workspace: everything SliceScope knows about one (dataset, model) pair.

Layout (documented for users in docs/WORKSPACE.md)::

    WS/
      workspace.toml         manifest: dataset, model, transforms, versions, hashes
      images.parquet         one row per readable image (label, prediction, ...)
      arrays/*.npy           logits, features F, attribution features F_W, GradCAM maps
      report.json            skipped files and why, accuracy, per-group accuracy
      derived/<kind>-<key>.* results computed from the above (projections, slices),
                             keyed by a hash of their parameters and their source

Every derived result is stored under the hash of what it was computed from, so a
changed parameter recomputes only what depends on it and never overwrites a
result that is still valid for other parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import tomllib
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w

from core.errors import SliceScopeError

MANIFEST = "workspace.toml"
FORMAT_VERSION = 1
# Representation name → array holding it; the slicing code and the app list these.
REPRESENTATIONS = {
    "attribution": "attribution_features",
    "features": "features",
}


def stable_hash(payload: object) -> str:
    """A short hash of JSON-serialisable parameters, independent of key order."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_array(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda target: np.save(target, array))


def save_table(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda target: table.to_parquet(target, index=False))


def save_json(path: Path, payload: object) -> None:
    atomic_write(path, lambda target: target.write_text(json.dumps(payload, indent=2, default=str)))


def save_manifest(path: Path, manifest: dict) -> None:
    atomic_write(path, lambda target: target.write_bytes(tomli_w.dumps(manifest).encode()))


def is_workspace(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class Workspace:
    """Read access to a finished workspace, plus its cache of derived results."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise SliceScopeError(f"{self.path} is not a SliceScope workspace (no {MANIFEST})", "build one with: python -m core scan --data PATH --model CKPT --out WS")
        try:
            self.manifest = tomllib.loads(manifest_path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise SliceScopeError(f"{manifest_path} is damaged ({error})", "re-run the scan into a new folder") from None
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise SliceScopeError(f"{self.path} was written by an incompatible SliceScope version", "re-run the scan with this version")

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["model"]["classes"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["extraction"]["fingerprint"]

    @property
    def dataset_fingerprint(self) -> str:
        return self.manifest["dataset"]["fingerprint"]

    @property
    def data_root(self) -> Path:
        return Path(self.manifest["dataset"]["root"])

    @cached_property
    def images(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "images.parquet")

    @cached_property
    def report(self) -> dict:
        return json.loads((self.path / "report.json").read_text())

    def array(self, name: str) -> np.ndarray:
        """A stored array, memory-mapped so large workspaces open instantly."""
        path = self.path / "arrays" / f"{name}.npy"
        if not path.is_file():
            raise SliceScopeError(f"workspace {self.name} has no array '{name}'", "re-run the scan to rebuild it")
        return np.load(path, mmap_mode="r")

    def representation(self, name: str) -> np.ndarray:
        if name not in REPRESENTATIONS:
            raise SliceScopeError(f"unknown representation '{name}'", f"use one of: {', '.join(REPRESENTATIONS)}")
        return self.array(REPRESENTATIONS[name])

    def image_path(self, relative_path: str) -> Path:
        return self.data_root / relative_path

    # -- derived results -------------------------------------------------
    def derived_path(self, kind: str, params: dict, suffix: str) -> Path:
        key = stable_hash({"source": self.fingerprint, "kind": kind, **params})
        return self.path / "derived" / f"{kind}-{key}{suffix}"

    def cached_array(self, kind: str, params: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Load the ``kind`` result for ``params``, computing and storing it once."""
        path = self.derived_path(kind, params, ".npy")
        if path.is_file():
            return np.load(path)
        result = np.asarray(compute())
        save_array(path, result)
        save_json(path.with_suffix(".json"), {"kind": kind, "params": params, "source": self.fingerprint})
        return result

    def has_cached(self, kind: str, params: dict, suffix: str = ".npy") -> bool:
        return self.derived_path(kind, params, suffix).is_file()
