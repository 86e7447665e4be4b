"""SliceScope's library: find where an image classifier fails, without metadata.

The main job in a notebook (docs/API.md runs it end to end)::

    from core import Workspace, build_demo, default_slice_params, evidence_order, find_slices, slice_table

    workspace = Workspace(build_demo("demo", preset="tiny").workspace)   # or scan(ScanConfig(...))
    slice_ids = find_slices(workspace, "attribution", default_slice_params(len(workspace.images)))
    table = evidence_order(slice_table(workspace.images, slice_ids))     # problems first, in words

The names are imported when first used, so that ``python -m core --help`` and the
torch-free parts of the library do not pay for importing torch.
"""

from core.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "SliceScopeError": "core.errors",
    "ScanConfig": "core.extract",
    "attribute_batch": "core.extract",
    "scan": "core.extract",
    "AttributionModel": "core.models",
    "ModelSpec": "core.models",
    "load_module": "core.models",
    "retained_heap": "core.memory",
    "Workspace": "core.workspace",
    "build_demo": "core.demo",
    "DEFAULT_SLICING": "core.slicing",
    "ProjectionParams": "core.slicing",
    "SliceParams": "core.slicing",
    "default_slice_params": "core.slicing",
    "find_slices": "core.slicing",
    "project": "core.slicing",
    "slice_table": "core.slicing",
    "FlagParams": "core.evidence",
    "evidence_order": "core.evidence",
    "describe_members": "core.descriptions",
    "build_mosaic": "core.mosaic",
    "Slicing": "core.mitigation",
    "evaluate_version": "core.mitigation",
    "mitigate": "core.mitigation",
    "open_store": "core.store",
    "plan_mitigation": "core.mitigation",
    "read_annotations": "core.mitigation",
    "TrainingParams": "core.mitigation",
    "TrainingData": "core.training",
    "attach_training_data": "core.training",
}
__all__ = [
    "DEFAULT_SLICING",
    "AttributionModel",
    "FlagParams",
    "ModelSpec",
    "ProjectionParams",
    "ScanConfig",
    "SliceParams",
    "SliceScopeError",
    "Slicing",
    "TrainingData",
    "TrainingParams",
    "Workspace",
    "attach_training_data",
    "attribute_batch",
    "build_demo",
    "build_mosaic",
    "default_slice_params",
    "describe_members",
    "evaluate_version",
    "evidence_order",
    "find_slices",
    "load_module",
    "mitigate",
    "open_store",
    "plan_mitigation",
    "project",
    "read_annotations",
    "retained_heap",
    "scan",
    "slice_table",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
