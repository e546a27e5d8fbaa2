"""The ``metakit`` command line.

Every command validates its input first; a problem with the input prints one line
(``error: ...``) and exits with status 2, never a traceback.

Exit statuses: 0 success; 2 bad input or an environment problem the user can fix (config, names,
paths, permissions, disk space, memory, missing or corrupt files); 1 an internal error, i.e. a bug in
metakit, reported in one line that asks for ``--debug`` and a report; 130 interrupted.
``--debug`` (before or after the command) or ``METAKIT_DEBUG=1`` prints the full traceback too.

The commands come from the plugins (:mod:`metakit.registry`): the classification ones are defined
here and named by :mod:`metakit.plugin`, each domain's in its own package (``metakit.rl.cli``, ...).
The building blocks every command uses, a domain's too (``add_config_command``, ``check_output_dir``,
...), live one floor down in :mod:`metakit.commands`, so domains never import this module.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.markup import escape as rich_escape
from rich.table import Table

from metakit.commands import (  # noqa: F401  (re-exported: the names domain commands used to import from here)
    add_command_group,
    add_common_options,
    add_config_command,
    add_run_dir_command,
    check_output_dir,
    check_output_file,
    console,
    default_out,
    err_console,
    positive_int,
    write_json_option,
)
from metakit.errors import MetakitError
from metakit.registry import add_commands


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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other metakit error."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: MESSAGE; see PROG --help`` and exit with status 2."""
        err_console.print(f"[bold red]error:[/] {rich_escape(message)}; see {rich_escape(self.prog)} --help",
                          highlight=False, soft_wrap=True)
        sys.exit(2)


