"""Meta-RL rows of docs/benchmarks.md: train + evaluate each config, print step-0 and adapted returns.

Each row is one config of ``configs/`` trained and evaluated exactly as ``metakit rl train CONFIG
--out DIR --evaluate`` does (the same :func:`metakit.rl.training.train_rl` and
:func:`metakit.rl.evaluation.evaluate_rl_run`), into ``--out/NAME``. A row whose run directory
already holds a finished run is resumed, which trains nothing more and only re-evaluates it.

    python benchmarks/meta_rl.py                        # every row (about an hour on one core)
    python benchmarks/meta_rl.py --only point2d-mamlrl  # one row
    python benchmarks/meta_rl.py --only point2d-pearl --set train.iterations=5 --tasks 4   # smoke

Step 0 is the return before adaptation; "adapted" is after one adaptation step (MAML-RL: one
inner policy-gradient step; RL² and PEARL: the second episode of a trial on the task). Gains are
paired per task; every figure is mean ± 95% CI over the held-out tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from metakit.errors import MetakitError
from metakit.rl.config import load_rl_config
from metakit.rl.evaluation import evaluate_rl_run
from metakit.rl.training import train_rl

REPO = Path(__file__).resolve().parents[1]
#: Row name -> config: the rows of the meta-RL section of docs/benchmarks.md.
ROWS = {
    "point2d-mamlrl": "configs/rl-point2d-mamlrl.yaml",
    "cheetah-vel-mamlrl": "configs/rl-cheetah-vel-mamlrl.yaml",
    "cheetah-vel-rl2": "configs/rl-cheetah-vel-rl2.yaml",
    "ml1-reach-mamlrl": "configs/rl-ml1-reach-mamlrl.yaml",
    "point2d-pearl": "configs/rl-point2d-pearl.yaml",
}


def _cell(stat: dict[str, float] | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:+.2f} ± {stat['ci95']:.2f}" if signed else f"{stat['mean']:.2f} ± {stat['ci95']:.2f}"


def run_row(name: str, out: Path, overrides: list[str], tasks: int | None, progress: bool) -> dict[str, Any]:
    """Train (or resume) and evaluate one row; returns its training summary and evaluation."""
    config = load_rl_config(REPO / ROWS[name], overrides)
    run_dir = out / name
    summary = train_rl(config, run_dir, resume=(run_dir / "config.yaml").exists(), progress=progress)
    report = evaluate_rl_run(run_dir, tasks=tasks, progress=progress)
    return {"row": name, "run_dir": str(run_dir), "training": summary, "evaluation": report}


def table(results: list[dict[str, Any]]) -> Table:
    """One line per (row, policy): step 0, adapted (step 1), paired gain, success, budget."""
    t = Table(title="meta-RL on held-out tasks (mean ± 95% CI over tasks)")
    for col in ("row", "policy", "tasks", "step 0", "adapted (step 1)", "gain (paired)", "success 0 -> 1",
                "env steps", "train min"):
        t.add_column(col, justify="left" if col in ("row", "policy") else "right")
    for r in results:
        ev, tr = r["evaluation"], r["training"]
        steps = sum(p["env_steps"] for p in tr["phases"].values())
        for policy, res in ev["policies"].items():
            adapted = res["returns"][1] if len(res["returns"]) > 1 else None
            gain = res["gains"][0] if res.get("gains") else None
            success = res.get("success")
            succ = f"{success[0]['mean']:.2f} -> {success[1]['mean']:.2f}" if success and len(success) > 1 else "-"
            t.add_row(r["row"], policy, str(ev["tasks"]), _cell(res["returns"][0]), _cell(adapted), _cell(gain, True),
                      succ, f"{steps:,}", f"{tr['train_seconds'] / 60:.1f}")
    return t


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen rows one after the other, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(ROWS), metavar="NAME",
                        help=f"run only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-meta-rl"), help="one run directory per row under it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every row, e.g. train.threads=2")
    parser.add_argument("--tasks", type=int, help="held-out tasks per row (default: each config's eval.tasks)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", help="write the rows' summaries and evaluations to this JSON file")
    args = parser.parse_args(argv)
    from metakit.rl.tasks import require

    try:
        require("gymnasium")
        results = []
        t0 = time.perf_counter()
        for name in args.only or list(ROWS):
            results.append(run_row(name, Path(args.out), args.set, args.tasks, not args.no_progress))
    except MetakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console = Console()
    console.width = max(console.width, 160)  # never squeeze the figures into ellipses on a narrow terminal or pipe
    console.print(table(results))
    console.print(f"{len(results)} row(s) in {(time.perf_counter() - t0) / 60:.1f} min; run directories under {args.out}")
    if args.json:
        from metakit.utils import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
