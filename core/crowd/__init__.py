"""SECA's crowd campaigns (Balayn et al., WWW 2021): saliency maps handed to crowd workers, who box and name what they highlight.

* :mod:`core.crowd.campaigns`: the campaign store: campaigns, tasks, single-use tokens, idempotent submits.
* :mod:`core.crowd.saliency`: the saliency maps and pictures workers see (SECA's C1).
* :mod:`core.crowd.pipeline`: campaigns made from a workspace, their links, tables and mined concepts.

Every public name of those modules is re-exported here, so ``from core.crowd import …`` is enough;
they are imported on first use (:mod:`core.lazy`).

>>> from core.crowd import CampaignPlan, create_workspace_campaign, mine_campaign  # doctest: +SKIP
"""

from core.lazy import lazy_getattr

_EXPORTS = {
    "Box": "core.crowd.campaigns",
    "Campaign": "core.crowd.campaigns",
    "campaign_tables": "core.crowd.pipeline",
    "CampaignConcepts": "core.crowd.pipeline",
    "CampaignImage": "core.crowd.campaigns",
    "CampaignPlan": "core.crowd.pipeline",
    "CampaignSettings": "core.crowd.campaigns",
    "CampaignStore": "core.crowd.campaigns",
    "canvas_to_image_box": "core.crowd.campaigns",
    "checked_number": "core.crowd.campaigns",
    "checked_whole": "core.crowd.campaigns",
    "create_workspace_campaign": "core.crowd.pipeline",
    "DEFAULT_INSTRUCTIONS": "core.crowd.pipeline",
    "display_shape": "core.crowd.saliency",
    "IMAGE_TABLE_COLUMNS": "core.crowd.pipeline",
    "INSTRUCTIONS_MAX_CHARS": "core.crowd.campaigns",
    "latest_campaign": "core.crowd.pipeline",
    "LINK_COLUMNS": "core.crowd.pipeline",
    "load_image": "core.crowd.saliency",
    "MAX_ATTRIBUTES_PER_BOX": "core.crowd.campaigns",
    "MAX_BOXES_PER_IMAGE": "core.crowd.campaigns",
    "MAX_DRAFT_CHARS": "core.crowd.campaigns",
    "MAX_IMAGES": "core.crowd.campaigns",
    "MAX_IMAGES_PER_TASK": "core.crowd.campaigns",
    "MAX_PNG_BYTES": "core.crowd.campaigns",
    "MAX_SAMPLES": "core.crowd.saliency",
    "MAX_WORKERS_PER_TASK": "core.crowd.campaigns",
    "mine_campaign": "core.crowd.pipeline",
    "OVERLAY_ALPHA": "core.crowd.saliency",
    "overlay_png": "core.crowd.saliency",
    "picture_png": "core.crowd.saliency",
    "PLATFORM_ID_MAX_CHARS": "core.crowd.campaigns",
    "render_pictures": "core.crowd.pipeline",
    "robust_normalise": "core.crowd.saliency",
    "ROBUST_PERCENTILE": "core.crowd.saliency",
    "saliency_maps": "core.crowd.saliency",
    "SALIENCY_METHODS": "core.crowd.saliency",
    "SaliencyParams": "core.crowd.saliency",
    "sample_images": "core.crowd.pipeline",
    "SAMPLINGS": "core.crowd.pipeline",
    "save_vocabulary": "core.crowd.pipeline",
    "saved_vocabulary": "core.crowd.pipeline",
    "task_links": "core.crowd.pipeline",
    "TaskToken": "core.crowd.campaigns",
    "TaskView": "core.crowd.campaigns",
    "vocabulary_path": "core.crowd.pipeline",
    "worker_summary": "core.crowd.pipeline",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
