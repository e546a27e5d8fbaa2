"""The recsys plugin: ``metakit recsys train|evaluate``.

Its datasets (``ml-100k``, ``ml-1m``) are listed with the others in :mod:`metakit.datasets`, and
its methods (MeLU and the baselines) are chosen by a recsys config's ``methods`` key
(:mod:`metakit.recsys.config`). Loading this plugin imports nothing.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="recsys",
    summary="cold-start recommendation: MeLU and baselines, users as tasks",
    commands={"recsys": "metakit.recsys.cli:add_recsys_parser"},
)
