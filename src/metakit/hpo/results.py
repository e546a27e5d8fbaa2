"""What a tuning study leaves behind: best config as YAML, the trials table, Optuna's plots, a report."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from metakit.runs import Plot, Report, pyplot, write_report


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain row per trial: number, state, value, parameters, duration, warm start, retry, pruning step."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{f"params.{k}": v for k, v in t.params.items()},
            "seconds": round(duration, 2) if duration is not None else None,
            "warm_start": t.user_attrs.get("warm_start", ""),
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "last_step": max(t.intermediate_values) if t.intermediate_values else "",
            "error": t.user_attrs.get("error", ""),
        })
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def trials_csv(rows: list[dict[str, Any]]) -> str:
    """The trials table as CSV."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return buf.getvalue()


def trials_markdown(rows: list[dict[str, Any]]) -> str:
    """The trials table as markdown."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(c.removeprefix("params.") for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def draw_plots(study: Any) -> dict[str, tuple[str, Any]]:
    """Optuna's optimisation-history and parameter-importance plots (matplotlib backend).

    Returns ``{plot name: (file name, figure)}`` for the plots that could be drawn (importances
    need at least two completed trials that differ).
    """
    plt = pyplot()
    from optuna.visualization import matplotlib as ovm

    drawn: dict[str, tuple[str, Any]] = {}
    plots = {"history": (ovm.plot_optimization_history, "optimization_history.png"),
             "importance": (ovm.plot_param_importances, "param_importances.png")}
    for name, (fn, filename) in plots.items():
        try:
            # Optuna's plots switch matplotlib's global style; the context restores it afterwards.
            with warnings.catch_warnings(), plt.style.context("default"):
                warnings.simplefilter("ignore")  # Optuna flags its matplotlib backend as experimental
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            drawn[name] = (filename, fig)
        except Exception:  # noqa: BLE001 - too few or identical trials: the report says the plot is missing
            kept = [fig for _, fig in drawn.values()]
            for number in plt.get_fignums():  # the half-drawn figure goes; those already drawn stay to be saved
                if plt.figure(number) not in kept:
                    plt.close(number)
    return drawn


def write_results(study: Any, out: Path, best_yaml: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``best.yaml``, ``trials.csv``, ``trials.md``, the PNG plots, ``tune.json`` and ``tune.md``."""
    rows = trial_rows(study)
    drawn = draw_plots(study) if any(r["state"] == "COMPLETE" for r in rows) else {}
    plots = {name: filename for name, (filename, _) in drawn.items()}
    summary = {**summary, "plots": plots}
    lines = [
        f"# Tuning study {summary['study']}",
        "",
        f"- storage: `{summary['storage']}`; sampler {summary['sampler']}, pruner {summary['pruner']}",
        f"- trials: {summary['counts']}",
    ]
    if summary.get("best_value") is not None:
        lines += [
            f"- best: trial {summary['best_trial']}, {summary['metric']} {summary['best_value']:.4f}",
            f"- best parameters: {summary['best_params']}",
            "- ready-to-run config: `best.yaml` (`metakit train best.yaml`)",
        ]
    if summary.get("warm_start"):
        lines.append(f"- warm start: {summary['warm_start']}")
    lines += ["", "## Trials", "", trials_markdown(rows)]
    for name, filename in plots.items():
        lines += [f"![{name}]({filename})", ""]
    text = {"trials.csv": trials_csv(rows), "trials.md": trials_markdown(rows)}
    if best_yaml is not None:
        text["best.yaml"] = best_yaml
    text["tune.md"] = "\n".join(lines)
    write_report(out, Report(text=text, data={"tune.json": summary},
                             plots={filename: Plot(fig) for filename, fig in drawn.values()}))
    return summary
