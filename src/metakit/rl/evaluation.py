"""Meta-RL evaluation: adaptation curves on held-out tasks, baselines, plots and the report.

Held-out tasks are drawn with ``eval.seed`` (Meta-World: from its test goals), so every run of a
task distribution is evaluated on the same tasks, with the same environment seeds and action
noise for every policy. Reported per policy: the mean return per episode (and Meta-World's success
rate) before adaptation and after each adaptation step, mean ± 95% CI over tasks.

* MAML-RL: *step k* = after k inner policy-gradient steps (fresh episodes before each step, as at
  meta-training time). Beside the meta-learned policy: ``pretrained`` (multi-task policy, trained
  without an inner loop, then adapted with the same steps) and ``scratch`` (the random
  initialisation, adapted with the same steps).
* RL² and PEARL: *step k* = episode k + 1 on the task (no gradient step: the GRU's memory or the
  posterior over the task latent adapts); beside it the untrained policy (``scratch``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metakit.errors import MetakitError
from metakit.evaluation import mean_ci95
from metakit.rl.config import RLConfig, rl_config_from_dict
from metakit.rl.maml_rl import MamlRL
from metakit.rl.tasks import make_env, task_env
from metakit.rl.training import build
from metakit.utils import atomic_path, load_checkpoint, read_jsonl, set_threads, write_json, write_text


def load_rl_run(run_dir: str | Path) -> RLConfig:
    """The resolved config of a meta-RL run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MetakitError(f"{run_dir} is not a metakit rl run directory (no config.yaml); pass the --out of metakit rl train.")
    try:
        return rl_config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError:
        raise MetakitError(f"{path} is not valid YAML; restore it or re-run training.") from None


def _load_policy_state(run_dir: Path, phase: str) -> dict[str, Any] | None:
    path = run_dir / "checkpoints" / f"{phase}.pt"
    if not path.is_file():
        return None
    saved = load_checkpoint(path, "re-run training", keys=("algorithm",))
    if not isinstance(saved["algorithm"], dict) or "policy" not in saved["algorithm"]:
        raise MetakitError(f"checkpoint {path} is not a metakit rl checkpoint (no policy weights); re-run training.")
    return saved["algorithm"]["policy"]


def _summarise(per_task: np.ndarray) -> list[dict[str, float]]:
    """[tasks, steps] -> per step mean ± 95% CI over tasks."""
    out = []
    for column in per_task.T:
        mean, ci, std = mean_ci95([float(v) for v in column])
        out.append({"mean": mean, "ci95": ci, "std": std})
    return out


def evaluate_policy(config: RLConfig, state: dict[str, Any] | None, tasks: list[dict[str, Any]], steps: int,
                    episodes: int, seed: int, progress: Progress | None = None, label: str = "") -> dict[str, Any]:
    """Returns (and success) of the policy with weights ``state`` (``None``: fresh init) on ``tasks``.

    ``returns[k]`` is the mean ± 95% CI over tasks after ``k`` steps, ``gains[k - 1]`` the paired
    per-task difference between step ``k`` and step 0.

    Tasks run in groups of ``train.meta_batch``; group ``g`` uses environment seed ``seed + g`` and
    action noise seeded the same way for every policy.
    """
    setup = build(config, "meta", episodes_per_task=episodes)
    algo = setup.algorithm
    if state is not None:  # otherwise: the fresh initialisation build() made from the run's seed
        algo.policy.load_state_dict(state)
    group = config.train.meta_batch
    returns, success, reports_success = [], [], False
    bar = progress.add_task(label, total=len(tasks), info="") if progress else None
    for g, start in enumerate(range(0, len(tasks), group)):
        chunk = tasks[start:start + group]
        generator = torch.Generator().manual_seed(seed * 7919 + g)
        if isinstance(algo, MamlRL):
            history, _ = algo.adapted_rollouts(chunk, steps, seed + g, generator)
            per_step = [[d.episodes for d in step] for step in history]
        else:  # RL² and PEARL adapt across the episodes of a trial
            trial = algo.evaluate(chunk, steps + 1, seed + g, generator)
            per_step = [[ep.select([j]) for j in range(len(chunk))] for ep in trial]
        returns += [[float(step[j].returns.mean()) for step in per_step] for j in range(len(chunk))]
        success += [[float(step[j].success.mean()) for step in per_step] for j in range(len(chunk))]
        reports_success = reports_success or per_step[0][0].reports_success
        if progress:
            progress.update(bar, advance=len(chunk))
    per_task = np.array(returns)
    # Paired over tasks: the gain of each adaptation step on the same task, far less noisy than
    # comparing the two means' unpaired CIs when tasks differ a lot in difficulty.
    result: dict[str, Any] = {"returns": _summarise(per_task), "gains": _summarise(per_task[:, 1:] - per_task[:, :1]),
                              "per_task_returns": returns}
    if reports_success:
        result["success"] = _summarise(np.array(success))
    return result


