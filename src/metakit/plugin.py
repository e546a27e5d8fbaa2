"""The classification plugin: the core's own commands and pretrained backbones, published like every domain's.

metakit's built-in learners (:mod:`metakit.learners`), trained-from-scratch backbones
(:mod:`metakit.backbones`) and datasets (:mod:`metakit.datasets`) register themselves where they
are defined. The pretrained image encoders are named here instead, so that :mod:`metakit.backbones`
need not import :mod:`metakit.pretrained` (which imports it back); their libraries (timm,
torchvision, open_clip) load only when one of them is built. The commands read the shared config
sections (``dataset``, ``backbone``, ``learner``, ``episodes``, ``train``, ``eval``). Loading this
plugin imports nothing (see :mod:`metakit.registry`).
"""

from __future__ import annotations

from metakit.registry import Plugin

_COMMANDS = ("quickstart", "train", "evaluate", "report", "predict", "serve", "compare", "cross-domain", "continual",
             "reproduce", "datasets", "plugins")

plugin = Plugin(
    name="classification",
    summary="few-shot classification and regression: meta-train, evaluate, compare, predict and serve (the core)",
    commands=dict.fromkeys(_COMMANDS, "metakit.cli:add_core_commands"),
    evaluate_run="metakit.cli:evaluate_classification",
    report_run="metakit.reporting:run_report",
    predict_run="metakit.cli:predict_classification",
    serve_run="metakit.serve:serve",
    backbones={
        "timm": "metakit.pretrained:timm_backbone",
        "torchvision": "metakit.pretrained:torchvision_backbone",
        "open_clip": "metakit.pretrained:open_clip_backbone",
        "pretrained": "metakit.pretrained:shipped_backbone",
    },
)
