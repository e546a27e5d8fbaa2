"""Comparing learners on the same fixed test episodes, within and across domains.

``compare`` trains what is given as a config (or reuses a run directory), evaluates every run on
*identical* fixed episodes — the first run's dataset split, ways, queries and episode seed — over a
range of shots, and writes one table, an accuracy-vs-shots plot and a reliability diagram.
``cross_domain`` evaluates runs on other datasets' test splits and reports a matrix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metakit.calibration import reliability_diagram
from metakit.config import Config, load_config, parse_value
from metakit.errors import MetakitError
from metakit.evaluation import EvalResult, evaluate_experiment, load_trained
from metakit.runs import Plot, Report, RunPaths, load_run_config, pyplot, read_json, write_report


def resolve_runs(items: Sequence[str], out: Path, overrides: Sequence[str] = (), progress: bool = True) -> list[Path]:
    """Run directories for ``items``: run directories as they are, configs trained into ``out/NAME``.

    A config whose run already finished in ``out`` is not trained again; a partial one resumes.
    """
    from metakit.training import train

    # Every item is checked before anything trains, so a typo in the last config fails in seconds.
    planned: list[tuple[Path, Config | None]] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and RunPaths(path).config.is_file():
            planned.append((path, None))
        elif path.is_file():
            config = load_config(path, overrides)
            planned.append((out / config.name, config))
        else:
            raise MetakitError(f"{item} is neither a run directory nor a config file.")
    runs = [run for run, _ in planned]
    if len(runs) != len({r.resolve() for r in runs}):
        raise MetakitError("the same run appears twice; give each learner its own config name or run directory.")
    for run_dir, config in planned:
        if config is not None and not RunPaths(run_dir).summary.is_file():
            train(config, run_dir, resume=RunPaths(run_dir).last.is_file(), progress=progress)
    return runs


def _same_episodes(configs: list[Config], runs: list[Path]) -> None:
    ref = configs[0].dataset
    for config, run in zip(configs[1:], runs[1:]):
        if config.dataset != ref:
            raise MetakitError(
                f"{run} uses dataset {config.dataset.name!r} (split {config.dataset.split}) but {runs[0]} uses "
                f"{ref.name!r} (split {ref.split}); compare needs the same dataset and split for the same test episodes."
            )


def _accuracy(r: EvalResult | dict[str, Any]) -> str:
    d = r if isinstance(r, dict) else r.to_dict()
    return f"{100 * d['mean']:.2f} ± {100 * d['ci95']:.2f}" if d["metric"] == "accuracy" else f"{d['mean']:.4f} ± {d['ci95']:.4f}"


def compare(
    items: Sequence[str],
    out: str | Path,
    shots: Sequence[int] = (1, 5, 10, 20),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    ways: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Evaluate several learners on the same fixed test episodes; write table, JSON and plots to ``out``.

    ``ways`` defaults to the first run's ``eval.ways``; giving it lets runs trained with other
    episode shapes (a 60-way ProtoNet beside 20-way MAML) be scored on one setting. Each row
    records its training budget (steps x tasks per step, and the training episode shape), since
    already-trained runs of different lengths can be compared.
    """
    out = Path(out)
    runs = resolve_runs(items, out, overrides, progress)
    configs = [load_run_config(r) for r in runs]
    _same_episodes(configs, runs)
    variable = [str(r) for r, c in zip(runs, configs) if c.episodes.sampler == "metadataset"]
    if variable:
        raise MetakitError(
            f"{variable[0]} uses Meta-Dataset episodes (episodes.sampler: metadataset), which have no fixed ways and "
            f"shots to tabulate; compare such runs with metakit cross-domain."
        )
    ev = configs[0].eval
    episodes = episodes or ev.episodes
    ways = list(ways or ev.ways)
    rows = []
    for run, config in zip(runs, configs):
        exp = load_trained(run)
        results = evaluate_experiment(exp, ways, shots, ev.queries, episodes, ev.seed, progress=progress)
        training = read_json(RunPaths(run).summary) or {}
        e = config.episodes
        rows.append({
            "run": str(run),
            "name": config.name,
            "learner": config.learner.name,
            "parameters": sum(p.numel() for p in exp.learner.parameters()),
            "meta_training_seconds": training.get("train_seconds"),
            "train_steps": training.get("steps"),
            "meta_batch": e.meta_batch,
            "train_episodes": f"{e.ways}w{e.shots}s{e.queries}q",
            "results": [r.to_dict() for r in results],
        })
    report = {
        "dataset": configs[0].dataset.name,
        "split": configs[0].dataset.split,
        "ways": ways,
        "shots": list(shots),
        "queries": ev.queries,
        "episodes": episodes,
        "episode_seed": ev.seed,
        "date": time.strftime("%Y-%m-%d"),
        "runs": rows,
    }
    files = Report(data={"compare.json": report}, plots={"accuracy_vs_shots.png": Plot(_plot_shots(report))},
                   text={"compare.md": compare_markdown(report)})
    first = (ev.ways[0], shots[0])
    curves = {
        row["name"]: r["calibration"] for row in rows for r in row["results"]
        if (r["ways"], r["shots"]) == first and r.get("calibration")
    }
    if curves:
        files.plots["reliability.png"] = Plot(reliability_diagram(curves, title=f"{first[0]}-way {first[1]}-shot reliability"))
    write_report(out, files)
    return report


