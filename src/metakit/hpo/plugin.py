"""The hpo plugin: ``metakit tune`` and the ``tune:`` section of a config.

Loading this plugin imports nothing; Optuna is needed only when ``metakit tune`` runs.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="hpo",
    summary="hyperparameter optimisation with Optuna, warm-started from earlier studies",
    commands={"tune": "metakit.hpo.cli:add_tune_parser"},
    config_section="tune",
)
