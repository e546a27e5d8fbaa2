"""metakit: meta-learning for PyTorch.

Data flows one way: a :class:`~metakit.datasets.ClassDataset` is split into class sets, an
:class:`~metakit.episodes.EpisodeSampler` draws N-way K-shot episodes from a split, a
:class:`~metakit.learners.Learner` adapts on the support set and predicts the query set, the
:mod:`~metakit.training` loop meta-trains it and :mod:`~metakit.evaluation` measures it on fixed
episodes.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING  # noqa: E402

from metakit.errors import MetakitError  # noqa: E402

if TYPE_CHECKING:
    from os import PathLike

    from metakit.predict import FewShotModel


def load(run_dir: str | PathLike, checkpoint: str = "best", calibrate: bool = False) -> FewShotModel:
    """A trained run, ready to adapt to your classes and label your items (:func:`metakit.predict.load`).

    ``model = metakit.load("runs/quickstart")``, then ``model.fit(support_x, labels)`` or
    ``model.fit_folder("support/")``, then ``model.predict(query_x)`` (class names),
    ``model.predict_proba(query_x)`` or ``model.predict_files(paths)``.
    """
    # Imported here so that `import metakit` stays light (no torch until a model is loaded).
    from metakit.predict import load as _load

    return _load(run_dir, checkpoint=checkpoint, calibrate=calibrate)


__all__ = ["MetakitError", "__version__", "load"]
