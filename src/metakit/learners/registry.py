"""The learner registry: learner classes by name, and building one from a config's options.

Its own module, below the learner modules: each of them imports :func:`register_learner` from
here, and :mod:`metakit.learners` imports them all (which registers the built-in learners), so
no learner module imports the package that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from metakit.config import call_with_options
from metakit.learners.base import Learner, TaskInfo
from metakit.registry import PluginTable

__all__ = ["LEARNERS", "build_learner", "register_learner"]


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
