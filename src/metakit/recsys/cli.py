"""The ``metakit recsys`` command group: ``metakit recsys train CONFIG`` and ``metakit recsys evaluate RUN_DIR``.

Added to the ``metakit`` parser through the recsys plugin (:mod:`metakit.recsys.plugin`); the
experiment is imported only when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metakit.commands import (
    add_command_group, add_config_command, add_run_dir_command, check_output_dir, check_output_file, console,
    default_out, write_json_option,
)


def cmd_recsys_train(args: argparse.Namespace) -> int:
    """Fit MeLU and the recommendation baselines from a recsys YAML config (users as tasks)."""
    from metakit.recsys.config import load_recsys_config
    from metakit.recsys.experiment import train_recsys

    config = load_recsys_config(args.config, args.overrides)
    out = check_output_dir(args.out or default_out(config.name))
    check_output_file(args.json)
    summary = train_recsys(config, out, progress=not args.no_progress)
    console.print(f"{summary['data']}; fitted {len(summary['methods'])} methods in {summary['train_seconds']:.1f} s; "
                  f"run directory {out}")
    if args.evaluate:
        return cmd_recsys_evaluate(argparse.Namespace(run_dir=str(out), json=args.json, no_progress=args.no_progress))
    console.print(f"report: {out / 'report.md'}")
    return 0


def cmd_recsys_evaluate(args: argparse.Namespace) -> int:
    """Score a recsys run on its scenarios: MAE, RMSE, nDCG@k per method, ± 95% CI over users."""
    from metakit.recsys.experiment import evaluate_recsys
    from metakit.recsys.report import results_table

    check_output_file(args.json)
    result = evaluate_recsys(args.run_dir, progress=not args.no_progress)
    console.print(results_table(result))
    write_json_option(args.json, result)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def add_recsys_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``recsys train`` and ``recsys evaluate`` under ``sub``."""
    rsub = add_command_group(sub, "recsys", help="cold-start recommendation: MeLU and baselines, users as tasks (train, evaluate)",
                             description="Cold-start recommendation with MeLU (Lee et al., KDD 2019) on MovieLens or "
                             "synthetic ratings.")
    add_config_command(rsub, "train", cmd_recsys_train, help="fit MeLU and the baselines from a recsys config",
                       config_help="recsys YAML config, e.g. configs/recsys-melu-synthetic.yaml",
                       overrides_help="config overrides, e.g. melu.epochs=10", evaluate="score every scenario after training")
    add_run_dir_command(rsub, "evaluate", cmd_recsys_evaluate, help="score a recsys run: MAE, RMSE, nDCG per scenario ± 95%% CI",
                        run_dir_help="a run directory written by metakit recsys train")
