"""InfEmbed (Wang, Adebayo et al., NeurIPS 2023): influence embeddings and the slices found with them.

* :mod:`core.influence.embeddings`: influence embeddings of the workspace's and the
  training images (captum's Arnoldi factorisation of the Hessian), their cost
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

from core.influence.embeddings import (
    InfluenceEmbedder,
    InfluenceParams,
    default_layers,
    estimate_seconds,
    influence_embeddings,
    influence_params,
    is_computed,
    rank_opponents,
    record_influence_params,
    representation,
    representation_source,
    slice_opponents,
    training_embeddings,
)
from core.influence.rule import (
    RuleParams,
    RuleSlices,
    compare_slicings,
    infembed_rule,
    infembed_slices,
    normalised_kmeans,
    rule_slices,
    slice_coherence,
    slicing_coherence,
)

# The representation registry's hook: K-Means on influence embeddings is InfEmbed's.
kmeans_slices = infembed_slices

__all__ = [
    "InfluenceEmbedder",
    "InfluenceParams",
    "RuleParams",
    "RuleSlices",
    "compare_slicings",
    "default_layers",
    "estimate_seconds",
    "infembed_rule",
    "infembed_slices",
    "influence_embeddings",
    "influence_params",
    "is_computed",
    "kmeans_slices",
    "normalised_kmeans",
    "rank_opponents",
    "record_influence_params",
    "representation",
    "representation_source",
    "rule_slices",
    "slice_coherence",
    "slice_opponents",
    "slicing_coherence",
    "training_embeddings",
]
