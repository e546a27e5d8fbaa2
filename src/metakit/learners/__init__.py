"""Learners: one file a method, all behind :class:`~metakit.learners.base.Learner`.

Register a learner with :func:`register_learner`; configs name it (``learner.name``) and its
constructor's keyword arguments are its options. A package outside metakit adds one through a
plugin instead (:mod:`metakit.registry`, ``docs/extending.md``); it is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from metakit.config import call_with_options
from metakit.learners.base import Learner, NonFiniteLoss, Predictor, TaskInfo
from metakit.registry import PluginTable


def _adopt(name: str, cls: type[Learner]) -> None:
    register_learner(name)(cls)


#: Learner classes by name: the built-in ones, then those the plugins add (looked up on first use).
LEARNERS: PluginTable = PluginTable("learner", adopt=_adopt)


def register_learner(name: str) -> Callable[[type[Learner]], type[Learner]]:
    """Class decorator adding a learner to the registry under ``name``."""

    def wrap(cls: type[Learner]) -> type[Learner]:
        LEARNERS[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def build_learner(name: str, backbone: nn.Module, task: TaskInfo, **options: Any) -> Learner:
    """Build learner ``name`` on ``backbone`` for ``task``, validating ``options``."""
    return call_with_options(LEARNERS.get_or_fail(name), options, f"learner {name!r}", backbone, task)


# Importing the modules registers the built-in learners.
from metakit.learners import anil, cavia, finetune, maml, mamlpp, metasgd, protonet, reptile  # noqa: E402,F401
from metakit.learners import matching, metabaseline, r2d2, relation  # noqa: E402,F401
from metakit.learners import centroid, logreg  # noqa: E402,F401  (no-meta-training baselines)
from metakit.learners import pmf  # noqa: E402,F401  (P>M>F: ProtoNet on a pretrained backbone + test-time fine-tuning)
from metakit.learners import setfit_style  # noqa: E402,F401  (fine-tunes the sentence encoder per task)

__all__ = ["LEARNERS", "Learner", "NonFiniteLoss", "Predictor", "TaskInfo", "build_learner", "register_learner"]
