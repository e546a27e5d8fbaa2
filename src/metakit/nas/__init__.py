"""Architecture search across tasks: a DARTS cell space searched by meta-learning (MetaNAS).

- :mod:`~metakit.nas.space`: operations, cell topology, macro network limits.
- :mod:`~metakit.nas.mixed`: the continuous relaxation (mixed operations, the supernet).
- :mod:`~metakit.nas.genotype`: discretisation, JSON form, drawing.
- :mod:`~metakit.nas.network`: the ``supernet`` and ``nas`` backbones.
- :mod:`~metakit.nas.search`: ``metakit nas search`` (MetaNAS or random search).
- :mod:`~metakit.nas.evaluate`: ``metakit nas evaluate`` (found vs random vs Conv-4, from scratch).
"""

from metakit.registry import lazy_exports

# Imported on first use, so that loading the nas plugin (metakit.nas.plugin) for the CLI imports no torch.
__getattr__ = lazy_exports(__name__, {
    "Genotype": "genotype", "discretize": "genotype", "random_genotype": "genotype", "MixedOp": "mixed",
    "SuperNet": "mixed", "NASNetwork": "network", "derive": "network", "DEFAULT_OPS": "space", "OPS": "space",
    "SearchSpace": "space",
})

__all__ = [
    "DEFAULT_OPS", "OPS", "Genotype", "MixedOp", "NASNetwork", "SearchSpace", "SuperNet", "derive", "discretize",
    "random_genotype",
]
