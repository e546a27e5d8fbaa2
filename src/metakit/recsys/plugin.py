"""The recsys plugin: ``metakit recsys train|evaluate`` and the MovieLens datasets (``ml-100k``, ``ml-1m``).

Its methods (MeLU and the baselines) are chosen by a recsys config's ``methods`` key
(:mod:`metakit.recsys.config`). Loading this plugin imports nothing; the dataset entries (in
:mod:`metakit.recsys.movielens`) load when a dataset is first asked for.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="recsys",
    summary="cold-start recommendation: MeLU and baselines, users as tasks",
    commands={"recsys": "metakit.recsys.cli:add_recsys_parser"},
    datasets={"ml-100k": "metakit.recsys.movielens:ML100K_SPEC", "ml-1m": "metakit.recsys.movielens:ML1M_SPEC"},
)