def evaluate_rl_run(run_dir: str | Path, tasks: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a trained meta-RL run and its baselines; writes ``evaluation.json``, the plot and the report."""
    root = Path(run_dir)
    config = load_rl_run(root)
    meta = _load_policy_state(root, "meta")
    if meta is None:
        raise MetakitError(f"{root / 'checkpoints' / 'meta.pt'} not found; train the run first (metakit rl train CONFIG --out {root}).")
    e = config.eval
    threads = set_threads(config.train.threads)
    count = tasks or e.tasks
    if count < 2:
        raise MetakitError(f"evaluate on at least 2 tasks (for a confidence interval), got {count}.")
    source = make_env(config.env.name, config.env.horizon, config.env.options)
    held_out = task_env(source).sample_tasks(count, np.random.default_rng(e.seed), "test")
    source.close()
    episodes = e.episodes_per_task or config.train.episodes_per_task
    policies: dict[str, dict[str, Any] | None] = {config.algorithm: meta}
    if e.baselines:
        pretrained = _load_policy_state(root, "pretrained")
        if pretrained is not None:
            policies["pretrained"] = pretrained
        policies["scratch"] = None
    t0 = time.perf_counter()
    columns = (TextColumn("[bold]evaluate {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    results = {}
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        for name, state in policies.items():
            results[name] = evaluate_policy(config, state, held_out, e.adapt_steps, episodes, e.seed, bar, name)
    report = {
        "name": config.name, "algorithm": config.algorithm, "env": config.env.name, "env_options": config.env.options,
        "tasks": count, "adapt_steps": e.adapt_steps, "episodes_per_task": episodes if config.algorithm == "maml-rl" else 1,
        "step_meaning": "inner gradient steps" if config.algorithm == "maml-rl" else "episodes of the task seen before this one",
        "seed": e.seed, "threads": threads, "evaluation_seconds": round(time.perf_counter() - t0, 2), "policies": results,
    }
    write_json(root / "evaluation.json", report)
    adaptation_curve(root, report)
    write_rl_report(root)
    return report


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are files
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def learning_curves(run_dir: Path) -> None:
    """``learning_curve.png``: training return per iteration, before and after adaptation, per phase."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    # Lines cut by a kill, or written by another kind of run in the same folder, stay out of the plot.
    records = [r for r in read_jsonl(path) if "phase" in r and "iteration" in r]
    if not records:
        return
    plt = _plt()
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
    _save(fig, run_dir / "learning_curve.png")
    plt.close(fig)


def adaptation_curve(run_dir: Path, report: dict[str, Any]) -> None:
    """``adaptation_curve.png``: return (and success) on held-out tasks against adaptation steps, ± 95% CI."""
    plt = _plt()
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
    _save(fig, run_dir / "adaptation_curve.png")
    plt.close(fig)


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


def write_rl_report(run_dir: Path) -> Path:
    """``report.md``: config summary, training summary, evaluation table and plots."""
    config = load_rl_run(run_dir)
    lines = [f"# {config.name}: {config.algorithm} on {config.env.name}", ""]
    training = run_dir / "training.json"
    if training.is_file():
        summary = json.loads(training.read_text(encoding="utf-8"))
        for phase, p in summary["phases"].items():
            lines.append(f"- {phase}: {p['iterations']} iterations, {p['env_steps']:,} env steps, "
                         f"{p['train_seconds'] / 60:.1f} min on {summary['threads']} thread(s)")
        lines += ["", "![learning curve](learning_curve.png)", ""]
    evaluation = run_dir / "evaluation.json"
    if evaluation.is_file():
        report = json.loads(evaluation.read_text(encoding="utf-8"))
        lines += [f"## Held-out tasks ({report['tasks']}, seed {report['seed']}), step = {report['step_meaning']}", "",
                  markdown_table(report), "", "![adaptation curve](adaptation_curve.png)", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
