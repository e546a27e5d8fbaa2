"""MAML on sinusoid regression, the MAML paper's protocol (Finn et al. 2017, section 5.1).

For K = 5 and 10 support points: meta-train ``configs/sinusoid-maml.yaml`` (MLP 1-40-40-1,
inner lr 0.01, one inner step, meta-batch 25), then report the query MSE ± 95% CI over 1000 fixed
test tasks after 1 and 10 adaptation steps, beside published figures.

    python benchmarks/sinusoid_maml.py --steps 10000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from metakit.config import load_config
from metakit.evaluation import evaluate_run
from metakit.training import train

REPO = Path(__file__).resolve().parents[1]
#: MAML's sinusoid MSE with 95% CI after one step, as tabulated by Li et al. 2017 (Meta-SGD), Table 1.
PUBLISHED = {(5, 1): "1.13 ± 0.18", (10, 1): "0.77 ± 0.11"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-sinusoid-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--json", help="write all results to this JSON file")
    args = parser.parse_args()
    rows = []
    for k in args.shots:
        config = load_config(REPO / "configs" / "sinusoid-maml.yaml", [
            f"episodes.shots={k}", f"eval.shots=[{k}]", f"train.steps={args.steps}", f"train.threads={args.threads}",
            f"eval.episodes={args.episodes}",
        ])
        run_dir = Path(args.out) / f"k{k}"
        summary = train(config, run_dir, progress=False)
        for steps in (1, 10):
            result = evaluate_run(str(run_dir), progress=False, overrides=[f"learner.eval_inner_steps={steps}"],
                                  write=steps == 1)["results"][0]
            rows.append({"shots": k, "adapt_steps": steps, "train_minutes": summary["train_seconds"] / 60,
                         "meta_steps": summary["steps"], **result})
    table = Table(title=f"MAML sinusoid regression ({args.threads} threads)")
    for col in ("K", "adaptation steps", "MSE ± 95% CI", "published (1 step)", "meta-steps x 25 tasks", "train min"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["shots"]), str(r["adapt_steps"]), f"{r['mean']:.3f} ± {r['ci95']:.3f}",
                      PUBLISHED.get((r["shots"], r["adapt_steps"]), "-"), str(r["meta_steps"]), f"{r['train_minutes']:.1f}")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
