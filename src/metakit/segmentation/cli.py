"""The ``metakit segment`` command group: ``train CONFIG``, ``evaluate RUN_DIR``, ``predict RUN_DIR`` and ``export``.

Added to the ``metakit`` parser by the segmentation plugin (:mod:`metakit.segmentation.plugin`).
Training runs the shared :class:`metakit.training.Trainer` on the experiment
:func:`~metakit.segmentation.experiment.build_seg_experiment` builds, so the run directory,
checkpoints, ``--resume`` and ``report.md`` are the same as a classification run's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metakit.commands import (
    add_command_group, add_common_options, add_run_dir_command, add_train_evaluate, check_output_dir,
    check_output_file, console, default_out, positive_int, write_json_option,
)


def cmd_segment_train(args: argparse.Namespace) -> int:
    """Meta-train a segmentation learner from a YAML config (e.g. configs/seg-glyphs-panet.yaml)."""
    from metakit.config import load_config
    from metakit.segmentation.experiment import build_seg_experiment
    from metakit.training import Trainer

    config = load_config(args.config, args.overrides)
    out = check_output_dir(args.out or default_out(config.name))
    check_output_file(args.json)
    summary = Trainer(build_seg_experiment(config), out, resume=args.resume, progress=not args.no_progress,
                      domain="segmentation").fit()
    metric = summary["metric"]
    console.print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.1f} s; best val {metric} "
        f"{summary[f'best_val_{metric}']:.4f} at step {summary['best_step']}; run directory {out}"
    )
    if args.evaluate:
        _evaluate(out, args)
    else:
        write_json_option(args.json, summary)
    console.print(f"report: {out / 'report.md'}")
    return 0


def _evaluate(run_dir: Path, args: argparse.Namespace) -> None:
    from metakit.reporting import results_table
    from metakit.segmentation.experiment import evaluate_seg_run

    result = evaluate_seg_run(
        run_dir, episodes=getattr(args, "episodes", None), seeds=getattr(args, "seeds", None) or 5,
        shots=getattr(args, "shots", None), ways=getattr(args, "ways", None), split=getattr(args, "split", "test"),
        checkpoint=getattr(args, "checkpoint", "best"),
    )
    title = f"{result['learner']} on {result['dataset']} ({result['split']} split, CI over {result['seeds']} seeds)"
    console.print(results_table(result["results"], title=title))
    console.print(f"query | truth | prediction: {Path(run_dir) / 'segmentation_grid.png'}")
    write_json_option(args.json, result)


def cmd_segment_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a segmentation run: mIoU, FB-IoU and AP50 over fixed test episodes, 95% CI over seeds."""
    check_output_file(args.json)
    _evaluate(Path(args.run_dir), args)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def _predict(run_dir: str, support: str, query: str, out_dir: str | Path, threshold: int | None, checkpoint: str,
             json_path: str | None) -> int:
    from metakit.segmentation.predict import predict_folder

    check_output_file(json_path)
    out = check_output_dir(out_dir)
    result = predict_folder(run_dir, support, query, out, threshold=threshold, checkpoint=checkpoint)
    found = sum(len(b) for b in result["queries"].values())
    console.print(
        f"adapted to {result['support_images']} support image(s); wrote masks and overlays of {len(result['queries'])} "
        f"query image(s) to {out}; {found} instance box(es) in {out / 'boxes.json'}"
    )
    write_json_option(json_path, result)
    return 0


def cmd_segment_predict(args: argparse.Namespace) -> int:
    """Adapt a trained run to your support folder (<n>.jpg + mask <n>.png) and segment your query images.

    Writes <name>_mask.png and <name>_overlay.png per query image, and the instances' boxes in boxes.json.
    """
    return _predict(args.run_dir, args.support, args.query, args.out, args.threshold, args.checkpoint, args.json)


def predict_segmentation(args: argparse.Namespace) -> int:
    """``metakit predict RUN_DIR`` on a segmentation run: as ``metakit segment predict``, into a folder.

    The core command's ``--out`` names a CSV file by default; a segmentation run writes a folder of
    masks, overlays and ``boxes.json`` instead, named by ``--out`` without its ``.csv``.
    """
    out = Path(args.out)
    if out.suffix.lower() == ".csv":
        out = out.with_suffix("")
    if getattr(args, "threads", None):
        from metakit.utils import set_threads

        set_threads(args.threads)
    return _predict(args.run_dir, args.support, args.query, out, None, args.checkpoint, getattr(args, "json", None))


