"""metakit: meta-learning for PyTorch.

Data flows one way: a :class:`~metakit.datasets.ClassDataset` is split into class sets, an
:class:`~metakit.episodes.EpisodeSampler` draws N-way K-shot episodes from a split, a
:class:`~metakit.learners.Learner` adapts on the support set and predicts the query set, the
:mod:`~metakit.training` loop meta-trains it and :mod:`~metakit.evaluation` measures it on fixed
episodes.
"""

__version__ = "0.1.0"

from metakit.errors import MetakitError  # noqa: E402

__all__ = ["MetakitError", "__version__"]
