"""Live demo: tune MAML's inner lr and inner steps on Glyphs, cold vs warm-started from an Omniglot study.

1. ``metakit tune configs/omniglot-maml-tune.yaml`` (TPE, N trials) on Omniglot, the prior;
2. the same search on Glyphs, cold (TPE, N trials);
3. the same search on Glyphs, warm-started from the Omniglot study (``--warm-start`` with the
   knn method: its best configurations are enqueued first, then TPE).

The Glyphs studies run for several sampler seeds (the Omniglot study uses another seed, so the
warm start never replays a cold study's own first samples). Prints best-so-far validation
accuracy per trial for cold and warm, and how many trials the warm start saves: trials the cold
study needed to get within one accuracy point of the best accuracy either study found, minus the
trials the warm study needed (a study that never gets there counts as N + 1). Writes a PNG and JSON next to the studies.

    python benchmarks/hpo_maml_warmstart.py --trials 6 --seeds 0 1 2
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

from metakit.hpo.space import load_tune_spec  # noqa: E402
from metakit.hpo.tune import TuneOptions, tune  # noqa: E402
from metakit.utils import atomic_path, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def best_so_far(study_dir: Path, name: str) -> list[float]:
    """Best validation accuracy after each trial (pruned trials count with their last value)."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")
    values = [t.value if t.value is not None else 0.0 for t in study.trials if t.state.is_finished()]
    return np.maximum.accumulate(values).tolist()


def first_reaching(curve: list[float], target: float) -> int | None:
    """1-based trial at which ``curve`` reaches ``target`` (None if never)."""
    for i, v in enumerate(curve):
        if v >= target - 1e-12:
            return i + 1
    return None


def plot(rows: list[dict], warm_size: int, path: Path) -> None:
    """Mean (over seeds) best-so-far validation accuracy per trial, cold vs warm, as PNG."""
    with plt.style.context("default"):  # Optuna's plots switch the global style to ggplot
        fig, ax = plt.subplots(figsize=(6.5, 4))
        x = np.arange(1, len(rows[0]["cold"]) + 1)
        ax.plot(x, np.mean([r["cold"] for r in rows], axis=0), "o--", label="cold TPE")
        ax.plot(x, np.mean([r["warm"] for r in rows], axis=0), "o-", label=f"warm start from Omniglot (first {warm_size})")
        ax.set_xlabel("trial")
        ax.set_ylabel("best validation accuracy so far")
        ax.set_title(f"Tuning MAML inner lr and steps on Glyphs (mean of {len(rows)} seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--warm-size", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds of the Glyphs studies")
    parser.add_argument("--prior-seed", type=int, default=100,
                        help="sampler seed of the Omniglot study (differs from the Glyphs seeds, so the warm start "
                             "does not replay the cold study's own first samples)")
    parser.add_argument("--omniglot-root", default=str(REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for both configs")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-hpo-maml"))
    args = parser.parse_args()
    out = Path(args.out)
    console = Console(stderr=True)
    start = time.perf_counter()
    omni = load_tune_spec(REPO / "configs" / "omniglot-maml-tune.yaml", [f"dataset.root={args.omniglot_root}", *args.set])
    glyphs = load_tune_spec(REPO / "configs" / "glyphs-maml-tune.yaml", list(args.set))
    console.print("[bold]Omniglot study[/] (the prior)")
    s_omni = tune(omni, out / "omniglot", TuneOptions(trials=args.trials, seed=args.prior_seed, progress=False))
    prior = str(out / "omniglot" / "study.db")
    rows = []
    for seed in args.seeds:
        console.print(f"[bold]Glyphs, seed {seed}[/]: cold start")
        s_cold = tune(glyphs, out / f"glyphs-cold-s{seed}", TuneOptions(trials=args.trials, seed=seed, progress=False))
        console.print(f"[bold]Glyphs, seed {seed}[/]: warm start from the Omniglot study")
        s_warm = tune(glyphs, out / f"glyphs-warm-s{seed}", TuneOptions(
            trials=args.trials, seed=seed, progress=False, warm_start=prior, warm_start_method="knn",
            warm_start_size=args.warm_size))
        cold = best_so_far(out / f"glyphs-cold-s{seed}", s_cold["study"])
        warm = best_so_far(out / f"glyphs-warm-s{seed}", s_warm["study"])
        # Trials to get within one accuracy point of the best either study found; a study that never
        # gets there counts as N + 1 trials, so "saved" is then a lower bound (marked ">=").
        target = max(cold[-1], warm[-1]) - 0.01
        n_cold, n_warm = first_reaching(cold, target), first_reaching(warm, target)
        censored = n_cold is None
        saved = (n_cold or args.trials + 1) - (n_warm or args.trials + 1)
        rows.append({"seed": seed, "cold": cold, "warm": warm, "target": target, "cold_trials_to_target": n_cold,
                     "warm_trials_to_target": n_warm, "trials_saved": saved, "saved_is_lower_bound": censored,
                     "cold_best_params": s_cold["best_params"], "warm_best_params": s_warm["best_params"]})
    seconds = time.perf_counter() - start

    table = Table(title=f"MAML on Glyphs: best validation accuracy so far, cold / warm ({seconds / 60:.1f} min in all)")
    table.add_column("trial", justify="right")
    for r in rows:
        table.add_column(f"seed {r['seed']}", justify="right")
    table.add_column("mean", justify="right")
    for i in range(args.trials):
        cells = [f"{r['cold'][i]:.4f} / {r['warm'][i]:.4f}" for r in rows]
        mean_c = np.mean([r["cold"][i] for r in rows])
        mean_w = np.mean([r["warm"][i] for r in rows])
        table.add_row(str(i + 1), *cells, f"{mean_c:.4f} / {mean_w:.4f}")
    table.add_row("trials to best-0.01, cold / warm",
                  *[f"{r['cold_trials_to_target'] or f'>{args.trials}'} / {r['warm_trials_to_target'] or f'>{args.trials}'}"
                    for r in rows], "")
    table.add_row("trials saved", *[(">=" if r["saved_is_lower_bound"] else "") + str(r["trials_saved"]) for r in rows],
                  f"{np.mean([r['trials_saved'] for r in rows]):.1f}")
    Console().print(table)
    Console().print(f"Omniglot best: {s_omni['best_params']} (val acc {s_omni['best_value']:.4f}); warm start = its "
                    f"{args.warm_size} best configurations, then TPE")
    plot(rows, args.warm_size, out / "hpo_maml_warmstart.png")
    write_json(out / "hpo_maml_warmstart.json", {
        "trials": args.trials, "warm_size": args.warm_size, "seeds": args.seeds, "prior_seed": args.prior_seed,
        "seconds": round(seconds, 1), "omniglot": s_omni, "glyphs": rows,
    })
    saved = [(">=" if r["saved_is_lower_bound"] else "") + str(r["trials_saved"]) for r in rows]
    print(f"trials_saved per seed={','.join(saved)} mean={np.mean([r['trials_saved'] for r in rows]):.2f} "
          f"cold_best_mean={np.mean([r['cold'][-1] for r in rows]):.4f} warm_best_mean={np.mean([r['warm'][-1] for r in rows]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