def _evaluate(run_dir: str | os.PathLike, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    """Evaluate a run on fixed test episodes (``options`` go to ``evaluate_run``), print it, write ``--json``."""
    from metakit.evaluation import evaluate_run
    from metakit.reporting import results_table

    result = evaluate_run(str(run_dir), progress=not args.no_progress, **options)
    title = f"{result['learner']} on {result['dataset']} ({result['split']} split)"
    console.print(results_table(result["results"], title=title))
    if result.get("meta_training_seconds") is not None:
        console.print(f"meta-training time: {result['meta_training_seconds']:.1f} s ({result['threads']} thread(s))")
    write_json_option(args.json, result)
    return result


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Meta-train ProtoNet on Glyphs, evaluate 5-way 1-shot and 5-shot on held-out blocks."""
    from metakit.config import config_from_dict, merge, parse_overrides
    from metakit.training import train

    config = config_from_dict(merge(QUICKSTART, parse_overrides(args.overrides)))
    out = check_output_dir(args.out or default_out("quickstart"))
    check_output_file(args.json)
    start = time.perf_counter()
    err_console.print(f"[bold]metakit quickstart[/]: ProtoNet + Conv-4 on Glyphs, run directory {out}")
    train(config, out, progress=not args.no_progress)
    _evaluate(out, args)
    console.print(f"total time {time.perf_counter() - start:.0f} s; report: {out / 'report.md'}")
    return 0


def _task_type(dataset: str) -> str | None:
    from metakit.datasets import get_dataset

    try:
        return get_dataset(dataset).task_type
    except MetakitError:
        return None


def _other_domain(path: str, overrides: Sequence[str], dataset: str | None) -> str | None:
    """The command that trains ``path`` when it is another domain's config (``metakit train`` is classification's)."""
    from metakit.config import load_config
    from metakit.registry import plugins

    for plugin in plugins().values():
        command = next(iter(plugin.commands), None)
        if plugin.name == "classification" or command is None:
            continue
        if dataset is not None:
            # Only a dataset of the domain's own task type (segmentation masks) needs its command:
            # a plugin's class datasets train with `metakit train`, and ratings datasets have their own message.
            if dataset in plugin.datasets and _task_type(dataset) not in ("classification", "regression", "recommendation"):
                return f"metakit {command} train"
            continue
        if plugin.config_root:
            try:
                load_config(path, overrides, domain=plugin.name)
            except MetakitError:
                continue
            return f"metakit {command} train"
    return None


def cmd_train(args: argparse.Namespace) -> int:
    """Meta-train from a YAML config."""
    from metakit import distributed as dist
    from metakit.config import load_config
    from metakit.training import train

    try:
        config = load_config(args.config, args.overrides)
    except MetakitError:
        # An rl or recsys file fails the classification schema; say which command it is for.
        command = _other_domain(args.config, args.overrides, None)
        if command is None:
            raise
        raise MetakitError(f"{args.config} is not a classification config; train it with `{command} {args.config}`.") from None
    command = _other_domain(args.config, args.overrides, config.dataset.name)
    if command is not None:  # a segmentation file passes the shared schema but not the classification learners
        raise MetakitError(f"{args.config} uses dataset {config.dataset.name!r}; train it with `{command} {args.config}`.")
    if dist.init_from_env() and not args.out:
        raise MetakitError("multi-process training needs an explicit --out DIR shared by every process.")
    out = check_output_dir(args.out or default_out(config.name))
    check_output_file(args.json)
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
        _evaluate(out, args)
    console.print(f"report: {out / 'report.md'}")
    return 0


def _on_run_dir(command: str, args: argparse.Namespace) -> Any:
    """The hook of ``args.run_dir``'s domain for ``metakit COMMAND RUN_DIR`` (one line if it has none)."""
    from metakit.registry import run_hook
    from metakit.runs import run_domain

    return run_hook(run_domain(args.run_dir), command, args.run_dir)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained run of any domain (the one recorded in the run directory)."""
    return _on_run_dir("evaluate", args)(args)


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild a run's report.md from the files saved in its run directory (any domain)."""
    from metakit.runs import write_report

    check_output_file(args.json)
    build = _on_run_dir("report", args)
    report = build(args.run_dir)
    write_report(args.run_dir, report)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    write_json_option(args.json, {"run": str(args.run_dir), "files": sorted([*report.text, *report.data, *report.plots])})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Adapt a trained run to your classes and label your items (the run's domain decides how; see below)."""
    return _on_run_dir("predict", args)(args)


def evaluate_classification(args: argparse.Namespace) -> int:
    """Evaluate a trained classification run on fixed test episodes."""
    check_output_file(args.json)
    _evaluate(args.run_dir, args, episodes=args.episodes, ways=args.ways, shots=args.shots, queries=args.queries,
              checkpoint=args.checkpoint, split=args.split, overrides=args.overrides)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def predict_classification(args: argparse.Namespace) -> int:
    """Adapt a trained run to your classes (the support set) and label your items (the query set).

    Images: --support is a folder SUPPORT/<class>/<image>, --query an image or a folder of images
    (searched recursively). Text runs: both are CSV or JSONL files (support: text and label
    columns; query: a text column). Items are prepared as the run's training items were. One row
    per query item goes to --out (CSV), the first rows to the terminal.
    """
    from metakit.predict import (
        UNKNOWN, check_min_confidence, list_images, load, prediction_rows, read_text_table, write_csv,
    )
    from metakit.utils import set_threads

    check_min_confidence(args.min_confidence)
    if args.top_k < 1:
        raise MetakitError(f"--top-k must be >= 1, got {args.top_k}.")
    if args.batch_size < 1:
        raise MetakitError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.threads is not None and args.threads < 1:
        raise MetakitError(f"--threads must be >= 1, got {args.threads}.")
    check_output_file(args.out, "--out")
    check_output_file(args.json)
    model = load(args.run_dir, args.checkpoint, calibrate=args.calibrate, batch_size=args.batch_size,
                 progress=not args.no_progress)
    threads = set_threads(args.threads if args.threads is not None else model.config.train.threads)
    start = time.perf_counter()
    if model.spec.kind == "image":
        model.fit_folder(args.support)
        files = list_images(args.query)
        items, column = [str(f) for f in files], "file"
        predictions = model.predict_top(files, args.top_k, args.min_confidence)
    elif model.spec.kind == "text":
        model.fit_table(args.support, args.text_column, args.label_column)
        items, _ = read_text_table(args.query, args.text_column, None)
        column = "text"
        predictions = model.predict_top(items, args.top_k, args.min_confidence)
    else:
        raise MetakitError(
            f"{args.run_dir} was trained on dataset {model.spec.dataset!r}, whose items are tensors rather than images "
            f"or texts; label tensors from Python: metakit.load(RUN_DIR).fit(x, labels).predict(query_x)."
        )
    seconds = time.perf_counter() - start
    rows = prediction_rows(items, predictions, column, args.top_k)
    write_csv(args.out, rows)

    table = Table(title=f"{args.run_dir}: {len(rows):,} items, {model.ways} classes")
    for key in rows[0]:
        table.add_column(key, overflow="fold", no_wrap=key == column or key.startswith("probability"))
    for row in rows[: args.show]:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else rich_escape(str(v)) for v in row.values()))
    console.print(table)
    if len(rows) > args.show:
        console.print(f"... {len(rows) - args.show:,} more rows in {args.out}")
    unknown = sum(p.label == UNKNOWN for p in predictions)
    if args.min_confidence is not None:
        console.print(f"{unknown:,} item(s) below --min-confidence {args.min_confidence} labelled {UNKNOWN!r}")
    if model.calibration:
        c = model.calibration
        console.print(f"temperature {c['temperature']:.3f} fitted on {c['episodes']} validation episodes "
                      f"(NLL {c['nll_before']:.3f} -> {c['nll_after']:.3f})")
    if model.batch_dependent and len(rows) > args.batch_size:
        err_console.print(f"note: this learner's predictions depend on the query batch (as in evaluation, where an "
                          f"episode's queries are one batch); items were labelled in batches of at most {args.batch_size}.")
    console.print(f"adapted to {model.ways} classes and labelled {len(rows):,} items in {seconds:.2f} s "
                  f"({len(rows) / max(seconds, 1e-9):,.0f} items/s, {threads} thread(s)); predictions: {args.out}")
    write_json_option(args.json, {
        "run": str(args.run_dir), "checkpoint": args.checkpoint, "support": str(args.support), "query": str(args.query),
        "classes": model.classes, "temperature": model.temperature, "calibration": model.calibration,
        "min_confidence": args.min_confidence, "top_k": args.top_k, "items": len(rows), "unknown": unknown,
        "seconds": seconds, "threads": threads, "predictions": rows,
    })
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a web page (and a JSON API) that adapts a trained run to classes you upload and labels new items."""
    from metakit.serve import ServeLimits

    limits = ServeLimits(max_upload_mb=args.max_upload_mb, max_files=args.max_files, max_megapixels=args.max_megapixels)

    def announce(line: str) -> None:
        # The URL goes to stdout (scripts read it, e.g. with --port 0); the warning to stderr.
        target = err_console if line.startswith("warning:") else console
        target.print(line, markup=False, highlight=False, soft_wrap=True)
        target.file.flush()

    serve = _on_run_dir("serve", args)  # the run's domain decides what the page shows
    return serve(args.run_dir, host=args.host, port=args.port, checkpoint=args.checkpoint, limits=limits,
                 announce=announce)


def cmd_datasets_export(args: argparse.Namespace) -> int:
    """Write a few-shot task of an image dataset as PNG files: DIR/support/<class>/, DIR/query/, DIR/query_labels.csv."""
    from metakit.config import parse_overrides
    from metakit.datasets.export import export_task

    if not args.name:
        raise MetakitError("metakit datasets export needs a dataset name, e.g. metakit datasets export glyphs --out demo.")
    if not args.out:
        raise MetakitError("metakit datasets export needs --out DIR, a new folder for the images.")
    check_output_dir(args.out)
    check_output_file(args.json)
    summary = export_task(args.name, args.out, classes=args.classes, shots=args.shots, queries=args.queries,
                          split=args.split, seed=args.seed, options=parse_overrides(args.options))
    console.print(
        f"wrote {len(summary.classes)} classes of {summary.dataset} ({summary.split} split): {summary.shots} support "
        f"image(s) each in {summary.out / 'support'}, {summary.queries * len(summary.classes)} query images in "
        f"{summary.out / 'query'}, their true labels in {summary.out / 'query_labels.csv'}"
    )
    console.print(f"next: metakit predict RUN_DIR --support {summary.out / 'support'} --query {summary.out / 'query'}")
    write_json_option(args.json, summary.to_dict())
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the datasets: source, license, local status; or export a task of one as image files."""
    from metakit.datasets import DATASETS, get_dataset
    from metakit.registry import names

    if args.action == "export":
        return cmd_datasets_export(args)
    check_output_file(args.json)
    for name in names("dataset"):  # the plugins' datasets join the table when first asked for
        get_dataset(name)
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
    write_json_option(args.json, rows)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the installed plugins (metakit's domains and outside packages) and what each one adds."""
    from metakit.registry import KINDS, plugins

    check_output_file(args.json)
    table = Table(title="metakit plugins")
    for col in ("plugin", "adds", "summary"):
        table.add_column(col, overflow="fold")
    rows = []
    for plugin in plugins().values():
        adds = {"commands": list(plugin.commands), **{f"{k}s": list(plugin.targets(k)) for k in KINDS}}
        rows.append({"name": plugin.name, "summary": plugin.summary, **adds, "config_section": plugin.config_section})
        shown = [f"{what}: {', '.join(names)}" for what, names in adds.items() if names]
        if plugin.config_section:
            shown.append(f"config section: {plugin.config_section}")
        table.add_row(plugin.name, "; ".join(shown), plugin.summary)
    console.print(table)
    write_json_option(args.json, rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train (configs) or reuse (run directories) several learners and evaluate them on the same episodes."""
    from metakit.compare import compare

    out = check_output_dir(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_file(args.json)
    report = compare(args.items, out, shots=args.shots, episodes=args.episodes, overrides=args.set, progress=not args.no_progress,
                     ways=args.ways)
    from metakit.compare import compare_markdown

    console.print(compare_markdown(report))
    write_json_option(args.json, report)
    console.print(f"table, plots and JSON in {out}")
    return 0


def cmd_cross_domain(args: argparse.Namespace) -> int:
    """Evaluate runs on other datasets' test splits: the cross-domain matrix."""
    from metakit.compare import cross_domain

    out = check_output_dir(args.out or Path("runs") / f"cross-domain-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_file(args.json)
    report = cross_domain(args.runs, args.datasets, out, ways=args.ways, shots=args.shots, episodes=args.episodes,
                          progress=not args.no_progress)
    console.print((out / "cross_domain.md").read_text())
    write_json_option(args.json, report)
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    """Task-incremental evaluation: accuracy matrix, average accuracy, backward transfer, forgetting."""
    from metakit.continual import continual, continual_markdown

    if args.out:
        check_output_dir(args.out)
    check_output_file(args.json)
    report = continual(args.run_dir, tasks=args.tasks, sequences=args.sequences, steps=args.steps, ways=args.ways,
                       shots=args.shots, out=args.out, progress=not args.no_progress)
    console.print(continual_markdown([report]))
    write_json_option(args.json, report)
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
    out = check_output_dir(args.out or default_out(row.name))
    check_output_file(args.json)
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
    write_json_option(args.json, {"row": row.name, "paper": row.paper, "published": row.published,
                                   "published_ci": row.published_ci, **result})
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command: the plugins' (:mod:`metakit.registry`) and ``--debug`` on each."""
    parser = _Parser(prog="metakit", description="Meta-learning: train, evaluate and compare few-shot learners.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of any error (also METAKIT_DEBUG=1), for bug reports")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    _add_debug_everywhere(parser)
    return parser


def _add_one_setting(p: argparse.ArgumentParser) -> None:
    """``--ways`` and ``--shots`` of a command that evaluates one setting (cross-domain, continual)."""
    p.add_argument("--ways", type=positive_int, help="ways (default: each run's first eval ways)")
    p.add_argument("--shots", type=positive_int, help="shots (default: each run's first eval shots)")


def add_core_commands(sub: argparse._SubParsersAction) -> None:
    """Add the classification commands (train, evaluate, predict, ...), which the core plugin declares."""
    p = sub.add_parser("quickstart", help="meta-train ProtoNet on the embedded Glyphs dataset and evaluate it (~3 min)",
                       description=cmd_quickstart.__doc__)
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.steps=200")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/quickstart-TIMESTAMP)")
    add_common_options(p)
    p.set_defaults(func=cmd_quickstart)

    add_config_command(sub, "train", cmd_train, help="meta-train from a YAML config",
                       config_help="YAML config file, e.g. configs/glyphs-protonet.yaml",
                       overrides_help="config overrides, e.g. train.steps=200 learner.distance=cosine",
                       resume="continue the run in --out from its last checkpoint",
                       evaluate="evaluate on the test split after training")

    p = sub.add_parser("evaluate", help="evaluate a trained run (classification: fixed test episodes, mean ± 95%% CI)",
                       description=cmd_evaluate.__doc__ + " The options below are classification's; other domains "
                       "evaluate with their own settings.")
    p.add_argument("run_dir", help="a run directory (metakit train, rl train, recsys train, nas search)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="evaluation-time overrides of the run's config, e.g. learner.eval_inner_steps=10")
    p.add_argument("--episodes", type=positive_int, help="number of fixed test episodes (default: config eval.episodes, 1000)")
    p.add_argument("--ways", type=positive_int, nargs="+", help="ways to evaluate (default: config eval.ways)")
    p.add_argument("--shots", type=positive_int, nargs="+", help="shots to evaluate (default: config eval.shots)")
    p.add_argument("--queries", type=positive_int, help="queries per class (default: config eval.queries)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p.add_argument("--split", default="test", help="class split to evaluate on (default test)")
    add_common_options(p)
    p.set_defaults(func=cmd_evaluate)

    add_run_dir_command(sub, "report", cmd_report, help="rebuild a run's report.md from its saved files (any domain)",
                        run_dir_help="a run directory (metakit train, rl train, recsys train, ...)")

    p = sub.add_parser("predict", help="adapt a trained run to your classes and label your images or texts (CSV out)",
                       description=predict_classification.__doc__)
    p.add_argument("run_dir", help="a run directory written by metakit train")
    p.add_argument("--support", required=True, metavar="PATH",
                   help="labelled examples: a folder PATH/<class>/<image>, or a CSV/JSONL file for text runs")
    p.add_argument("--query", required=True, metavar="PATH",
                   help="items to label: an image or a folder of images (recursive), or a CSV/JSONL file for text runs")
    p.add_argument("--out", default="predictions.csv", metavar="CSV", help="where the predictions go (default predictions.csv)")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="also list the 2nd..K-th most probable labels (default 1)")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="label an item 'unknown' when its top probability is below P (0..1)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a softmax temperature on the run's validation episodes first (probabilities mean what they say)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p.add_argument("--batch-size", type=int, default=512, metavar="B", help="query items per forward pass (default 512)")
    p.add_argument("--threads", type=int, help="torch threads (default: the run's train.threads)")
    p.add_argument("--text-column", default="text", help="text runs: the column holding the sentences (default text)")
    p.add_argument("--label-column", default="label", help="text runs: the support file's label column (default label)")
    p.add_argument("--show", type=int, default=20, metavar="N", help="rows printed in the terminal (default 20)")
    add_common_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="a web page (and JSON API) to label images or texts with a trained run",
                       description=cmd_serve.__doc__)
    p.add_argument("run_dir", help="a run directory written by metakit train (an image or text run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB", help="largest request, in MB (default 20)")
    p.add_argument("--max-files", type=int, default=200, metavar="N",
                   help="most support + query items in one request (default 200)")
    p.add_argument("--max-megapixels", type=float, default=40.0, metavar="MP",
                   help="largest image, in megapixels; larger ones are refused unread (default 40)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("compare", help="several learners on the same fixed test episodes: one table + plots",
                       description=cmd_compare.__doc__)
    p.add_argument("items", nargs="+", metavar="CONFIG_OR_RUN", help="YAML configs (trained first) or run directories")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5, 10, 20], help="shots to evaluate (default 1 5 10 20)")
    p.add_argument("--episodes", type=positive_int, help="fixed test episodes per setting (default: first run's eval.episodes)")
    p.add_argument("--ways", type=positive_int, nargs="+", help="ways to evaluate every run at (default: first run's eval.ways)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the configs that get trained")
    p.add_argument("--out", metavar="DIR", help="where runs, table and plots go (default runs/compare-TIMESTAMP)")
    add_common_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cross-domain", help="evaluate runs on other datasets: the cross-domain matrix",
                       description=cmd_cross_domain.__doc__)
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--datasets", nargs="+", required=True, metavar="NAME[:key=value,...]",
                   help="test datasets, e.g. glyphs omniglot:root=path/images_background.zip")
    _add_one_setting(p)
    p.add_argument("--episodes", type=positive_int, help="fixed test episodes per cell (default: eval.episodes)")
    p.add_argument("--out", metavar="DIR", help="where the matrix goes (default runs/cross-domain-TIMESTAMP)")
    add_common_options(p)
    p.set_defaults(func=cmd_cross_domain)

    p = add_run_dir_command(sub, "continual", cmd_continual, run_dir_help="a run directory",
                            help="task-incremental evaluation: accuracy matrix, ACC, BWT, forgetting")
    p.add_argument("--tasks", type=int, default=5, help="tasks per sequence (default 5)")
    p.add_argument("--sequences", type=positive_int, default=20, help="sequences to average over (default 20)")
    p.add_argument("--steps", type=int, help="adaptation steps per task (default: the learner's own)")
    _add_one_setting(p)
    p.add_argument("--out", metavar="DIR", help="report directory (default RUN_DIR/continual)")

    p = sub.add_parser("reproduce", help="re-run a published table row and print ours beside the paper's",
                       description=cmd_reproduce.__doc__)
    p.add_argument("name", nargs="?", help="row name (see --list)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--list", action="store_true", help="list the rows, their papers and expected run times")
    p.add_argument("--steps", type=positive_int, help="meta-training steps (default: the row's budget)")
    p.add_argument("--episodes", type=positive_int, help="fixed test episodes (default 1000)")
    p.add_argument("--out", metavar="DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_common_options(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("datasets", help="list datasets (source, license, local status), or export a task as images",
                       description=cmd_datasets.__doc__)
    p.add_argument("action", nargs="?", choices=("export",),
                   help="export: write a few-shot task of an image dataset as PNG files for metakit predict")
    p.add_argument("name", nargs="?", help="export: the dataset, e.g. glyphs")
    p.add_argument("options", nargs="*", metavar="KEY=VALUE", help="export: dataset options, e.g. image_size=28")
    p.add_argument("--out", metavar="DIR", help="export: a new folder for support/, query/ and query_labels.csv")
    p.add_argument("--classes", type=int, default=5, help="export: classes in the task (default 5)")
    p.add_argument("--shots", type=int, default=5, help="export: support images per class (default 5)")
    p.add_argument("--queries", type=int, default=5, help="export: query images per class (default 5)")
    p.add_argument("--split", default="test", help="export: train, val or test classes (default test: unseen in training)")
    p.add_argument("--seed", type=int, default=0, help="export: which task (classes, images, query order; default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the list (or the export summary) as JSON to PATH")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("plugins", help="list the installed plugins and what each adds (commands, learners, ...)",
                       description=cmd_plugins.__doc__)
    p.add_argument("--json", metavar="PATH", help="also write the list as JSON to PATH")
    p.set_defaults(func=cmd_plugins)


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after any (sub)command too, as people add it at the end of a failing command."""
    for action in parser._actions:  # argparse exposes subcommands only through its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                if "--debug" not in sub._option_string_actions:
                    # SUPPRESS: the subcommand's default must not reset a --debug given before it.
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="print the full traceback of any error, for bug reports")
                _add_debug_everywhere(sub)


def _debug_wanted(args: argparse.Namespace | None) -> bool:
    flag = os.environ.get("METAKIT_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or flag not in ("", "0", "false", "no", "off")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:297] + "..."


def os_error_message(exc: OSError) -> str:
    """One line for an :class:`OSError` (writing a run dir, a cache, a result): the path, the reason, the fix."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or _first_line(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free some disk space and rerun (--resume continues a run where the command has it)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions or choose another path (e.g. --out)"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a file and a folder clash on that path; choose another path (e.g. --out)"
    else:
        fix = "check the path and rerun"
    return f"cannot write or read {paths}: {reason}; {fix}." if paths else f"{reason}; {fix}."


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring for their meaning)."""
    try:
        parser = build_parser()
    except MetakitError as exc:  # a plugin that does not load: no command can run, but say why in one line
        _error(rich_escape(str(exc)))
        return 2
    args = parser.parse_args(argv)
    if args.version:
        from metakit import __version__

        console.print(f"metakit {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = _debug_wanted(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with --resume where the command supports it")
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes a single line
        if debug:
            traceback.print_exc()
        if isinstance(exc, MetakitError):
            _error(rich_escape(str(exc)))
            return 2
        if isinstance(exc, OSError):
            _error(rich_escape(os_error_message(exc)))
            return 2
        if isinstance(exc, MemoryError):
            _error("out of memory; lower the sizes in the config (e.g. episodes.meta_batch, dataset.image_size, "
                   "eval.queries) or use a machine with more memory")
            return 2
        # Anything else is a bug, not bad input: say so, and how to get what a bug report needs.
        _error(rich_escape(f"internal error ({type(exc).__name__}: {_first_line(exc)}); "
                           f"rerun with --debug for the traceback and report it"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
