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
    # A recsys config file is one RecsysConfig from its top level (data, tasks, model, methods, ...).
    config_section="recsys", config_schema="metakit.recsys.config:RecsysConfig", config_root=True,
    config_example="configs/recsys-melu-synthetic.yaml",
    evaluate_run="metakit.recsys.cli:cmd_recsys_evaluate", report_run="metakit.recsys.report:run_report",
)
