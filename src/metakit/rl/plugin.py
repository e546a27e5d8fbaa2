"""The rl plugin: ``metakit rl train|evaluate``.

The algorithms (MAML-RL, RL², PEARL) are chosen by a config's ``algorithm`` key in a config file
of rl's own (:mod:`metakit.rl.config`), not through the learner registry. Loading this plugin
imports nothing; gymnasium is needed only when an ``rl`` command runs, which says so in one line.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="rl",
    summary="meta-reinforcement learning: MAML-RL, RL² and PEARL on gymnasium, MuJoCo and Meta-World tasks",
    commands={"rl": "metakit.rl.cli:add_rl_parser"},
)
