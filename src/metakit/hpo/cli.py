"""The ``metakit tune`` command: an Optuna study over the search space in a config's ``tune:`` section.

Added to the ``metakit`` parser through the hpo plugin (:mod:`metakit.hpo.plugin`); Optuna is
imported only when the command runs, so the parser works without the ``hpo`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metakit.commands import (
    add_config_command, check_output_dir, check_output_file, console, err_console, positive_int, write_json_option,
)
from metakit.errors import MetakitError


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune a config's hyperparameters with Optuna (search space in its tune: section), optionally warm-started."""
    try:
        import optuna  # noqa: F401 - imported here only to fail in one line without the extra
    except ImportError:
        raise MetakitError("metakit tune needs Optuna (the hpo extra); install it with: pip install 'metakit[hpo]'") from None
    from metakit.hpo.space import load_tune_spec
    from metakit.hpo.tune import TuneOptions, tune

    spec = load_tune_spec(args.config, args.overrides)
    out = check_output_dir(args.out or Path("runs") / f"tune-{spec.base.get('name', 'run')}")
    check_output_file(args.json)
    options = TuneOptions(
        trials=args.trials, sampler=args.sampler, pruner=args.pruner, storage=args.storage, study=args.study,
        seed=args.seed, warm_start=args.warm_start, warm_start_method=args.warm_start_method,
        warm_start_size=args.warm_start_size, metafeatures=args.metafeatures, heartbeat=args.heartbeat,
        progress=not args.no_progress,
    )
    try:
        summary = tune(spec, out, options)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; results so far in {out}; run the same command again to resume the study")
        return 130
    counts = ", ".join(f"{v} {k.lower()}" for k, v in summary["counts"].items())
    if summary["best_trial"] is None:
        console.print(f"study {summary['study']}: no completed trial ({counts}); see {out / 'trials.md'}")
        return 1
    console.print(
        f"study {summary['study']}: {counts}; best trial {summary['best_trial']} {summary['metric']} "
        f"{summary['best_value']:.4f} {summary['best_params']}"
    )
    console.print(f"best config: {out / 'best.yaml'}; trials, plots and report in {out}")
    write_json_option(args.json, summary)
    return 0


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``tune`` under ``sub``."""
    p = add_config_command(sub, "tune", cmd_tune,
                           help="Optuna study over a config's tune: search space (grid/random/TPE/CMA-ES, pruning, warm start)",
                           config_help="YAML config with a tune: section (space, sampler, pruner, trials)",
                           overrides_help="config overrides, e.g. train.steps=200",
                           out_help="where trials, best.yaml, tables and plots go (default runs/tune-NAME)")
    p.add_argument("--trials", type=positive_int, help="finished trials the study should reach (default: tune.trials)")
    p.add_argument("--sampler", help="grid, random, tpe or cmaes (default: tune.sampler, tpe)")
    p.add_argument("--pruner", help="none, median or hyperband (default: tune.pruner, median)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage shared by workers: sqlite:///f.db, postgresql://..., "
                   "or a journal file journal:PATH (default: sqlite file OUT/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the config's name)")
    p.add_argument("--seed", type=int, help="sampler seed (default: tune.seed or the config's seed)")
    p.add_argument("--warm-start", metavar="FROM", help="portfolio file, or a storage of prior studies to learn from")
    p.add_argument("--warm-start-method", default="knn", help="knn (nearest tasks by meta-features), portfolio or surrogate")
    p.add_argument("--warm-start-size", type=positive_int, default=5, help="configurations enqueued first (default 5)")
    p.add_argument("--metafeatures", default="numpy", choices=("numpy", "pymfe", "none"),
                   help="meta-feature backend for the task description stored with the study (default numpy)")
    p.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats in RDB storages (0: off)")
