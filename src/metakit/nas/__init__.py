"""Architecture search across tasks: a DARTS cell space searched by meta-learning (MetaNAS).

- :mod:`~metakit.nas.space`: operations, cell topology, macro network limits.
- :mod:`~metakit.nas.mixed`: the continuous relaxation (mixed operations, the supernet).
- :mod:`~metakit.nas.genotype`: discretisation, JSON form, drawing.
- :mod:`~metakit.nas.network`: the ``supernet`` and ``nas`` backbones.
- :mod:`~metakit.nas.search`: ``metakit nas search`` (MetaNAS or random search).
- :mod:`~metakit.nas.evaluate`: ``metakit nas evaluate`` (found vs random vs Conv-4, from scratch).
"""

from metakit.nas.genotype import Genotype, discretize, random_genotype
from metakit.nas.mixed import MixedOp, SuperNet
from metakit.nas.network import NASNetwork, derive
from metakit.nas.space import DEFAULT_OPS, OPS, SearchSpace

__all__ = [
    "DEFAULT_OPS", "OPS", "Genotype", "MixedOp", "NASNetwork", "SearchSpace", "SuperNet", "derive", "discretize",
    "random_genotype",
]
