"""The ``metakit rl`` command group: ``metakit rl train CONFIG`` and ``metakit rl evaluate RUN_DIR``.

Registered into the main parser by :func:`add_rl_parser`; nothing heavy is imported until a
command runs, so ``metakit --help`` works without the ``rl`` extra, and a command run without it
prints one line saying to install it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def cmd_rl_train(args: argparse.Namespace) -> int:
    """Meta-train a policy (MAML-RL, RL² or PEARL) from a YAML config; optionally evaluate it."""
    from metakit.rl.config import load_rl_config
    from metakit.rl.tasks import require

    from metakit.cli import check_output_dir, check_output_file

    require("gymnasium")
    config = load_rl_config(args.config, args.overrides)
    out = check_output_dir(args.out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_file(args.json)
    from metakit.rl.training import train_rl

    summary = train_rl(config, out, resume=args.resume, progress=not args.no_progress)
    phases = ", ".join(f"{name} {p['iterations']} iterations ({p['train_seconds'] / 60:.1f} min, {p['env_steps']:,} env steps)"
                       for name, p in summary["phases"].items())
    console.print(f"trained {config.algorithm} on {config.env.name}: {phases}; {summary['threads']} thread(s); run directory {out}")
    if args.evaluate:
        _evaluate(out, args)
    console.print(f"report: {out / 'report.md'}")
    return 0


def cmd_rl_evaluate(args: argparse.Namespace) -> int:
    """Adaptation on held-out tasks: return before and after 1..k steps/episodes, mean ± 95% CI, with baselines."""
    from metakit.cli import check_output_file
    from metakit.rl.tasks import require

    require("gymnasium")
    check_output_file(args.json)
    _evaluate(Path(args.run_dir), args)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def _evaluate(run_dir: Path, args: argparse.Namespace) -> None:
    from metakit.rl.evaluation import evaluate_rl_run, markdown_table

    report = evaluate_rl_run(run_dir, tasks=getattr(args, "tasks", None), progress=not args.no_progress)
    console.print(f"{report['algorithm']} on {report['env']}: {report['tasks']} held-out tasks, step = {report['step_meaning']}")
    console.print(markdown_table(report), markup=False, soft_wrap=True)
    if args.json:
        from metakit.utils import write_json

        write_json(args.json, report)
        err_console.print(f"results written to {args.json}")


def add_rl_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``rl train`` and ``rl evaluate`` under ``sub``; ``common`` adds --no-progress and --json."""
    from metakit.cli import positive_int  # metakit.cli imports this module only inside build_parser

    rl = sub.add_parser("rl", help="meta-reinforcement learning: MAML-RL (ProMP), RL² and PEARL on gymnasium/MuJoCo/Meta-World tasks",
                        description="Meta-reinforcement learning (needs the rl extra: pip install 'metakit[rl]').")
    rl_sub = rl.add_subparsers(dest="rl_command", metavar="COMMAND")
    p = rl_sub.add_parser("train", help="meta-train from a YAML config (configs/rl-*.yaml)", description=cmd_rl_train.__doc__)
    p.add_argument("config", help="YAML config, e.g. configs/rl-point2d-mamlrl.yaml")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=50 maml.inner_lr=0.05")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoints")
    p.add_argument("--evaluate", action="store_true", help="evaluate on held-out tasks after training")
    common(p)
    p.set_defaults(func=cmd_rl_train)
    p = rl_sub.add_parser("evaluate", help="adaptation curves on held-out tasks with baselines (mean ± 95%% CI)",
                          description=cmd_rl_evaluate.__doc__)
    p.add_argument("run_dir", help="a run directory written by metakit rl train")
    p.add_argument("--tasks", type=positive_int, help="held-out tasks (default: config eval.tasks)")
    common(p)
    p.set_defaults(func=cmd_rl_evaluate)
    rl.set_defaults(func=lambda _args: (rl.print_help(), 2)[1])
