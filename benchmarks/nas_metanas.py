"""MetaNAS on Glyphs: search a cell, then the found architecture vs Conv-4 vs random architectures.

1. ``search``: MetaNAS (Elsken et al., CVPR 2020) with ``configs/nas-glyphs-metanas.yaml``: the
   supernet's weights and architecture weights meta-learned together by the config's gradient-based
   learner, then discretised (top-2 incoming edges per node, top-1 operation per edge).
2. ``found``, ``conv4``, ``random-1`` .. ``random-3``: each meta-trained from scratch with the same
   learner and budget (``nas.evaluate`` of the config) and evaluated on the same fixed test episodes
   of held-out Unicode blocks; the random architectures are drawn from the same space at a
   parameter count within 25% of the found one's.

Everything is ``metakit nas search`` / ``metakit nas evaluate`` (``metakit.nas``); this script
only runs the parts, times them and prints the table. Each part resumes, so on a shared machine
run them one CPU-lock at a time::

    for part in search found conv4 random-1 random-2 random-3; do
        flock /tmp/metakit-cpu.lock python benchmarks/nas_metanas.py --part $part
    done
    python benchmarks/nas_metanas.py --part table

or all at once: ``python benchmarks/nas_metanas.py``. ``--set KEY=VALUE`` overrides the config
(e.g. ``--set train.steps=100 nas.evaluate.train.steps=200``), ``--out`` the run directory.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.console import Console

from metakit.nas.evaluate import evaluate_search, evaluation_markdown, summarize
from metakit.nas.search import load_nas_spec, search
from metakit.runs import read_json
from metakit.utils import write_json

REPO = Path(__file__).resolve().parents[1]
MODELS = ("found", "conv4", "random-1", "random-2", "random-3")


def main() -> None:
    """Run the requested part (default: all of them) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "nas-glyphs-metanas.yaml"))
    parser.add_argument("--out", default="runs/bench-nas-metanas", help="run directory")
    parser.add_argument("--part", choices=("all", "search", *MODELS, "table"), default="all")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the config's train.threads, 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    console = Console()
    out = Path(args.out)
    timings_path = out / "bench_timings.json"
    timings = read_json(timings_path) or {}
    parts = ["search", *MODELS] if args.part == "all" else [args.part]
    for part in parts:
        if part == "table":
            continue
        start = time.perf_counter()
        if part == "search":
            extra = [f"train.threads={args.threads}"] if args.threads else []
            search(load_nas_spec(args.config, [*extra, *args.set]), out, resume=True, progress=not args.no_progress)
        else:
            evaluate_search(out, only=[part], progress=not args.no_progress)
        # Wall time of the part as run (training, validation and test episodes; a resumed part
        # only counts its last piece).
        timings[part] = round(time.perf_counter() - start, 1)
        write_json(timings_path, timings)
    report = summarize(out)
    threads = (read_json(out / "search.json") or {}).get("threads", "?")
    console.print(evaluation_markdown(report), markup=False, highlight=False)
    total = sum(timings.values())
    console.print(
        "wall time per part (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; total {total / 60:.1f} min, {threads} intra-op thread(s) on a {os.cpu_count()}-core machine",
        markup=False, highlight=False,
    )
    write_json(out / "bench_report.json", {**report, "part_seconds": timings, "threads": threads})


if __name__ == "__main__":
    main()
