"""InfEmbed (Wang, Adebayo et al., NeurIPS 2023): influence embeddings and the slices found with them.

* :mod:`core.influence.embeddings`: influence embeddings of the workspace's and the
  training images (captum's Arnoldi factorisation of the Hessian; the embedding
  passes optionally on a Ray cluster, ``compute_influence``), their cost
  estimate, and a slice's opponents among the training images.
* :mod:`core.influence.rule`: InfEmbed's normalised K-Means, InfEmbed-Rule's
  recursive splitting, and coherence to compare slicings.

The package is also the provider of the ``influence`` representation
(``core.workspace.COMPUTED_REPRESENTATIONS``): ``representation``,
``representation_source`` and ``kmeans_slices`` are what the workspace and
``core.slicing.find_slices`` look up here, so neither imports this package.

>>> from core.influence import influence_embeddings, rule_slices, RuleParams  # doctest: +SKIP
>>> embeddings = influence_embeddings(workspace)  # doctest: +SKIP
>>> found = rule_slices(workspace, RuleParams(max_accuracy=0.5, min_size=20))  # doctest: +SKIP
"""

from core.lazy import lazy_getattr

_EXPORTS = {
    "infembed_table": "core.influence.rule",
    "rule_table": "core.influence.rule",
    "compare_slicings": "core.influence.rule",
    "compute_influence": "core.influence.embeddings",
    "default_layers": "core.influence.embeddings",
    "estimate_seconds": "core.influence.embeddings",
    "infembed_rule": "core.influence.rule",
    "infembed_slices": "core.influence.rule",
    "influence_embeddings": "core.influence.embeddings",
    "influence_params": "core.influence.embeddings",
    "InfluenceEmbedder": "core.influence.embeddings",
    "InfluenceParams": "core.influence.embeddings",
    "is_computed": "core.influence.embeddings",
    "kmeans_slices": "core.influence.rule",
    "normalised_kmeans": "core.influence.rule",
    "rank_opponents": "core.influence.embeddings",
    "record_influence_params": "core.influence.embeddings",
    "representation": "core.influence.embeddings",
    "representation_source": "core.influence.embeddings",
    "rule_slices": "core.influence.rule",
    "RuleParams": "core.influence.rule",
    "RuleSlices": "core.influence.rule",
    "slice_coherence": "core.influence.rule",
    "slice_opponents": "core.influence.embeddings",
    "slicing_coherence": "core.influence.rule",
    "training_embeddings": "core.influence.embeddings",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
