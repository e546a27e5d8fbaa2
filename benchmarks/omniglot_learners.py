"""Few-shot learners on the Omniglot background set, alphabet split (20 train / 5 val / 5 test).

Trains each learner from ``configs/omniglot-<learner>.yaml`` at each N-way 1-shot setting for a
stated budget of meta-training steps, evaluates on 1000 fixed test episodes of the 5 held-out
alphabets and prints one table (accuracy ± 95% CI, steps, meta-training minutes, median
adaptation time) beside the published figures (Vinyals split, far larger budgets).

    python benchmarks/omniglot_learners.py --learners maml fomaml anil metasgd mamlpp --ways 5 20 --threads 2

``--steps`` and ``--meta-batch`` set the budget (defaults: the configs'); 20-way runs use the
paper's 20-way inner settings where they differ (see ``WAY_OVERRIDES``).
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
PUBLISHED = {  # Vinyals split, from the papers
    ("protonet", 5): 98.8, ("protonet", 20): 96.0,
    ("maml", 5): 98.7, ("maml", 20): 95.8,
    ("fomaml", 5): 98.3, ("fomaml", 20): 89.4,
    ("metasgd", 5): 99.53, ("metasgd", 20): 95.93,
    ("mamlpp", 5): 99.47, ("mamlpp", 20): 97.65,
}
#: MAML's 20-way Omniglot setting uses a smaller inner learning rate (Finn et al. 2017).
WAY_OVERRIDES = {20: {"maml": ["learner.inner_lr=0.1"], "fomaml": ["learner.inner_lr=0.1"], "anil": ["learner.inner_lr=0.1"],
                      "metasgd": ["learner.inner_lr=0.1"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=["maml", "fomaml", "anil", "metasgd", "mamlpp"])
    parser.add_argument("--ways", nargs="+", type=int, default=[5, 20])
    parser.add_argument("--steps", type=int, help="meta-training steps per run (default: the config's)")
    parser.add_argument("--meta-batch", type=int, help="tasks per meta-batch (default: the config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"))
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-omniglot-learners-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--json", help="write all results to this JSON file")
    args = parser.parse_args()

    rows = []
    for ways in args.ways:
        for learner in args.learners:
            overrides = [f"episodes.ways={ways}", f"eval.ways=[{ways}]", f"train.threads={args.threads}",
                         f"eval.episodes={args.episodes}", *WAY_OVERRIDES.get(ways, {}).get(learner, [])]
            if args.root:
                overrides.append(f"dataset.root={args.root}")
            if args.steps:
                overrides.append(f"train.steps={args.steps}")
            if args.meta_batch:
                overrides.append(f"episodes.meta_batch={args.meta_batch}")
            config = load_config(REPO / "configs" / f"omniglot-{learner}.yaml", overrides)
            run_dir = Path(args.out) / f"{learner}-{ways}way"
            summary = train(config, run_dir, progress=False)
            result = evaluate_run(str(run_dir), progress=False)["results"][0]
            rows.append({"learner": learner, "ways": ways, "steps": summary["steps"], "meta_batch": config.episodes.meta_batch,
                         "train_minutes": summary["train_seconds"] / 60, **result})
            Console(stderr=True).print(f"{learner} {ways}-way: {100 * result['mean']:.2f} ± {100 * result['ci95']:.2f}")

    table = Table(title=f"Omniglot background, alphabet split, 1-shot, {args.threads} threads")
    for col in ("learner", "setting", "accuracy ± 95% CI", "published (Vinyals)", "steps x tasks", "train min", "adapt ms"):
        table.add_column(col, justify="right")
    for r in rows:
        pub = PUBLISHED.get((r["learner"], r["ways"]))
        table.add_row(r["learner"], f"{r['ways']}w1s", f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}", f"{pub}" if pub else "-",
                      f"{r['steps']} x {r['meta_batch']}", f"{r['train_minutes']:.1f}", f"{1000 * r['median_adapt_seconds']:.1f}")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