def _segmentation_app(run_dir: str, checkpoint: str, limits: Any, allowed_hosts: list[str] | None) -> Any:
    from metakit.segmentation.serve import segmentation_app  # FastAPI: imported once the serve extra is checked

    return segmentation_app(run_dir, checkpoint, limits, allowed_hosts)


def serve_segmentation(run_dir: str, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
                       limits: Any = None, announce: Any = print) -> int:
    """``metakit serve RUN_DIR`` on a segmentation run (the plugin's ``serve_run`` hook): the overlay page and API."""
    from metakit.serve import serve

    return serve(run_dir, host=host, port=port, checkpoint=checkpoint, limits=limits, announce=announce,
                 build=_segmentation_app)


def cmd_segment_export(args: argparse.Namespace) -> int:
    """Write a config's scenes (default: seg-glyphs) in the fss-folder layout, with its class split."""
    from metakit.config import load_config
    from metakit.segmentation.experiment import load_seg_sets
    from metakit.segmentation.fss import export_fss

    config = load_config(args.config, args.overrides) if args.config else None
    if config is None:
        from metakit.config import config_from_dict

        config = config_from_dict({"dataset": {"name": "seg-glyphs"}})
    check_output_file(args.json)
    out = check_output_dir(args.out)
    summary = export_fss(load_seg_sets(config), out, per_class=args.per_class)
    counts = ", ".join(f"{len(v)} {k}" for k, v in summary.classes.items())
    console.print(f"wrote {summary.images} images with masks to {out} (classes: {counts}; split in {out / 'splits'})")
    write_json_option(args.json, summary.to_dict())
    return 0


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``segment train``, ``evaluate``, ``predict`` and ``export`` under ``sub``."""
    seg = add_command_group(sub, "segment", help="few-shot segmentation: meta-train, evaluate (mIoU, FB-IoU, AP50), export scenes",
                            description="Few-shot segmentation: masks for new classes from a few labelled images.")
    p = add_train_evaluate(seg, "segment", cmd_segment_train, cmd_segment_evaluate, "configs/seg-glyphs-panet.yaml",
                           "train.steps=200 eval.shots=[1]", "the test classes",
                           "mIoU, FB-IoU and AP50 on held-out classes (95%% CI over seeds)")
    p.add_argument("--episodes", type=positive_int, help="episodes per seed (default: the config's eval.episodes)")
    p.add_argument("--seeds", type=positive_int, default=5, help="episode sets, each from its own seed (default 5)")
    p.add_argument("--shots", type=positive_int, nargs="+", help="shot counts (default: the config's eval.shots)")
    p.add_argument("--ways", type=positive_int, nargs="+",
                   help="classes per episode, each with background (default: the config's eval.ways; 1 is the field's standard)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which classes (default test)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p = add_run_dir_command(seg, "predict", cmd_segment_predict,
                            help="masks, overlays and boxes for your images from a few labelled ones",
                            run_dir_help="a run directory written by metakit segment train")
    p.add_argument("--support", required=True, metavar="DIR", help="<n>.jpg images of one class with masks <n>.png, or one such folder per class (N-way)")
    p.add_argument("--query", required=True, metavar="PATH", help="an image, or a folder of .jpg/.png images")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the masks, overlays and boxes.json")
    p.add_argument("--threshold", type=int, metavar="N", help="support mask pixels >= N are foreground (for soft masks)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p = seg.add_parser("export", help="write the scenes in the fss-folder layout (ROOT/<class>/<n>.jpg + <n>.png)",
                       description=cmd_segment_export.__doc__)
    p.add_argument("config", nargs="?", help="a segmentation config whose dataset to export (default: seg-glyphs)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. dataset.max_classes=20")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder")
    p.add_argument("--per-class", type=positive_int, help="at most this many images per class (default all)")
    add_common_options(p)
    p.set_defaults(func=cmd_segment_export)
