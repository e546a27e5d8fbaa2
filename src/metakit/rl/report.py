"""What a meta-RL run's report says: the learning and adaptation curves and ``report.md``.

``run_report`` builds ``report.md`` from the files in the run directory (config, training summary,
evaluation), so it can be rebuilt at any time, with the figures and JSON just computed;
:func:`metakit.runs.write_report` writes it. Training and evaluation both report through here, so
neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metakit.rl.config import load_rl_run
from metakit.runs import Plot, Report, pyplot, read_json
from metakit.utils import read_jsonl


def learning_curves(run_dir: Path) -> Any | None:
    """``learning_curve.png``: training return per iteration, before and after adaptation, per phase.

    ``None`` when the run has logged no iteration yet.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    # Lines cut by a kill, or written by another kind of run in the same folder, stay out of the plot.
    records = [r for r in read_jsonl(path) if "phase" in r and "iteration" in r]
    if not records:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for phase in dict.fromkeys(r["phase"] for r in records):
        rows = [r for r in records if r["phase"] == phase]
        x = [r["iteration"] for r in rows]
        if "return_pre" in rows[0]:
            ax.plot(x, [r["return_pre"] for r in rows], label=f"{phase}: before adaptation", alpha=0.7)
            ax.plot(x, [r["return"] for r in rows], label=f"{phase}: after adaptation")
        else:
            ax.plot(x, [r["return"] for r in rows], label=f"{phase}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean episode return (training tasks)")
    ax.legend()
    fig.tight_layout()
    return fig


def adaptation_curve(report: dict[str, Any]) -> Any:
    """``adaptation_curve.png``: return (and success) on held-out tasks against adaptation steps, ± 95% CI."""
    plt = pyplot()
    has_success = any("success" in r for r in report["policies"].values())
    fig, axes = plt.subplots(1, 2 if has_success else 1, figsize=(11 if has_success else 6, 4), squeeze=False)
    for name, result in report["policies"].items():
        for ax, key in zip(axes[0], ("returns", "success")):
            if key not in result:
                continue
            steps = list(range(len(result[key])))
            ax.errorbar(steps, [s["mean"] for s in result[key]], yerr=[s["ci95"] for s in result[key]],
                        marker="o", capsize=3, label=name)
            ax.set_xticks(steps)
            ax.set_xlabel("adaptation steps" if report["algorithm"] == "maml-rl" else "episode of the trial - 1")
            ax.set_ylabel("mean episode return" if key == "returns" else "success rate")
            ax.legend()
    axes[0][0].set_title(f"{report['env']}: {report['tasks']} held-out tasks (mean ± 95% CI)")
    fig.tight_layout()
    return fig


def markdown_table(report: dict[str, Any]) -> str:
    """The evaluation as a markdown table: one row per policy, one column per adaptation step."""
    steps = report["adapt_steps"] + 1
    head = "| policy | " + " | ".join(f"step {k}" for k in range(steps)) + " |"
    lines = [head, "|" + "---|" * (steps + 1)]
    for name, result in report["policies"].items():
        cells = [f"{s['mean']:.2f} ± {s['ci95']:.2f}" for s in result["returns"]]
        lines.append(f"| {name} return | " + " | ".join(cells) + " |")
        if result.get("gains"):
            cells = ["-"] + [f"{s['mean']:+.2f} ± {s['ci95']:.2f}" for s in result["gains"]]
            lines.append(f"| {name} gain over step 0 (paired) | " + " | ".join(cells) + " |")
        if "success" in result:
            cells = [f"{s['mean']:.2f} ± {s['ci95']:.2f}" for s in result["success"]]
            lines.append(f"| {name} success | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_report(
    run_dir: str | Path, training: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None
) -> Report:
    """The report of a run directory: ``report.md`` with its figures.

    ``training`` (the summary of a run that just finished, with its learning curve) and
    ``evaluation`` (fresh held-out results, with the adaptation curve) join the report as
    ``training.json`` and ``evaluation.json``; whichever is not given is read from the run directory.
    """
    run_dir = Path(run_dir)
    config = load_rl_run(run_dir)
    report = Report()
    if training is not None:
        report.data["training.json"] = training
        curve = learning_curves(run_dir)
        if curve is not None:
            report.plots["learning_curve.png"] = Plot(curve)
    else:
        training = read_json(run_dir / "training.json")
    if evaluation is not None:
        report.data["evaluation.json"] = evaluation
        report.plots["adaptation_curve.png"] = Plot(adaptation_curve(evaluation))
    else:
        evaluation = read_json(run_dir / "evaluation.json")
    lines = [f"# {config.name}: {config.algorithm} on {config.env.name}", ""]
    if training:
        for phase, p in training["phases"].items():
            lines.append(f"- {phase}: {p['iterations']} iterations, {p['env_steps']:,} env steps, "
                         f"{p['train_seconds'] / 60:.1f} min on {training['threads']} thread(s)")
        lines += ["", "![learning curve](learning_curve.png)", ""]
    if evaluation:
        lines += [f"## Held-out tasks ({evaluation['tasks']}, seed {evaluation['seed']}), step = {evaluation['step_meaning']}",
                  "", markdown_table(evaluation), "", "![adaptation curve](adaptation_curve.png)", ""]
    report.text["report.md"] = "\n".join(lines)
    return report
