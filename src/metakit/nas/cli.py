"""The ``metakit nas`` command group: ``metakit nas search CONFIG`` and ``metakit nas evaluate RUN_DIR``.

Added to the ``metakit`` parser through the nas plugin (:mod:`metakit.nas.plugin`); the search
and its evaluation are imported only when a command runs.
"""

from __future__ import annotations

import argparse

from metakit.commands import (
    add_command_group, add_config_command, add_run_dir_command, check_output_dir, check_output_file, console,
    default_out, positive_int, write_json_option,
)


def cmd_nas_search(args: argparse.Namespace) -> int:
    """Architecture search across tasks: MetaNAS (architecture weights meta-learned with the weights) or random search."""
    from metakit.nas.search import load_nas_spec, search

    spec = load_nas_spec(args.config, args.overrides)
    out = check_output_dir(args.out or default_out(f"nas-{spec.base['name']}"))
    check_output_file(args.json)
    summary = search(spec, out, resume=args.resume, progress=not args.no_progress)
    console.print((out / "search.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"search took {summary['search_seconds']:.1f} s; next: metakit nas evaluate {out}")
    write_json_option(args.json, summary)
    return 0


def cmd_nas_evaluate(args: argparse.Namespace) -> int:
    """Meta-train the found architecture, Conv-4 and random architectures from scratch; one table."""
    from metakit.nas.evaluate import evaluate_search, evaluation_markdown

    check_output_file(args.json)
    report = evaluate_search(args.run_dir, only=getattr(args, "only", None), episodes=args.episodes, progress=not args.no_progress)
    console.print(evaluation_markdown(report), markup=False, highlight=False)
    write_json_option(args.json, report)
    return 0


def add_nas_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``nas search`` and ``nas evaluate`` under ``sub``."""
    nas_sub = add_command_group(sub, "nas", help="architecture search across tasks (MetaNAS): search, evaluate",
                                description="Search a cell architecture for fast adaptation, then compare it from scratch.")
    add_config_command(nas_sub, "search", cmd_nas_search,
                       help="search with MetaNAS or random search; writes genotype.json and its drawing",
                       config_help="NAS config (supernet backbone + nas: section), e.g. configs/nas-glyphs-metanas.yaml",
                       overrides_help="overrides, e.g. train.steps=100 nas.method=random",
                       out_help="run directory (default runs/nas-NAME-TIMESTAMP)", resume="continue the search in --out")
    p = add_run_dir_command(nas_sub, "evaluate", cmd_nas_evaluate,
                            help="found vs Conv-4 vs random architectures, meta-trained from scratch",
                            run_dir_help="a run directory written by metakit nas search")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train/evaluate only these models (found, conv4, random-N)")
    p.add_argument("--episodes", type=positive_int, help="fixed test episodes (default: config eval.episodes)")
