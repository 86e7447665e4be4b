"""From annotated slices to a better model version: spuriousness propagation, CoRM retraining, its metrics, background jobs.

* :mod:`core.mitigation.spuriousness`: spuriousness propagated from annotated slices to the others.
* :mod:`core.mitigation.robustness`: the CoRM metrics: clean, core, spurious accuracy, RCS, worst group.
* :mod:`core.mitigation.corm`: relabelling and CoRM retraining into a new model version, as a resumable job.
* :mod:`core.mitigation.jobs`: retraining as a background process the app can watch and cancel.
* :mod:`core.mitigation.loop`: the annotate → propagate → mitigate → evaluate loop the CLI and the app share.

Every public name of those modules is re-exported here, so ``from core.mitigation import …`` is enough;
they are imported on first use (:mod:`core.lazy`).

>>> from core.mitigation import plan_mitigation, mitigate, evaluate_version  # doctest: +SKIP
"""

from core.lazy import lazy_getattr

_EXPORTS = {
    "CANCELLABLE_PHASES": "core.mitigation.jobs",
    "LIVE_PHASES": "core.mitigation.jobs",
    "annotated_values": "core.mitigation.spuriousness",
    "AnnotationState": "core.mitigation.loop",
    "apply_relabels": "core.mitigation.robustness",
    "attribute_training_images": "core.mitigation.corm",
    "attribution_regions": "core.mitigation.robustness",
    "CANCEL_FILE": "core.mitigation.corm",
    "Cancelled": "core.mitigation.corm",
    "CHECKPOINT_FILE": "core.mitigation.corm",
    "choose_regions": "core.mitigation.robustness",
    "choose_treated_slices": "core.mitigation.corm",
    "CORE": "core.mitigation.spuriousness",
    "corm_preview": "core.mitigation.corm",
    "corrupt": "core.mitigation.robustness",
    "DEFAULT_SIGMA": "core.mitigation.robustness",
    "DEFAULT_THRESHOLD": "core.mitigation.corm",
    "evaluate": "core.mitigation.robustness",
    "evaluate_version": "core.mitigation.loop",
    "ground_truth_regions": "core.mitigation.robustness",
    "JOB_FILE": "core.mitigation.corm",
    "job_folder": "core.mitigation.corm",
    "job_phase": "core.mitigation.jobs",
    "KERNELS": "core.mitigation.spuriousness",
    "KIND_VALUES": "core.mitigation.spuriousness",
    "last_error": "core.mitigation.jobs",
    "LAUNCH_MARK": "core.mitigation.jobs",
    "load_pixels": "core.mitigation.robustness",
    "LOG_FILE": "core.mitigation.jobs",
    "log_path": "core.mitigation.jobs",
    "METRICS_FILE": "core.mitigation.robustness",
    "mitigate": "core.mitigation.loop",
    "mitigate_arguments": "core.mitigation.loop",
    "mitigation_unfinished": "core.mitigation.corm",
    "MitigationJob": "core.mitigation.corm",
    "MODEL_FILE": "core.mitigation.corm",
    "next_version_path": "core.mitigation.corm",
    "NOISE_REGIONS": "core.mitigation.corm",
    "normalise": "core.mitigation.robustness",
    "outside_objects": "core.mitigation.corm",
    "PHASES": "core.mitigation.jobs",
    "plan_mitigation": "core.mitigation.loop",
    "process_alive": "core.mitigation.jobs",
    "propagate": "core.mitigation.spuriousness",
    "PropagationParams": "core.mitigation.spuriousness",
    "rcs": "core.mitigation.robustness",
    "read_annotations": "core.mitigation.loop",
    "read_job": "core.mitigation.corm",
    "read_metrics": "core.mitigation.robustness",
    "read_object_mask": "core.mitigation.robustness",
    "read_object_masks": "core.mitigation.robustness",
    "read_status": "core.mitigation.corm",
    "REGION_SOURCES": "core.mitigation.robustness",
    "Regions": "core.mitigation.robustness",
    "relabelled_count": "core.mitigation.robustness",
    "request_cancel": "core.mitigation.corm",
    "Robustness": "core.mitigation.robustness",
    "run_mitigation": "core.mitigation.corm",
    "slice_changes": "core.mitigation.loop",
    "slice_embeddings": "core.mitigation.spuriousness",
    "slice_spuriousness": "core.mitigation.spuriousness",
    "Slicing": "core.mitigation.loop",
    "SOURCES": "core.mitigation.corm",
    "SPURIOUS": "core.mitigation.spuriousness",
    "spurious_region": "core.mitigation.corm",
    "spuriousness": "core.mitigation.loop",
    "start_job": "core.mitigation.jobs",
    "STATUS_FILE": "core.mitigation.corm",
    "TORCHSCRIPT_FILE": "core.mitigation.corm",
    "TrainingParams": "core.mitigation.corm",
    "unfinished_jobs": "core.mitigation.corm",
    "version_board": "core.mitigation.loop",
    "write_metrics": "core.mitigation.robustness",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
