"""Model versions: which workspaces form one line of versions (torch-free, read by every stage).

A mitigation (``core.mitigation.corm``) writes ``version.json`` into the workspace of
the version it made: its number, the version it started from and the line's
root. The root is where a line's shared state lives (its annotation and
campaign databases), so annotations can find it without importing the
mitigation stage and its torch dependency.
"""

from __future__ import annotations

from pathlib import Path

from core.workspace import Workspace, is_workspace, read_json

VERSION_FILE = "version.json"

__all__ = ["VERSION_FILE", "read_version", "version_family", "version_root"]


def read_version(workspace: Workspace) -> dict | None:
    """The version record of a workspace a mitigation made (number, parent, root, …), or None for a first version."""
    return read_json(workspace.path / VERSION_FILE)


def version_root(workspace: Workspace) -> Workspace:
    """The first version of ``workspace``'s line (itself when it was not made by a mitigation)."""
    info = read_version(workspace)
    if info and is_workspace(Path(info["root"])):
        return Workspace(info["root"])
    return workspace


def version_family(workspace: Workspace) -> list[Workspace]:
    """The root version and every finished version made from it, in version order.

    Versions are looked for beside the root (where the app puts them).
    """
    root = version_root(workspace)
    family = [root]
    for candidate in sorted(root.path.parent.iterdir()):
        if candidate != root.path and is_workspace(candidate):
            info = read_version(Workspace(candidate))
            if info and Path(info["root"]).resolve() == root.path:
                family.append(Workspace(candidate))
    return sorted(family, key=lambda w: (read_version(w) or {"number": 1})["number"])
