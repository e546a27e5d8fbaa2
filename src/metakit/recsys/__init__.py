"""Cold-start recommendation as meta-learning: MeLU (Lee et al., KDD 2019) and its baselines.

Each user is a task (support = earlier ratings, query = the last ones); the modules are
:mod:`~metakit.recsys.movielens` (ML-100K / ML-1M loaders), :mod:`~metakit.recsys.synthetic`
(realistic synthetic ratings in the same file formats), :mod:`~metakit.recsys.tasks` (users as
tasks, the four scenarios), :mod:`~metakit.recsys.melu` (the model and its meta-training),
:mod:`~metakit.recsys.baselines`, :mod:`~metakit.recsys.metrics`, :mod:`~metakit.recsys.config`,
:mod:`~metakit.recsys.experiment` (train / evaluate a run directory) and
:mod:`~metakit.recsys.report`. ``metakit recsys train|evaluate`` is the command line.
"""

from metakit.registry import lazy_exports

# Imported on first use, so that loading the recsys plugin (metakit.recsys.plugin) for the CLI imports no torch.
__getattr__ = lazy_exports(__name__, {"SCENARIOS": "tasks"})

__all__ = ["SCENARIOS"]
