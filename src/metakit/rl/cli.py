"""The ``metakit rl`` command group: ``metakit rl train CONFIG`` and ``metakit rl evaluate RUN_DIR``.

Added to the ``metakit`` parser through the rl plugin (:mod:`metakit.rl.plugin`), which names
:func:`add_rl_parser`; nothing heavy is imported until a command runs, so ``metakit --help``
works without the ``rl`` extra, and a command run without it prints one line saying to install it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metakit.commands import (
    add_command_group, add_train_evaluate, check_output_dir, check_output_file, console,
    default_out, positive_int, write_json_option,
)


def cmd_rl_train(args: argparse.Namespace) -> int:
    """Meta-train a policy (MAML-RL, RL² or PEARL) from a YAML config; optionally evaluate it."""
    from metakit.rl.config import load_rl_config
    from metakit.rl.tasks import require

    require("gymnasium")
    config = load_rl_config(args.config, args.overrides)
    out = check_output_dir(args.out or default_out(config.name))
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
    write_json_option(args.json, report)


def add_rl_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``rl train`` and ``rl evaluate`` under ``sub``."""
    rl_sub = add_command_group(sub, "rl", help="meta-reinforcement learning: MAML-RL (ProMP), RL² and PEARL on "
                               "gymnasium/MuJoCo/Meta-World tasks",
                               description="Meta-reinforcement learning (needs the rl extra: pip install 'metakit[rl]').")
    p = add_train_evaluate(rl_sub, "rl", cmd_rl_train, cmd_rl_evaluate, "configs/rl-point2d-mamlrl.yaml",
                           "train.iterations=50 maml.inner_lr=0.05", "held-out tasks",
                           "adaptation curves on held-out tasks with baselines (mean ± 95%% CI)")
    p.add_argument("--tasks", type=positive_int, help="held-out tasks (default: config eval.tasks)")
