"""Learners: one file a method, all behind :class:`~metakit.learners.base.Learner`.

Register a learner with :func:`register_learner`; configs name it (``learner.name``) and its
constructor's keyword arguments are its options. A package outside metakit adds one through a
plugin instead (:mod:`metakit.registry`, ``docs/extending.md``); it is imported on first use.
"""

from __future__ import annotations

from metakit.learners.base import Learner, NonFiniteLoss, Predictor, TaskInfo
from metakit.learners.registry import LEARNERS, build_learner, register_learner

# Importing the modules registers the built-in learners.
from metakit.learners import anil, cavia, finetune, maml, mamlpp, metasgd, protonet, reptile  # noqa: E402,F401
from metakit.learners import matching, metabaseline, r2d2, relation  # noqa: E402,F401
from metakit.learners import centroid, logreg  # noqa: E402,F401  (no-meta-training baselines)
from metakit.learners import pmf  # noqa: E402,F401  (P>M>F: ProtoNet on a pretrained backbone + test-time fine-tuning)
from metakit.learners import setfit_style  # noqa: E402,F401  (fine-tunes the sentence encoder per task)

__all__ = ["LEARNERS", "Learner", "NonFiniteLoss", "Predictor", "TaskInfo", "build_learner", "register_learner"]