def compare_markdown(report: dict[str, Any]) -> str:
    """The comparison as a markdown table (accuracy ± 95% CI per setting, time, size, calibration)."""
    settings = [(w, k) for w in report["ways"] for k in report["shots"]]
    head = ["learner", *[f"{w}w{k}s" for w, k in settings], "adapt ms (1st)", "steps x tasks (episodes)", "meta-train s",
            "params", "ECE (1st)", "NLL (1st)"]
    lines = [
        f"Dataset `{report['dataset']}` ({report['split']} split), {report['episodes']} fixed test episodes per setting, "
        f"{report['queries']} queries/class, episode seed {report['episode_seed']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in report["runs"]:
        by = {(r["ways"], r["shots"]): r for r in row["results"]}
        first = by[settings[0]]
        cal = first.get("calibration") or {}
        secs = row["meta_training_seconds"]
        cells = [
            row["name"], *[_accuracy(by[s]) for s in settings], f"{1000 * first['median_adapt_seconds']:.1f}",
            _budget(row), f"{secs:.0f}" if secs is not None else "-", f"{row['parameters']:,}",
            f"{100 * cal['ece']:.2f}%" if cal else "-", f"{cal['nll']:.3f}" if cal else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _budget(row: dict[str, Any]) -> str:
    """``"600 x 4 (5w1s15q)"``: meta-training steps x tasks per step, and the training episodes."""
    if row.get("train_steps") is None:  # reports written before budgets were recorded
        return "-"
    return f"{row['train_steps']:,} x {row['meta_batch']} ({row['train_episodes']})"


def _plot_shots(report: dict[str, Any]) -> Any:
    """Accuracy ± 95% CI against shots, one panel per ways setting and one line per run."""
    plt = pyplot()
    ways = report["ways"]
    fig, axes = plt.subplots(1, len(ways), figsize=(5 * len(ways), 4), squeeze=False)
    for ax, w in zip(axes[0], ways):
        for row in report["runs"]:
            pts = sorted((r["shots"], r["mean"], r["ci95"]) for r in row["results"] if r["ways"] == w)
            xs, ys, cis = zip(*pts)
            ax.errorbar(xs, ys, yerr=cis, marker="o", capsize=3, label=row["name"])
        ax.set_xscale("log")
        ax.set_xticks(report["shots"])
        ax.set_xticklabels([str(k) for k in report["shots"]])
        ax.set_xlabel("shots")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_title(f"{report['dataset']}: {w}-way")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def parse_dataset_spec(spec: str) -> dict[str, Any]:
    """``"omniglot:root=/data/omniglot,image_size=28"`` -> ``{"name": "omniglot", "root": ..., ...}``."""
    name, _, rest = spec.partition(":")
    data: dict[str, Any] = {"name": name}
    # Split on commas outside brackets, so list values such as fractions=[0.7,0.1,0.2] stay whole.
    items, depth, current = [], 0, ""
    for ch in rest:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    for item in filter(None, items):
        if "=" not in item:
            raise MetakitError(f"dataset option {item!r} in {spec!r} must look like key=value.")
        key, value = item.split("=", 1)
        data[key] = parse_value(value)
    return data


def average_ranks(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``avg_rank``: its rank among the rows on every dataset (1 = best, ties share the
    mean rank), averaged over datasets, as Meta-Dataset (Triantafillou et al. 2020) reports learners."""
    if not rows:
        return
    totals = [0.0] * len(rows)
    columns = len(rows[0]["cells"])
    for j in range(columns):
        cells = [row["cells"][j] for row in rows]
        sign = 1 if cells[0]["metric"] == "accuracy" else -1  # higher accuracy, lower error ranks first
        scores = [sign * c["mean"] for c in cells]
        for i, s in enumerate(scores):
            better = sum(o > s for o in scores)
            tied = sum(o == s for o in scores)
            totals[i] += better + (tied + 1) / 2
    for row, total in zip(rows, totals):
        row["avg_rank"] = total / max(columns, 1)


def cross_domain(
    runs: Sequence[str],
    datasets: Sequence[str],
    out: str | Path,
    ways: int | None = None,
    shots: int | None = None,
    episodes: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate each run on each dataset's test split: the cross-domain generalisation matrix.

    A run tested on its own dataset uses its own split (the in-domain diagonal). Each row ends
    with its average rank over the datasets (:func:`average_ranks`); runs trained with
    ``episodes.sampler: metadataset`` are tested on Meta-Dataset's variable-way variable-shot
    episodes, which makes the matrix Meta-Dataset's table.
    """
    out = Path(out)
    targets = [parse_dataset_spec(d) for d in datasets]
    matrix = []
    for run in runs:
        exp = load_trained(run)
        ev = exp.config.eval
        n, k = ways or ev.ways[0], shots or ev.shots[0]
        row = {"run": str(run), "name": exp.config.name, "trained_on": exp.config.dataset.name, "cells": []}
        for target in targets:
            own = target["name"] == exp.config.dataset.name and len(target) == 1
            (result,) = evaluate_experiment(
                exp, [n], [k], ev.queries, episodes or ev.episodes, ev.seed, dataset=None if own else target, progress=progress,
            )
            row["cells"].append({"dataset": target["name"], **result.to_dict()})
        matrix.append(row)
    average_ranks(matrix)
    report = {"datasets": [t["name"] for t in targets], "rows": matrix, "date": time.strftime("%Y-%m-%d")}
    lines = [
        "| trained on \\ tested on | " + " | ".join(report["datasets"]) + " | avg rank |",
        "|---|" + "---|" * (len(targets) + 1),
    ]
    for row in matrix:
        cells = " | ".join(_accuracy(c) for c in row["cells"])
        lines.append(f"| {row['name']} ({row['trained_on']}) | {cells} | {row['avg_rank']:.2f} |")
    write_report(out, Report(data={"cross_domain.json": report}, text={"cross_domain.md": "\n".join(lines) + "\n"}))
    return report
