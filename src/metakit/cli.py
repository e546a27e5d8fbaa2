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


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune a config's hyperparameters with Optuna (search space in its tune: section), optionally warm-started."""
    from metakit.hpo.space import load_tune_spec
    from metakit.hpo.tune import TuneOptions, tune

    spec = load_tune_spec(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"tune-{spec.base.get('name', 'run')}"
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
    _write_json_option(args.json, summary)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the datasets: source, license, local status."""
    from metakit.datasets import DATASETS

    table = Table(title="metakit datasets")
    table.add_column("name", no_wrap=True)
    for col in ("source", "license", "local status"):
        table.add_column(col, overflow="fold")
    rows = []
    for spec in DATASETS.values():
        try:
            status = spec.resolve("status")()
        except MetakitError as exc:
            status = str(exc)
        rows.append({"name": spec.name, "type": spec.task_type, "splits": list(spec.splits), "summary": spec.summary,
                     "source": spec.source, "license": spec.license, "status": status})
        table.add_row(spec.name, spec.source, spec.license, status)
    console.print(table)
    _write_json_option(args.json, rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train (configs) or reuse (run directories) several learners and evaluate them on the same episodes."""
    from metakit.compare import compare

    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    report = compare(args.items, out, shots=args.shots, episodes=args.episodes, overrides=args.set, progress=not args.no_progress,
                     ways=args.ways)
    from metakit.compare import compare_markdown

    console.print(compare_markdown(report))
    _write_json_option(args.json, report)
    console.print(f"table, plots and JSON in {out}")
    return 0


def cmd_cross_domain(args: argparse.Namespace) -> int:
    """Evaluate runs on other datasets' test splits: the cross-domain matrix."""
    from metakit.compare import cross_domain

    out = Path(args.out) if args.out else Path("runs") / f"cross-domain-{time.strftime('%Y%m%d-%H%M%S')}"
    report = cross_domain(args.runs, args.datasets, out, ways=args.ways, shots=args.shots, episodes=args.episodes,
                          progress=not args.no_progress)
    console.print((out / "cross_domain.md").read_text())
    _write_json_option(args.json, report)
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    """Task-incremental evaluation: accuracy matrix, average accuracy, backward transfer, forgetting."""
    from metakit.continual import continual, continual_markdown

    report = continual(args.run_dir, tasks=args.tasks, sequences=args.sequences, steps=args.steps, ways=args.ways,
                       shots=args.shots, out=args.out, progress=not args.no_progress)
    console.print(continual_markdown([report]))
    _write_json_option(args.json, report)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Re-run a published table row with its protocol and print ours beside the paper's number."""
    from metakit.config import load_config
    from metakit.evaluation import evaluate_run
    from metakit.reproduce import ROWS, config_path
    from metakit.training import train

    if args.list or not args.name:
        table = Table(title="metakit reproduce --list")
        table.add_column("name", no_wrap=True)
        for col in ("paper", "published", "expected time (2 CPU cores)"):
            table.add_column(col, overflow="fold")
        for row in ROWS.values():
            pub = f"{row.published}" + (f" ± {row.published_ci}" if row.published_ci else "")
            table.add_row(row.name, row.paper, pub, f"~{row.minutes_2cpu:.0f} min")
        console.print(table)
        return 0
    if args.name not in ROWS:
        from metakit.errors import unknown_name

        raise unknown_name("reproduction", args.name, ROWS)
    row = ROWS[args.name]
    overrides = row.train_overrides() + list(args.overrides)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    config = load_config(config_path(row), overrides)
    out = Path(args.out) if args.out else _default_out(row.name)
    train(config, out, resume=args.resume, progress=not args.no_progress)
    result = evaluate_run(str(out), episodes=args.episodes, progress=not args.no_progress, overrides=list(row.eval_overrides))
    r = result["results"][0]
    scale = 100 if row.metric == "accuracy" else 1
    ours = f"{scale * r['mean']:.2f} ± {scale * r['ci95']:.2f}"
    paper = f"{row.published}" + (f" ± {row.published_ci}" if row.published_ci else "")
    table = Table(title=f"{row.name}: {row.paper}")
    for col in ("setting", "metakit", "paper", "meta-training", "episodes"):
        table.add_column(col)
    table.add_row(f"{row.ways}-way {row.shots}-shot" if row.metric == "accuracy" else f"K={row.shots}", ours, paper,
                  f"{result['meta_training_seconds'] / 60:.1f} min, {config.train.steps} steps", str(r["episodes"]))
    console.print(table)
    if row.note:
        console.print(row.note)
    _write_json_option(args.json, {"row": row.name, "paper": row.paper, "published": row.published,
                                   "published_ci": row.published_ci, **result})
    return 0


def cmd_nas_search(args: argparse.Namespace) -> int:
    """Architecture search across tasks: MetaNAS (architecture weights meta-learned with the weights) or random search."""
    from metakit.nas.search import load_nas_spec, search

    spec = load_nas_spec(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_out(f"nas-{spec.base['name']}")
    summary = search(spec, out, resume=args.resume, progress=not args.no_progress)
    console.print((out / "search.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"search took {summary['search_seconds']:.1f} s; next: metakit nas evaluate {out}")
    _write_json_option(args.json, summary)
    return 0


def cmd_nas_evaluate(args: argparse.Namespace) -> int:
    """Meta-train the found architecture, Conv-4 and random architectures from scratch; one table."""
    from metakit.nas.evaluate import evaluate_search, evaluation_markdown

    report = evaluate_search(args.run_dir, only=args.only, episodes=args.episodes, progress=not args.no_progress)
    console.print(evaluation_markdown(report), markup=False, highlight=False)
    _write_json_option(args.json, report)
    return 0


def cmd_recsys_train(args: argparse.Namespace) -> int:
    """Fit MeLU and the recommendation baselines from a recsys YAML config (users as tasks)."""
    from metakit.recsys.config import load_recsys_config
    from metakit.recsys.experiment import train_recsys

    config = load_recsys_config(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_out(config.name)
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

    result = evaluate_recsys(args.run_dir, progress=not args.no_progress)
    console.print(results_table(result))
    _write_json_option(args.json, result)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
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

    p = sub.add_parser("compare", help="several learners on the same fixed test episodes: one table + plots",
                       description=cmd_compare.__doc__)
    p.add_argument("items", nargs="+", metavar="CONFIG_OR_RUN", help="YAML configs (trained first) or run directories")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20], help="shots to evaluate (default 1 5 10 20)")
    p.add_argument("--episodes", type=int, help="fixed test episodes per setting (default: first run's eval.episodes)")
    p.add_argument("--ways", type=int, nargs="+", help="ways to evaluate every run at (default: first run's eval.ways)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the configs that get trained")
    p.add_argument("--out", metavar="DIR", help="where runs, table and plots go (default runs/compare-TIMESTAMP)")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cross-domain", help="evaluate runs on other datasets: the cross-domain matrix",
                       description=cmd_cross_domain.__doc__)
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--datasets", nargs="+", required=True, metavar="NAME[:key=value,...]",
                   help="test datasets, e.g. glyphs omniglot:root=path/images_background.zip")
    p.add_argument("--ways", type=int, help="ways (default: each run's first eval ways)")
    p.add_argument("--shots", type=int, help="shots (default: each run's first eval shots)")
    p.add_argument("--episodes", type=int, help="fixed test episodes per cell (default: eval.episodes)")
    p.add_argument("--out", metavar="DIR", help="where the matrix goes (default runs/cross-domain-TIMESTAMP)")
    common(p)
    p.set_defaults(func=cmd_cross_domain)

    p = sub.add_parser("continual", help="task-incremental evaluation: accuracy matrix, ACC, BWT, forgetting",
                       description=cmd_continual.__doc__)
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--tasks", type=int, default=5, help="tasks per sequence (default 5)")
    p.add_argument("--sequences", type=int, default=20, help="sequences to average over (default 20)")
    p.add_argument("--steps", type=int, help="adaptation steps per task (default: the learner's own)")
    p.add_argument("--ways", type=int, help="ways (default: first eval ways)")
    p.add_argument("--shots", type=int, help="shots (default: first eval shots)")
    p.add_argument("--out", metavar="DIR", help="report directory (default RUN_DIR/continual)")
    common(p)
    p.set_defaults(func=cmd_continual)

    p = sub.add_parser("reproduce", help="re-run a published table row and print ours beside the paper's",
                       description=cmd_reproduce.__doc__)
    p.add_argument("name", nargs="?", help="row name (see --list)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--list", action="store_true", help="list the rows, their papers and expected run times")
    p.add_argument("--steps", type=int, help="meta-training steps (default: the row's budget)")
    p.add_argument("--episodes", type=int, help="fixed test episodes (default 1000)")
    p.add_argument("--out", metavar="DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    common(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("tune", help="Optuna study over a config's tune: search space (grid/random/TPE/CMA-ES, pruning, warm start)",
                       description=cmd_tune.__doc__)
    p.add_argument("config", help="YAML config with a tune: section (space, sampler, pruner, trials)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=200")
    p.add_argument("--trials", type=int, help="finished trials the study should reach (default: tune.trials)")
    p.add_argument("--sampler", help="grid, random, tpe or cmaes (default: tune.sampler, tpe)")
    p.add_argument("--pruner", help="none, median or hyperband (default: tune.pruner, median)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage shared by workers: sqlite:///f.db, postgresql://..., "
                   "or a journal file journal:PATH (default: sqlite file OUT/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the config's name)")
    p.add_argument("--out", metavar="DIR", help="where trials, best.yaml, tables and plots go (default runs/tune-NAME)")
    p.add_argument("--seed", type=int, help="sampler seed (default: tune.seed or the config's seed)")
    p.add_argument("--warm-start", metavar="FROM", help="portfolio file, or a storage of prior studies to learn from")
    p.add_argument("--warm-start-method", default="knn", help="knn (nearest tasks by meta-features), portfolio or surrogate")
    p.add_argument("--warm-start-size", type=int, default=5, help="configurations enqueued first (default 5)")
    p.add_argument("--metafeatures", default="numpy", choices=("numpy", "pymfe", "none"),
                   help="meta-feature backend for the task description stored with the study (default numpy)")
    p.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats in RDB storages (0: off)")
    common(p)
    p.set_defaults(func=cmd_tune)

    nas = sub.add_parser("nas", help="architecture search across tasks (MetaNAS): search, evaluate",
                         description="Search a cell architecture for fast adaptation, then compare it from scratch.")
    nas_sub = nas.add_subparsers(dest="nas_command", metavar="NAS_COMMAND")
    p = nas_sub.add_parser("search", help="search with MetaNAS or random search; writes genotype.json and its drawing",
                           description=cmd_nas_search.__doc__)
    p.add_argument("config", help="NAS config (supernet backbone + nas: section), e.g. configs/nas-glyphs-metanas.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.steps=100 nas.method=random")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/nas-NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    common(p)
    p.set_defaults(func=cmd_nas_search)
    p = nas_sub.add_parser("evaluate", help="found vs Conv-4 vs random architectures, meta-trained from scratch",
                           description=cmd_nas_evaluate.__doc__)
    p.add_argument("run_dir", help="a run directory written by metakit nas search")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train/evaluate only these models (found, conv4, random-N)")
    p.add_argument("--episodes", type=int, help="fixed test episodes (default: config eval.episodes)")
    common(p)
    p.set_defaults(func=cmd_nas_evaluate)
    nas.set_defaults(func=lambda _args: (nas.print_help(), 2)[1])

    p = sub.add_parser("recsys", help="cold-start recommendation: MeLU and baselines, users as tasks (train, evaluate)",
                       description="Cold-start recommendation with MeLU (Lee et al., KDD 2019) on MovieLens or synthetic ratings.")
    rsub = p.add_subparsers(dest="recsys_command", metavar="COMMAND", required=True)
    rp = rsub.add_parser("train", help="fit MeLU and the baselines from a recsys config", description=cmd_recsys_train.__doc__)
    rp.add_argument("config", help="recsys YAML config, e.g. configs/recsys-melu-synthetic.yaml")
    rp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. melu.epochs=10")
    rp.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP)")
    rp.add_argument("--evaluate", action="store_true", help="score every scenario after training")
    common(rp)
    rp.set_defaults(func=cmd_recsys_train)
    rp = rsub.add_parser("evaluate", help="score a recsys run: MAE, RMSE, nDCG per scenario ± 95%% CI",
                         description=cmd_recsys_evaluate.__doc__)
    rp.add_argument("run_dir", help="a run directory written by metakit recsys train")
    common(rp)
    rp.set_defaults(func=cmd_recsys_evaluate)

    p = sub.add_parser("datasets", help="list datasets: source, license, whether present locally", description=cmd_datasets.__doc__)
    p.add_argument("--json", metavar="PATH", help="also write the list as JSON to PATH")
    p.set_defaults(func=cmd_datasets)

    from metakit.rl.cli import add_rl_parser  # `metakit rl train|evaluate`; imports nothing heavy

    add_rl_parser(sub, common)
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
