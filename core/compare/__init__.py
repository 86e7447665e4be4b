"""IMACS (Schoop et al., 2022): compare two model versions by what they attribute, summarised over a dataset.

* :mod:`core.compare.sampling`: which images: a balanced confusion matrix per model, or the images the models disagree on.
* :mod:`core.compare.segments`: a grid or SLIC superpixels (a feature mask per image, boxes).
* :mod:`core.compare.attribution`: segment Shapley values (captum's sampling, excluded segments take the dataset's mean colour or a blur), cached.
* :mod:`core.compare.embedding`: segment tiles embedded by an independent third model (a small CNN trained once, or a torchvision checkpoint).
* :mod:`core.compare.clusters`: pooled K-Means over both models' segments, per-cluster attribution and disparity.
* :mod:`core.compare.pipeline`: :func:`compare_versions`, the whole comparison, and :func:`estimate_seconds`.
* :mod:`core.compare.changes`: which images changed between versions (DASH's Mosaic and Trace views' data).

No UI here; the names are imported on first use (:mod:`core.lazy`).

>>> from core.compare import compare_versions, CompareParams  # doctest: +SKIP
>>> result = compare_versions("demo/workspace", "demo/workspace-balanced", "circle", CompareParams(k=8))  # doctest: +SKIP
>>> result.clusters  # doctest: +SKIP
"""

from core.lazy import lazy_getattr

_EXPORTS = {
    "balanced_sample": "core.compare.sampling",
    "baseline_images": "core.compare.attribution",
    "BASELINES": "core.compare.attribution",
    "blur": "core.compare.attribution",
    "CELLS": "core.compare.sampling",
    "check_comparable": "core.compare.sampling",
    "class_score": "core.compare.attribution",
    "cluster_segments": "core.compare.clusters",
    "cluster_summary": "core.compare.clusters",
    "compare_versions": "core.compare.pipeline",
    "CompareParams": "core.compare.pipeline",
    "Comparison": "core.compare.pipeline",
    "confusion_mosaic": "core.compare.changes",
    "crop_resize": "core.compare.embedding",
    "dataset_colour": "core.compare.attribution",
    "disagreement_sample": "core.compare.sampling",
    "draw_sample": "core.compare.sampling",
    "Embedder": "core.compare.embedding",
    "embedding_model": "core.compare.embedding",
    "EmbeddingParams": "core.compare.embedding",
    "estimate_seconds": "core.compare.pipeline",
    "estimate_training_seconds": "core.compare.embedding",
    "false_positive_sample": "core.compare.sampling",
    "gradcam_players": "core.compare.attribution",
    "grid_segments": "core.compare.segments",
    "mosaic_members": "core.compare.changes",
    "OTHER_CLASSES": "core.compare.changes",
    "player_boxes": "core.compare.segments",
    "outcomes": "core.compare.sampling",
    "Sample": "core.compare.sampling",
    "segment_boxes": "core.compare.segments",
    "segment_id_count": "core.compare.segments",
    "segment_embeddings": "core.compare.embedding",
    "segment_images": "core.compare.segments",
    "segment_tiles": "core.compare.embedding",
    "SegmentAttributions": "core.compare.attribution",
    "SegmentParams": "core.compare.segments",
    "SEGMENTATIONS": "core.compare.segments",
    "shapley_values": "core.compare.attribution",
    "ShapleyParams": "core.compare.attribution",
    "ShapleyResult": "core.compare.attribution",
    "slic_segments": "core.compare.segments",
    "STRATEGIES": "core.compare.sampling",
    "TileCNN": "core.compare.embedding",
    "trace_steps": "core.compare.changes",
    "train_tile_cnn": "core.compare.embedding",
    "version_outcomes": "core.compare.changes",
    "VersionOutcomes": "core.compare.changes",
    "workspace_attributions": "core.compare.attribution",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
