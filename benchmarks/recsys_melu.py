"""MeLU-1 and MeLU-5 against every baseline, all four cold-start scenarios, synthetic MovieLens-format data.

Trains ``configs/recsys-melu-synthetic.yaml`` (1,000 users x 1,500 items from
:mod:`metakit.recsys.synthetic`, written and parsed as ML-1M files), scores every method on every
scenario and prints one table: MAE, RMSE, nDCG@1, nDCG@3 (mean ± 95% CI over users), then, for
the new-user scenarios, whether each MeLU variant beats every baseline by the paired 95% CI.

    python benchmarks/recsys_melu.py --threads 2
    python benchmarks/recsys_melu.py --set data.synthetic.item_feature_share=0.9   # another world
    python benchmarks/recsys_melu.py --set melu.learn_local_lr=true model.item_ids=true   # extensions
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from metakit.recsys.config import load_recsys_config
from metakit.recsys.experiment import evaluate_recsys, train_recsys
from metakit.recsys.tasks import SCENARIOS
from metakit.utils import write_json

REPO = Path(__file__).resolve().parents[1]
NEW_USER_SCENARIOS = ("new_users", "new_users_new_items")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "recsys-melu-synthetic.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-recsys-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--json", help="write the evaluation to this JSON file")
    args = parser.parse_args()
    config = load_recsys_config(args.config, [f"threads={args.threads}", *args.set])
    start = time.perf_counter()
    summary = train_recsys(config, args.out, progress=False)
    result = evaluate_recsys(args.out, progress=False)
    minutes = (time.perf_counter() - start) / 60

    ks = result["ndcg_k"]
    table = Table(title=f"{summary['data']}; {args.threads} threads, {minutes:.1f} min in all")
    for col in ("scenario", "users", "method", "MAE", "RMSE", *[f"nDCG@{k}" for k in ks]):
        table.add_column(col, justify="left" if col in ("scenario", "method") else "right")
    for scenario, by_method in result["results"].items():
        for j, (key, r) in enumerate(by_method.items()):
            cells = [f"{r[m]['mean']:.3f} ± {r[m]['ci95']:.3f}" if m in r else "-"
                     for m in ("mae", "rmse", *[f"ndcg@{k}" for k in ks])]
            table.add_row(SCENARIOS[scenario] if j == 0 else "", str(r["users"]) if j == 0 else "",
                          result["methods"][key], *cells, end_section=j == len(by_method) - 1)
    console = Console(width=140)
    console.print(table)
    for scenario in NEW_USER_SCENARIOS:
        for melu, by_base in result["paired_mae_vs_baselines"].get(scenario, {}).items():
            beaten = [b for b, d in by_base.items() if d["mean"] + d["ci95"] < 0]
            lost = [result["methods"][b] for b in by_base if b not in beaten]
            verdict = "beats every baseline" if not lost else f"does not beat {', '.join(lost)}"
            console.print(f"{SCENARIOS[scenario]}: {result['methods'][melu]} {verdict} (paired 95% CI on MAE)")
    fits = ", ".join(f"{k} {m['fit_seconds']:.0f} s" for k, m in summary["methods"].items())
    console.print(f"fit times: {fits}; run directory {args.out}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
