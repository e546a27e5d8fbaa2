"""The ``metakit`` command line.

Every command validates its input first; a problem with the input prints one line
(``error: ...``) and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from metakit.errors import MetakitError

console = Console()
err_console = Console(stderr=True)

#: The main job: ProtoNet on the embedded Glyphs dataset, held-out Unicode blocks at test time.
QUICKSTART: dict[str, Any] = {
    "name": "quickstart",
    "seed": 0,
    "dataset": {"name": "glyphs", "split": "group", "image_size": 28},
    "backbone": {"name": "conv4"},
    "learner": {"name": "protonet"},
    "episodes": {"ways": 20, "shots": 1, "queries": 5, "meta_batch": 1},
    "eval": {"ways": [5], "shots": [1, 5], "queries": 15, "episodes": 1000, "val_episodes": 100},
    "train": {"steps": 1200, "lr": 0.001, "schedule": "cosine", "val_every": 300},
}


def _default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_json_option(path: str | None, data: Any) -> None:
    if path:
        from metakit.utils import write_json

        write_json(path, data)
        err_console.print(f"results written to {path}")


def _print_evaluation(result: dict[str, Any]) -> None:
    from metakit.reporting import results_table

    title = f"{result['learner']} on {result['dataset']} ({result['split']} split)"
    console.print(results_table(result["results"], title=title))
    if result.get("meta_training_seconds") is not None:
        console.print(f"meta-training time: {result['meta_training_seconds']:.1f} s ({result['threads']} thread(s))")


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Meta-train ProtoNet on Glyphs, evaluate 5-way 1-shot and 5-shot on held-out blocks."""
    from metakit.config import config_from_dict, merge, parse_overrides
    from metakit.evaluation import evaluate_run
    from metakit.training import train

    config = config_from_dict(merge(QUICKSTART, parse_overrides(args.overrides)))
    out = Path(args.out) if args.out else _default_out("quickstart")
    start = time.perf_counter()
    err_console.print(f"[bold]metakit quickstart[/]: ProtoNet + Conv-4 on Glyphs, run directory {out}")
    train(config, out, progress=not args.no_progress)
    result = evaluate_run(str(out), progress=not args.no_progress)
    _print_evaluation(result)
    _write_json_option(args.json, result)
    console.print(f"total time {time.perf_counter() - start:.0f} s; report: {out / 'report.md'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Meta-train from a YAML config."""
    from metakit import distributed as dist
    from metakit.config import load_config
    from metakit.evaluation import evaluate_run
    from metakit.training import train

    config = load_config(args.config, args.overrides)
    if dist.init_from_env() and not args.out:
        raise MetakitError("multi-process training needs an explicit --out DIR shared by every process.")
    out = Path(args.out) if args.out else _default_out(config.name)
    is_main = dist.is_main()
    try:
        summary = train(config, out, resume=args.resume, progress=not args.no_progress)
    finally:
        dist.shutdown()
    if not is_main:
        return 0
    metric = summary["metric"]
    best = summary[f"best_val_{metric}"]
    console.print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.1f} s; best val {metric} {best:.4f} "
        f"at step {summary['best_step']}; run directory {out}"
    )
    if args.evaluate:
        result = evaluate_run(str(out), progress=not args.no_progress)
        _print_evaluation(result)
        _write_json_option(args.json, result)
    console.print(f"report: {out / 'report.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained run on fixed test episodes."""
    from metakit.evaluation import evaluate_run

    result = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        checkpoint=args.checkpoint,
        split=args.split,
        progress=not args.no_progress,
        overrides=args.overrides,
    )
    _print_evaluation(result)
    _write_json_option(args.json, result)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the datasets: source, license, local status."""
    from metakit.datasets import DATASETS

    table = Table(title="metakit datasets")
    for col in ("name", "type", "splits", "source", "license", "local status"):
        table.add_column(col, overflow="fold")
    rows = []
    for spec in DATASETS.values():
        try:
            status = spec.resolve("status")()
        except MetakitError as exc:
            status = str(exc)
        rows.append({"name": spec.name, "type": spec.task_type, "splits": list(spec.splits), "summary": spec.summary,
                     "source": spec.source, "license": spec.license, "status": status})
        table.add_row(spec.name, spec.task_type, ", ".join(spec.splits) if spec.task_type == "classification" else "-",
                      spec.source, spec.license, status)
    console.print(table)
    _write_json_option(args.json, rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(prog="metakit", description="Meta-learning: train, evaluate and compare few-shot learners.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, json: bool = True) -> None:
        p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
        if json:
            p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")

    p = sub.add_parser("quickstart", help="meta-train ProtoNet on the embedded Glyphs dataset and evaluate it (~3 min)",
                       description=cmd_quickstart.__doc__)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=200")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/quickstart-TIMESTAMP)")
    common(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="meta-train from a YAML config", description=cmd_train.__doc__)
    p.add_argument("config", help="YAML config file, e.g. configs/glyphs-protonet.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=200 learner.distance=cosine")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split after training")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on fixed test episodes (mean ± 95%% CI)",
                       description=cmd_evaluate.__doc__)
    p.add_argument("run_dir", help="a run directory written by metakit train")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="evaluation-time overrides of the run's config, e.g. learner.eval_inner_steps=10")
    p.add_argument("--episodes", type=int, help="number of fixed test episodes (default: config eval.episodes, 1000)")
    p.add_argument("--ways", type=int, nargs="+", help="ways to evaluate (default: config eval.ways)")
    p.add_argument("--shots", type=int, nargs="+", help="shots to evaluate (default: config eval.shots)")
    p.add_argument("--queries", type=int, help="queries per class (default: config eval.queries)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p.add_argument("--split", default="test", help="class split to evaluate on (default test)")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("datasets", help="list datasets: source, license, whether present locally", description=cmd_datasets.__doc__)
    p.add_argument("--json", metavar="PATH", help="also write the list as JSON to PATH")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from metakit import __version__

        console.print(f"metakit {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except MetakitError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with --resume where the command supports it")
        return 130


if __name__ == "__main__":
    sys.exit(main())
