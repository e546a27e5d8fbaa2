"""What a classification run's report says: its tables and figures.

``run_report`` builds the report of a run directory (``report.md`` from the files in it, so it can
be rebuilt at any time, plus the figures and JSON just computed); :func:`metakit.runs.write_report`,
the one writer every domain shares, puts it on disk. ``learning_curve`` draws a run's metrics log;
``results_table`` is the console table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from metakit.runs import Plot, Report, RunPaths, load_run_config, pyplot, read_json
from metakit.utils import read_jsonl


def _metric_records(path: Path, metric: str) -> list[dict[str, Any]]:
    """The meta-training records of ``metrics.jsonl``; lines of any other shape are left out of the plot.

    A line cut short by a killed process, or written by another kind of run sharing the folder,
    must not turn the report into a traceback.
    """
    return [
        r for r in read_jsonl(path)
        if r.get("split") in ("train", "val") and "step" in r and metric in r and (r["split"] == "val" or "loss" in r)
    ]


def learning_curve(metrics_path: Path, metric: str) -> Any | None:
    """Training loss, training ``metric`` and validation ``metric`` against steps (``None``: no log yet)."""
    if not metrics_path.is_file():
        return None
    records = _metric_records(metrics_path, metric)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    plt = pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("meta-training step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log" if metric == "mse" else "linear")
    ax_loss.legend()
    ax_metric.plot([r["step"] for r in train], [r[metric] for r in train], label=f"train {metric}", alpha=0.6)
    if val:
        steps = [r["step"] for r in val]
        means = [r[metric] for r in val]
        cis = [r.get("ci95", 0.0) for r in val]
        ax_metric.errorbar(steps, means, yerr=cis, marker="o", capsize=3, label=f"val {metric} (95% CI)")
    ax_metric.set_xlabel("meta-training step")
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    fig.tight_layout()
    return fig


def setting(r: dict[str, Any]) -> str:
    """``5-way 1-shot``; ways and shots of 0 mean Meta-Dataset's variable-way variable-shot episodes.

    Other metrics (regression, segmentation) name the shots, and the ways only when there are several.
    """
    if r["metric"] != "accuracy":
        return f"{r['ways']}-way {r['shots']}-shot" if (r.get("ways") or 1) > 1 else f"{r['shots']}-shot"
    return f"{r['ways']}-way {r['shots']}-shot" if r["ways"] else "variable-way variable-shot"


def results_table(results: Sequence[dict[str, Any]], title: str = "evaluation") -> Table:
    """A rich table of evaluation results (one row per ways x shots setting)."""
    table = Table(title=title)
    for col in ("setting", "metric", "mean ± 95% CI", "episodes", "median adapt (ms)", "ECE", "NLL"):
        table.add_column(col, justify="right" if col != "setting" else "left", no_wrap=col in ("setting", "mean ± 95% CI"))
    for r in results:
        cal = r.get("calibration") or {}
        table.add_row(
            setting(r),
            r["metric"],
            _fmt(r),
            str(r["episodes"]),
            f"{1000 * r['median_adapt_seconds']:.2f}",
            f"{100 * cal['ece']:.2f}%" if cal else "-",
            f"{cal['nll']:.3f}" if cal else "-",
        )
    return table


def _fmt(r: dict[str, Any]) -> str:
    if r["metric"] == "accuracy":
        return f"{100 * r['mean']:.2f}% ± {100 * r['ci95']:.2f}"
    return f"{r['mean']:.4f} ± {r['ci95']:.4f}"


def run_report(
    run_dir: str | Path, training: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None
) -> Report:
    """The report of a run directory: ``report.md`` and its figures.

    ``training`` (the summary of a run that just finished, with its learning curve) and
    ``evaluation`` (fresh test results) join the report as ``training.json`` and
    ``evaluation.json``; whichever is not given is read from the run directory.
    """
    paths = RunPaths(Path(run_dir))
    config = load_run_config(run_dir)
    report = Report()
    if training is not None:
        report.data[paths.summary.name] = training
        curve = learning_curve(paths.metrics, training["metric"])
        if curve is not None:
            report.plots[paths.curve.name] = Plot(curve)
    else:
        training = read_json(paths.summary)
    if evaluation is not None:
        report.data[paths.evaluation.name] = evaluation
    else:
        evaluation = read_json(paths.evaluation)
    d = config.dataset
    lines = [
        f"# metakit run `{config.name}`",
        "",
        f"- learner: **{config.learner.name}** {config.learner.options or ''}",
        f"- backbone: {config.backbone.name} {config.backbone.options or ''}",
        f"- dataset: {d.name} (split: {d.split}, rotations: {d.rotations}) {d.options or ''}",
        (
            f"- training episodes: {config.episodes.ways}-way {config.episodes.shots}-shot, "
            f"{config.episodes.queries} queries/class, meta-batch {config.episodes.meta_batch}"
            if config.episodes.sampler != "metadataset" else
            f"- training episodes: Meta-Dataset's variable-way variable-shot, meta-batch {config.episodes.meta_batch}"
        ),
        f"- seed: {config.seed}; resolved config: `config.yaml`",
        "",
    ]
    if training:
        metric = training["metric"]
        best = training.get(f"best_val_{metric}")
        lines += [
            "## Meta-training",
            "",
            f"- steps: {training['steps']}{' (stopped early)' if training.get('stopped_early') else ''}; "
            f"time: {training['train_seconds']:.1f} s on {training['device']} with {training['threads']} thread(s)"
            f"{', ' + str(training['world_size']) + ' processes' if training.get('world_size', 1) > 1 else ''}",
            f"- best validation {metric}: {best:.4f} at step {training['best_step']}" if best is not None else "- no validation yet",
            f"- parameters: {training['parameters']:,}",
            "",
            "![learning curve](learning_curve.png)",
            "",
        ]
    if evaluation:
        lines += [
            f"## Evaluation ({evaluation['split']} split, checkpoint `{evaluation['checkpoint']}`, episode seed {evaluation['episode_seed']})",
            "",
            "| setting | metric | mean ± 95% CI | episodes | median adaptation (ms) | ECE | NLL |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for r in evaluation["results"]:
            cal = r.get("calibration") or {}
            ece = f"{100 * cal['ece']:.2f}%" if cal else "-"
            nll = f"{cal['nll']:.3f}" if cal else "-"
            lines.append(
                f"| {setting(r)}, {r['queries'] or 'up to 10'} queries | {r['metric']} | {_fmt(r)} "
                f"| {r['episodes']} | {1000 * r['median_adapt_seconds']:.2f} | {ece} | {nll} |"
            )
        curves = {f"{r['ways']}w{r['shots']}s": r["calibration"] for r in evaluation["results"] if r.get("calibration")}
        if curves:
            from metakit.calibration import reliability_diagram

            report.plots["reliability.png"] = Plot(reliability_diagram(curves, title=f"{config.name}: reliability"))
            lines += ["", "![reliability diagram](reliability.png)"]
        lines.append("")
    report.text[paths.report.name] = "\n".join(lines)
    return report
