"""ProtoNet + Conv-4 on the Omniglot background set, alphabet split (20 train / 5 val / 5 test).

Trains with ``configs/omniglot-protonet.yaml`` under a stated CPU budget (steps and threads),
evaluates 5-way and 20-way 1-shot on 1000 fixed test episodes of the 5 held-out alphabets and
prints a table beside the published ProtoNet figures (which use the Vinyals character split with
rotations, an easier protocol than held-out alphabets).

    python benchmarks/omniglot_protonet.py --threads 2 --steps 2000

The data is read from ``--root`` (default ``../shared/data/omniglot/images_background.zip``), or
downloaded when ``--root ''``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from metakit.config import load_config
from metakit.evaluation import evaluate_run
from metakit.training import train

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {(5, 1): 98.8, (20, 1): 96.0}  # Snell et al. 2017, Vinyals split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "omniglot-protonet.yaml"))
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-omniglot-protonet-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()

    overrides = [f"train.steps={args.steps}", f"train.threads={args.threads}", f"eval.episodes={args.episodes}", *args.overrides]
    if args.root:
        overrides.append(f"dataset.root={args.root}")
    config = load_config(args.config, overrides)
    start = time.perf_counter()
    summary = train(config, args.out)
    result = evaluate_run(args.out)
    wall = time.perf_counter() - start

    table = Table(title=f"ProtoNet Conv-4, Omniglot background, {config.dataset.split} split ({args.threads} threads)")
    for col in ("setting", "accuracy ± 95% CI", "episodes", "published (Vinyals split)", "train steps", "train time"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        pub = PUBLISHED.get((r["ways"], r["shots"]))
        table.add_row(
            f"{r['ways']}-way {r['shots']}-shot", f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}", str(r["episodes"]),
            f"{pub:.1f}" if pub else "-", str(summary["steps"]), f"{summary['train_seconds'] / 60:.1f} min",
        )
    Console().print(table)
    print(f"torch {torch.__version__}, threads {args.threads}, total wall time {wall / 60:.1f} min, run dir {args.out}")
    print(json.dumps({"results": result["results"], "train": summary}, default=str))


if __name__ == "__main__":
    main()
