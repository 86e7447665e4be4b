"""The workspace: everything SliceScope knows about one (dataset, model) pair.

Layout (documented for users in docs/WORKSPACE.md)::

    WS/
      workspace.toml         manifest: dataset, model, transforms, versions, hashes
      images.parquet         one row per readable image (label, prediction, ...)
      arrays/*.npy           logits, features F, attribution features F_W, GradCAM maps
      report.json            skipped files and why, accuracy, per-group accuracy
      derived/<kind>-<key>.* results computed from the above (projections, slices),
                             keyed by a hash of their parameters and their source

While a scan runs, the folder holds ``scan-state.json`` and ``chunks/`` instead;
:func:`workspace_status` tells a finished workspace from a half-built, outdated
or damaged one without loading any array.

Every derived result is stored under the hash of what it was computed from, so a
changed parameter recomputes only what depends on it and never overwrites a
result that is still valid for other parameters.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import pandas as pd
import tomli_w

from core.errors import SliceScopeError

MANIFEST = "workspace.toml"
SCAN_STATE = "scan-state.json"
FORMAT_VERSION = 1
ARRAY_NAMES = ("logits", "features", "attribution_features", "gradcam")
# What Workspace reads besides the manifest; a finished workspace lacking one is damaged.
FINISHED_FILES = ("images.parquet", "report.json", *(f"arrays/{name}.npy" for name in ARRAY_NAMES))
# What a scan writes and owns in its folder, the manifest first. Everything else there (the annotation
# database, saved vocabularies, exports, campaign links) is the user's and survives a rescan.
SCAN_OUTPUTS = (MANIFEST, "images.parquet", "report.json", "arrays", "derived", "chunks", SCAN_STATE)
# Where a rescan of a finished workspace builds its files, so the old ones stay usable until the new are complete.
RESCAN_FOLDER = ".rescan"
_REQUIRED_MANIFEST_ENTRIES = (("dataset", "root"), ("dataset", "fingerprint"), ("model", "classes"), ("extraction", "fingerprint"))
# Representation name → array holding it; the slicing code and the app list these.
REPRESENTATIONS = {
    "attribution": "attribution_features",
    "features": "features",
    "influence": "influence_embeddings",  # a derived array, see COMPUTED_REPRESENTATIONS
}
# Representations that are not scan arrays: name → the module that computes them
# (``representation(workspace)``, cached in derived/) and names what they depend on
# beyond the scan (``representation_source(workspace)``: influence embeddings need
# the training data), so that every result derived from them is keyed by it too.
# A provider may also offer ``kmeans_slices(workspace, params, progress)``, K-Means
# in its own geometry, which core.slicing uses for that representation. Looking the
# provider up here, by name, is what keeps the early stages (workspace, slicing)
# from importing the later ones that compute such representations.
COMPUTED_REPRESENTATIONS = {"influence": "core.influence"}


def representation_provider(name: str) -> ModuleType | None:
    """The module that computes the representation ``name`` (see COMPUTED_REPRESENTATIONS), or None for a scan array."""
    return importlib.import_module(COMPUTED_REPRESENTATIONS[name]) if name in COMPUTED_REPRESENTATIONS else None


def stable_hash(payload: object) -> str:
    """A short hash of JSON-serialisable parameters, independent of key order."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _process_umask() -> int:
    # os.umask can only be read by setting it; done once, before any thread writes files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place.

    A crash mid-write leaves the old file (or none), never a truncated one. The
    file gets the mode any other file would (mkstemp's private 0600 would make a
    shared workspace unreadable to the colleague who opens it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _FILE_MODE)
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
    """Whether ``path`` holds a finished workspace (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


def looks_like_workspace(path: Path) -> bool:
    """Whether ``path`` holds a workspace in any state, finished or not, for discovery."""
    return is_workspace(path) or (Path(path) / SCAN_STATE).is_file()


def load_cached_array(path: Path) -> np.ndarray | None:
    """A derived result stored at ``path``; None if it is absent or damaged, since it can be computed again."""
    if not path.is_file():
        return None
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError):
        path.unlink(missing_ok=True)
        return None


def read_json(path: Path) -> dict | None:
    """The JSON object in the file at ``path``; None if the file is absent, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_scan_state(path: Path) -> dict | None:
    """The interrupted scan's ``scan-state.json`` in folder ``path``; None if absent or unreadable."""
    return read_json(Path(path) / SCAN_STATE)


