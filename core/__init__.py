"""SliceScope's library: find where an image classifier fails, without metadata.

Public API (the CLI, the apps and notebooks use these)::

    from core import scan, ScanConfig, ModelSpec, Workspace

The names are imported when first used, so that ``python -m core --help`` and the
torch-free parts of the library do not pay for importing torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SliceScopeError": "core.errors",
    "ScanConfig": "core.extract",
    "attribute_batch": "core.extract",
    "scan": "core.extract",
    "AttributionModel": "core.models",
    "ModelSpec": "core.models",
    "load_module": "core.models",
    "Workspace": "core.workspace",
}
__all__ = ["AttributionModel", "ModelSpec", "ScanConfig", "SliceScopeError", "Workspace", "attribute_batch", "load_module", "scan"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
