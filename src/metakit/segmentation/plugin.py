"""The segmentation plugin: ``metakit segment train|evaluate|export``, its datasets, learners and backbone.

Loading this plugin imports nothing (see :mod:`metakit.registry`). A segmentation config uses the
shared sections (``dataset``, ``backbone``, ``learner``, ``episodes``, ``train``, ``eval``) with
this domain's names in them, so it has no config section of its own.
"""

from __future__ import annotations

from metakit.registry import Plugin

_LEARNERS = "metakit.segmentation.learners"

plugin = Plugin(
    name="segmentation",
    summary="few-shot segmentation: masks for new classes from a few labelled images (PANet, ANIL, fine-tuning, frozen features)",
    commands={"segment": "metakit.segmentation.cli:add_segment_parser"},
    learners={
        "seg-panet": f"{_LEARNERS}.panet:PANet",
        "seg-intensity": f"{_LEARNERS}.intensity:IntensityBaseline",
        "seg-finetune": f"{_LEARNERS}.finetune:FineTuneHead",
        "seg-anil": f"{_LEARNERS}.anil:SegANIL",
        "seg-pretrained": f"{_LEARNERS}.frozen:PretrainedPrototypes",
    },
    backbones={"seg-fcn": "metakit.segmentation.backbone:seg_fcn"},
    datasets={
        "seg-glyphs": "metakit.segmentation.scenes:scenes_spec",
        "fss-folder": "metakit.segmentation.fss:fss_spec",
        "pascal-5i": "metakit.segmentation.published:pascal5i_spec",
        "coco-20i": "metakit.segmentation.published:coco20i_spec",
    },
    # `metakit evaluate|report|predict|serve RUN_DIR` on a segmentation run (`metakit segment predict` has --threshold).
    evaluate_run="metakit.segmentation.cli:cmd_segment_evaluate",
    report_run="metakit.reporting:run_report",
    predict_run="metakit.segmentation.cli:predict_segmentation",
    serve_run="metakit.segmentation.cli:serve_segmentation",
)