def read_manifest(path: Path) -> dict | None:
    """The manifest of the workspace in folder ``path``; None if absent or unreadable."""
    try:
        return tomllib.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _scan_inputs(record: dict | None) -> dict | None:
    inputs = (record or {}).get("scan")
    return inputs if isinstance(inputs, dict) else None


def recorded_scan_inputs(path: Path) -> dict | None:
    """The scan inputs recorded in the workspace at ``path`` (see ``ScanConfig.to_dict``), if any."""
    path = Path(path)
    return _scan_inputs(read_manifest(path) if is_workspace(path) else read_scan_state(path))


@dataclass(frozen=True)
class WorkspaceStatus:
    """Whether a folder holds a workspace the app can open and, if not, what to do about it."""

    state: Literal["ready", "missing", "half-built", "outdated", "damaged"]
    message: str  # one line for an analyst: the problem and its fix
    can_rebuild: bool  # the scan inputs are recorded, so rebuild_workspace can (re)build it


def workspace_status(path: str | Path) -> WorkspaceStatus:
    """The state of the workspace at ``path``.

    Cheap enough for every page render: it reads the manifest or the scan state
    and checks that files exist, but loads no table or array.
    """
    path = Path(path).expanduser()
    if is_workspace(path):
        return _finished_status(path, read_manifest(path))
    if (path / SCAN_STATE).is_file():
        return _interrupted_status(path, read_scan_state(path))
    return WorkspaceStatus("missing", f"There is no workspace at {path} — build one with: {scan_command(path)}.", False)


def scan_command(out: Path, overwrite: bool = False) -> str:
    """The command a user runs to build the workspace at ``out`` by hand."""
    return f"python -m core scan --data PATH --model CKPT --out {out}" + (" --overwrite" if overwrite else "")


def _finished_status(path: Path, manifest: dict | None) -> WorkspaceStatus:
    can_rebuild = _scan_inputs(manifest) is not None
    rebuild = "rebuild it" if can_rebuild else f"rebuild it with: {scan_command(path, overwrite=True)}"
    if manifest is None:
        return WorkspaceStatus("damaged", f"This workspace's manifest ({MANIFEST}) is unreadable — {rebuild}.", can_rebuild)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        return WorkspaceStatus("damaged", f"This workspace's manifest ({MANIFEST}) has no format version — {rebuild}.", can_rebuild)
    if version > FORMAT_VERSION:
        return WorkspaceStatus("outdated", f"This workspace was written by a newer SliceScope (format {version}; this version reads format {FORMAT_VERSION}) — update SliceScope, or {rebuild} with this version.", can_rebuild)
    if version != FORMAT_VERSION:
        return WorkspaceStatus("outdated", f"This workspace was written by SliceScope format {version}; this version reads format {FORMAT_VERSION} — {rebuild}.", can_rebuild)
    for table, key in _REQUIRED_MANIFEST_ENTRIES:
        if key not in (manifest.get(table) or {}):
            return WorkspaceStatus("damaged", f"This workspace's manifest has no {table}.{key} — {rebuild}.", can_rebuild)
    missing = next((name for name in FINISHED_FILES if not (path / name).is_file()), None)
    if missing:
        return WorkspaceStatus("damaged", f"This workspace is damaged: {missing} is missing — {rebuild}.", can_rebuild)
    damage = find_damage(path)
    if damage:
        return WorkspaceStatus("damaged", f"This workspace is damaged: {damage} — {rebuild}.", can_rebuild)
    return WorkspaceStatus("ready", f"Workspace {manifest.get('name') or path.name} is ready.", can_rebuild)


def find_damage(path: Path) -> str | None:
    """What is wrong with a finished workspace's tables and arrays, judged from their headers and sizes.

    Reads the Parquet footer and each array's header, not the data, so it stays
    cheap enough for every page render while catching truncated and overwritten
    files and arrays that disagree on the number of images.
    """
    import pyarrow.parquet as pq

    try:
        num_rows = pq.read_metadata(path / "images.parquet").num_rows
    except (OSError, ValueError) as error:
        return f"images.parquet is unreadable ({_first_line(error)})"
    if read_json(path / "report.json") is None:
        return "report.json is unreadable"
    for name in ARRAY_NAMES:
        problem = npy_damage(path / "arrays" / f"{name}.npy", num_rows)
        if problem:
            return f"arrays/{name}.npy {problem}"
    return None


