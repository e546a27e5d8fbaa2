"""The classification plugin: the core's own commands, published like every domain's.

metakit's built-in learners (:mod:`metakit.learners`), backbones (:mod:`metakit.backbones`) and
datasets (:mod:`metakit.datasets`) register themselves where they are defined, so this plugin only
names the commands; they read the shared config sections (``dataset``, ``backbone``, ``learner``,
``episodes``, ``train``, ``eval``). Loading it imports nothing (see :mod:`metakit.registry`).
"""

from __future__ import annotations

from metakit.registry import Plugin

_COMMANDS = ("quickstart", "train", "evaluate", "predict", "serve", "compare", "cross-domain", "continual",
             "reproduce", "datasets")

plugin = Plugin(
    name="classification",
    summary="few-shot classification and regression: meta-train, evaluate, compare, predict and serve (the core)",
    commands=dict.fromkeys(_COMMANDS, "metakit.cli:add_core_commands"),
)
