"""Few-shot intent classification on frozen all-MiniLM-L6-v2 embeddings: Banking77 and HWU64.

Trains every learner of ``configs/text-<dataset>-<learner>.yaml`` on each dataset's training
intents (the baselines ``centroid`` and ``logreg`` train nothing), then evaluates each run on the
held-out test intents of *both* datasets (within- and cross-dataset) at 5/10-way 1/5-shot, on the
same fixed episodes for every learner, and prints one table (accuracy ± 95% CI). It closes with
paired comparisons: the meta-trained learner with the best validation accuracy against each
no-meta-training baseline, as the mean per-episode accuracy difference ± its 95% CI (the same
episodes for both, so the paired interval is much tighter than the two separate ones).

    python benchmarks/text_fewshot.py --threads 2

Needs ``pip install 'metakit[text]'``. The first run embeds the 24,108 sentences once (~1-2 min
on 2 cores) into the cache (``$METAKIT_CACHE``); trained runs in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from metakit.config import load_config
from metakit.datasets import load_splits
from metakit.episodes import EpisodeSampler, FixedEpisodes
from metakit.evaluation import load_trained
from metakit.runs import RunPaths, read_json
from metakit.training import train
from metakit.utils import set_threads, write_json, write_text

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("banking77", "hwu64")
BASELINES = ("centroid", "logreg")
LEARNERS = ("protonet", "matching", "r2d2", "anil", "maml", "finetune", *BASELINES)
SETTINGS = ((5, 1), (5, 5), (10, 1), (10, 5))


def episode_scores(learner: torch.nn.Module, episodes: FixedEpisodes) -> list[float]:
    """Accuracy of ``learner`` on each episode (what ``evaluate_learner`` averages), kept per episode."""
    learner.eval()
    out = []
    with torch.no_grad():
        for ep in episodes:
            predict = learner.adapt(ep.support_x, ep.support_y, ep.ways)
            out.append(learner.score(predict(ep.query_x), ep.query_y))
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width ``1.96 * std / sqrt(n)``."""
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS))
    parser.add_argument("--episodes", type=int, default=1000, help="fixed test episodes per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="folder holding banking77/ and hwu64/")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-text-fewshot"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    console = Console(stderr=True)
    out = Path(args.out)
    roots = {d: str(Path(args.shared) / d) for d in DATASETS}

    # Test episodes: each dataset's test intents under its own config's split, one fixed set per setting.
    t0 = time.perf_counter()
    tests, queries, seed = {}, None, None
    for d in DATASETS:
        cfg = load_config(REPO / "configs" / f"text-{d}-protonet.yaml", [f"dataset.root={roots[d]}"])
        ds = cfg.dataset
        tests[d] = load_splits(ds.name, split=ds.split, seed=ds.split_seed, fractions=tuple(ds.fractions), **ds.options)["test"]
        queries, seed = cfg.eval.queries, cfg.eval.seed
        console.print(f"{tests[d].describe()} (held-out intents)")
    embed_s = time.perf_counter() - t0
    episodes = {
        (d, n, k): FixedEpisodes(EpisodeSampler(tests[d], n, k, queries), args.episodes, seed)
        for d in DATASETS for n, k in SETTINGS
    }

    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str, str], dict[tuple[int, int], list[float]]] = {}
    for train_on in DATASETS:
        for name in args.learners:
            config = load_config(
                REPO / "configs" / f"text-{train_on}-{name}.yaml",
                [f"dataset.root={roots[train_on]}", f"train.threads={args.threads}"],
            )
            run = out / config.name
            start = time.perf_counter()
            if not RunPaths(run).summary.is_file():
                train(config, run, resume=RunPaths(run).last.is_file(), progress=not args.no_progress)
            exp = load_trained(run)
            summary = read_json(RunPaths(run).summary) or {}
            for test_on in DATASETS:
                if name in BASELINES and test_on != train_on:
                    continue  # nothing was trained: the baseline's numbers do not depend on the training set
                row = {"learner": name, "trained_on": "-" if name in BASELINES else train_on, "tested_on": test_on,
                       "meta_training_seconds": summary.get("train_seconds"), "best_val_accuracy": summary.get("best_val_accuracy"),
                       "results": {}}
                per = {}
                for n, k in SETTINGS:
                    per[(n, k)] = episode_scores(exp.learner, episodes[(test_on, n, k)])
                    m, ci = mean_ci(per[(n, k)])
                    row["results"][f"{n}w{k}s"] = {"mean": m, "ci95": ci}
                scores[(name, row["trained_on"], test_on)] = per
                rows.append(row)
            console.print(f"{name} trained on {train_on}: {time.perf_counter() - start:.0f} s")

    # Paired comparisons: on each training set, the meta-trained learner with the best validation accuracy.
    paired = []
    for train_on in DATASETS:
        meta = [r for r in rows if r["trained_on"] == train_on and r["tested_on"] == train_on]
        if not meta or not any(b in args.learners for b in BASELINES):
            continue
        best = max(meta, key=lambda r: r["best_val_accuracy"] or 0.0)["learner"]
        for test_on in DATASETS:
            for base in (b for b in BASELINES if b in args.learners):
                diffs = {}
                for n, k in SETTINGS:
                    a, b = scores[(best, train_on, test_on)][(n, k)], scores[(base, "-", test_on)][(n, k)]
                    m, ci = mean_ci([x - y for x, y in zip(a, b)])
                    diffs[f"{n}w{k}s"] = {"mean": m, "ci95": ci}
                paired.append({"learner": best, "trained_on": train_on, "tested_on": test_on, "baseline": base, "diff": diffs})

    lines = [
        f"{args.episodes} fixed test episodes per setting, {queries} queries/class, episode seed {seed}; "
        f"{args.threads} threads; {time.strftime('%Y-%m-%d')}.",
        "",
        "| learner | trained on | tested on | " + " | ".join(f"{n}w{k}s" for n, k in SETTINGS) + " | meta-train s |",
        "|---|---|---|" + "---|" * (len(SETTINGS) + 1),
    ]
    for test_on in DATASETS:
        for r in (r for r in rows if r["tested_on"] == test_on):
            cells = [f"{100 * r['results'][f'{n}w{k}s']['mean']:.2f} ± {100 * r['results'][f'{n}w{k}s']['ci95']:.2f}" for n, k in SETTINGS]
            secs = r["meta_training_seconds"]
            lines.append(f"| {r['learner']} | {r['trained_on']} | {test_on} | " + " | ".join(cells) + f" | {secs:.0f} |")
    if paired:
        lines += ["", "Paired differences (accuracy points, same episodes): best-by-validation meta-trained learner minus baseline.",
                  "", "| learner (trained on) | tested on | baseline | " + " | ".join(f"{n}w{k}s" for n, k in SETTINGS) + " |",
                  "|---|---|---|" + "---|" * len(SETTINGS)]
        for p in paired:
            cells = [f"{100 * p['diff'][f'{n}w{k}s']['mean']:+.2f} ± {100 * p['diff'][f'{n}w{k}s']['ci95']:.2f}" for n, k in SETTINGS]
            lines.append(f"| {p['learner']} ({p['trained_on']}) | {p['tested_on']} | {p['baseline']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "text_fewshot.md", table)
    write_json(out / "text_fewshot.json", {"rows": rows, "paired": paired, "episodes": args.episodes, "threads": args.threads,
                                           "load_and_embed_seconds": round(embed_s, 1), "date": time.strftime("%Y-%m-%d"),
                                           "total_seconds": round(time.perf_counter() - t0, 1)})
    print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