def npy_damage(path: Path, expected_rows: int | None = None) -> str | None:
    """Why the .npy file at ``path`` cannot be memory-mapped as it claims (None if it can)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran_order, dtype = read_header(handle)
            data_start = handle.tell()
    except (OSError, ValueError, EOFError) as error:
        return f"is unreadable ({_first_line(error)})"
    expected_size = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual_size = path.stat().st_size
    if actual_size < expected_size:
        return f"is truncated ({actual_size:,} of {expected_size:,} bytes)"
    if expected_rows is not None and (not shape or shape[0] != expected_rows):
        return f"holds {shape[0] if shape else 0} rows for {expected_rows} images"
    return None


def drop_damaged_derived(path: Path) -> list[str]:
    """Delete the derived results under ``path`` that are unreadable; return their names.

    They are caches: whatever needs one computes it again.
    """
    dropped = []
    for cached in sorted((Path(path) / "derived").glob("*.npy")):
        if npy_damage(cached):
            cached.unlink(missing_ok=True)
            dropped.append(cached.name)
    return dropped


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _interrupted_status(path: Path, state: dict | None) -> WorkspaceStatus:
    if state is None:
        return WorkspaceStatus("damaged", f"This workspace's interrupted scan left an unreadable {SCAN_STATE} — rebuild it with: {scan_command(path, overwrite=True)}.", False)
    can_rebuild = _scan_inputs(state) is not None
    finished = len(list((path / "chunks").glob("chunk-*.npz")))
    total = state.get("num_chunks")
    where = f"at {finished} of {total} chunks" if isinstance(total, int) else "before it finished"
    fix = "resume it to finish" if can_rebuild else "re-run the same python -m core scan command to resume it"
    return WorkspaceStatus("half-built", f"This workspace's scan was interrupted {where} — {fix}.", can_rebuild)


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

    def _damaged(self, what: str, error: BaseException) -> SliceScopeError:
        return SliceScopeError(f"workspace {self.name} is damaged: {what} is unreadable ({_first_line(error)})", f"repair it with: python -m core status {self.path} --repair")

    @cached_property
    def images(self) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.path / "images.parquet")
        except (OSError, ValueError) as error:
            raise self._damaged("images.parquet", error) from None

    @cached_property
    def report(self) -> dict:
        try:
            return json.loads((self.path / "report.json").read_text())
        except (OSError, ValueError) as error:
            raise self._damaged("report.json", error) from None

    def array(self, name: str) -> np.ndarray:
        """A stored array, memory-mapped so large workspaces open instantly."""
        path = self.path / "arrays" / f"{name}.npy"
        if not path.is_file():
            raise SliceScopeError(f"workspace {self.name} has no array '{name}'", f"repair it with: python -m core status {self.path} --repair")
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise self._damaged(f"arrays/{name}.npy", error) from None

    def representation(self, name: str) -> np.ndarray:
        if name not in REPRESENTATIONS:
            raise SliceScopeError(f"unknown representation '{name}'", f"use one of: {', '.join(REPRESENTATIONS)}")
        provider = representation_provider(name)
        return self.array(REPRESENTATIONS[name]) if provider is None else provider.representation(self)

    def image_path(self, relative_path: str) -> Path:
        return self.data_root / relative_path

    # -- derived results -------------------------------------------------
    def derived_path(self, kind: str, params: dict, suffix: str) -> Path:
        key = stable_hash({"source": self.fingerprint, "kind": kind, **self._representation_source(kind), **params})
        return self.path / "derived" / f"{kind}-{key}{suffix}"

    def _representation_source(self, kind: str) -> dict:
        """For a result of a computed representation (``slices-influence``, ``projection-influence``), what that
        representation was computed from; nothing for the others, so their keys stay as they were."""
        provider = representation_provider(kind.rpartition("-")[2])
        return {} if provider is None else {"representation_source": provider.representation_source(self)}

    def cached_array(self, kind: str, params: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Load the ``kind`` result for ``params``, computing and storing it once."""
        path = self.derived_path(kind, params, ".npy")
        cached = load_cached_array(path)
        if cached is not None:
            return cached
        result = np.asarray(compute())
        try:
            save_array(path, result)
            save_json(path.with_suffix(".json"), {"kind": kind, "params": params, "source": self.fingerprint})
        except OSError:
            pass  # a read-only workspace still shows its results; they are computed again next time
        return result

    def has_cached(self, kind: str, params: dict, suffix: str = ".npy") -> bool:
        return self.derived_path(kind, params, suffix).is_file()
