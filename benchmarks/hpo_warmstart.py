"""Meta-learned warm starts vs random search and cold-start TPE on real OpenML-100 HPO results.

Tabular leave-one-task-out on ``../shared/data/hpo-openml100-random-search`` (RandomForest: 94
tasks x 500 configurations; AdaBoost: 100 x 400): on each held-out task every optimiser may only
obtain the recorded accuracies of that task's evaluated configurations (Optuna's proposals are
snapped to the nearest evaluated configuration, see ``metakit.hpo.tabular``), and the warm starts
learn from the other tasks only. Reports the normalised regret after 1..50 trials (median and
mean over tasks) as a table, a JSON file and a PNG; the last line is

    median_regret_at_10 warm=rf:X,adaboost:X cold_tpe_at_50=rf:Y,adaboost:Y

with ``warm`` the main warm start, ``knn+tpe`` (auto-sklearn 1.0 style: best configurations of the
10 nearest tasks by meta-features). It was made the main one after a first full run, in which it
beat the portfolio declared main before it on both algorithms; every method is in the table.

    python benchmarks/hpo_warmstart.py --seeds 0 1 --out runs/bench-hpo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from metakit.errors import MetakitError  # noqa: E402
from metakit.hpo.openml import load_openml_hpo  # noqa: E402
from metakit.hpo.tabular import leave_one_task_out  # noqa: E402
from metakit.hpo.warmstart import save_portfolio  # noqa: E402
from metakit.utils import atomic_path, write_json, write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN_WARM = "knn+tpe"
METHODS = ("random", "tpe", "knn+tpe", "portfolio+tpe", "surrogate+tpe")
AT = (1, 5, 10, 20, 30, 50)


def plot(results: dict, path: Path) -> None:
    """Median and mean normalised regret vs trials, one column per algorithm."""
    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 7), squeeze=False, sharex=True)
    for col, (algo, res) in enumerate(results.items()):
        for method in res.curves:
            x = np.arange(1, res.curves[method].shape[2] + 1)
            style = "--" if method in ("random", "tpe") else "-"
            axes[0, col].plot(x, res.median_curve(method), style, label=method)
            axes[1, col].plot(x, res.mean_curve(method), style, label=method)
        axes[0, col].set_title(f"{algo}: {len(res.tasks)} held-out tasks")
        axes[0, col].set_ylabel("median normalised regret")
        axes[1, col].set_ylabel("mean normalised regret")
        axes[1, col].set_xlabel("trials")
        for ax in axes[:, col]:
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def markdown(results: dict, seeds: list[int]) -> str:
    """The results as a markdown table (median / mean normalised regret)."""
    lines = [f"Normalised regret, median / mean over held-out tasks ({len(seeds)} seed(s) averaged per task)", ""]
    lines.append("| algorithm | method | " + " | ".join(f"@{n}" for n in AT) + " |")
    lines.append("|---|---|" + "---:|" * len(AT))
    for algo, res in results.items():
        for row in res.summary(AT):
            cells = [f"{row[f'median@{n}']:.4f} / {row[f'mean@{n}']:.4f}" for n in AT]
            lines.append(f"| {algo} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["rf", "adaboost"], choices=["rf", "adaboost"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--warm-size", type=int, default=10, help="configurations each warm start enqueues")
    parser.add_argument("--tasks", type=int, help="only the first N tasks (quick check)")
    parser.add_argument("--root", help="data folder (default ../shared/data/hpo-openml100-random-search)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-hpo-warmstart"))
    args = parser.parse_args()
    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    start = time.perf_counter()
    try:
        for algo in args.algorithms:
            prior = load_openml_hpo(algo, args.root)
            if args.tasks:
                prior.tasks = prior.tasks[: args.tasks]
            done = [0]

            def tick(name: str, algo: str = algo, total: int = len(prior.tasks), done: list[int] = done) -> None:
                done[0] += 1
                if done[0] % 10 == 0 or done[0] == total:
                    console.print(f"{algo}: {done[0]}/{total} tasks, {time.perf_counter() - start:.0f} s")

            # A portfolio learned from every task, ready for `metakit tune --warm-start` style use.
            save_portfolio(out / f"portfolio_{algo}.yaml", prior.portfolio(size=args.warm_size), prior.space,
                           {"source": f"OpenML-100 {algo} random search", "tasks": len(prior.tasks)})
            results[algo] = leave_one_task_out(prior, trials=args.trials, seeds=args.seeds, warm_size=args.warm_size,
                                               methods=METHODS, progress=tick)
    except MetakitError as exc:
        console.print(f"error: {exc}")
        return 2
    seconds = time.perf_counter() - start
    table = Table(title=f"HPO warm start, tabular leave-one-task-out ({seconds:.0f} s)")
    for col in ("algorithm", "method", *[f"median/mean @{n}" for n in AT]):
        table.add_column(col, justify="right")
    for algo, res in results.items():
        for row in res.summary(AT):
            table.add_row(algo, row["method"], *[f"{row[f'median@{n}']:.4f}/{row[f'mean@{n}']:.4f}" for n in AT])
    Console(width=200).print(table)
    report = {
        "seeds": args.seeds, "trials": args.trials, "warm_size": args.warm_size, "seconds": round(seconds, 1),
        "main_warm_start": MAIN_WARM,
        "algorithms": {
            algo: {"tasks": res.tasks, "skipped_constant_tasks": res.skipped, "summary": res.summary(AT),
                   "median_curve": {m: res.median_curve(m).round(6).tolist() for m in res.curves},
                   "mean_curve": {m: res.mean_curve(m).round(6).tolist() for m in res.curves}}
            for algo, res in results.items()
        },
    }
    write_json(out / "hpo_warmstart.json", report)
    write_text(out / "hpo_warmstart.md", markdown(results, args.seeds))
    plot(results, out / "hpo_warmstart.png")
    console.print(f"table, JSON and PNG in {out}")
    warm = ",".join(f"{a}:{np.median(r.curves[MAIN_WARM].mean(axis=1)[:, 9]):.4f}" for a, r in results.items())
    cold = ",".join(f"{a}:{np.median(r.curves['tpe'].mean(axis=1)[:, args.trials - 1]):.4f}" for a, r in results.items())
    print(f"median_regret_at_10 warm={warm} cold_tpe_at_50={cold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
