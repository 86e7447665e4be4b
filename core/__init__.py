"""SliceScope's library: find where an image classifier fails, without metadata.

Public API (the CLI, the apps and notebooks use these)::

    from core import scan, ScanConfig, ModelSpec, Workspace, compute_slices
"""

__version__ = "0.1.0"

from core.errors import SliceScopeError
from core.extract import ScanConfig, attribute_batch, scan
from core.models import AttributionModel, ModelSpec, load_module
from core.workspace import Workspace

__all__ = ["AttributionModel", "ModelSpec", "ScanConfig", "SliceScopeError", "Workspace", "attribute_batch", "load_module", "scan"]
