"""The recsys plugin: ``metakit recsys train|evaluate`` and the MovieLens datasets (``ml-100k``, ``ml-1m``, and the CSV releases ``ml-latest-small``, ``ml-25m``, ``ml-32m``).

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
    datasets={"ml-100k": "metakit.recsys.movielens:ML100K_SPEC", "ml-1m": "metakit.recsys.movielens:ML1M_SPEC",
              "ml-latest-small": "metakit.recsys.movielens:ML_LATEST_SMALL_SPEC",
              "ml-25m": "metakit.recsys.movielens:ML25M_SPEC", "ml-32m": "metakit.recsys.movielens:ML32M_SPEC"},
    # A recsys config file is one RecsysConfig from its top level (data, tasks, model, methods, ...).
    config_section="recsys", config_schema="metakit.recsys.config:RecsysConfig", config_root=True,
    config_example="configs/recsys-melu-synthetic.yaml",
    evaluate_run="metakit.recsys.cli:cmd_recsys_evaluate", report_run="metakit.recsys.report:run_report",
)
