"""Lazy re-exports for the packages' ``__init__``: a name is imported from its module when first used.

A package that re-exported eagerly would import all its modules, torch among them,
whenever any one of them is imported (Python runs the package's ``__init__`` first):
the crowd worker app, which needs only ``core.crowd.campaigns``, would pay for
saliency maps and concept mining it never runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports each name of ``exports`` (name → module) on first use."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
