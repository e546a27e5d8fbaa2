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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metakit.errors import MetakitError
from metakit.evaluation import mean_ci95
from metakit.rl.config import RLConfig, load_rl_run
from metakit.rl.maml_rl import MamlRL
from metakit.rl.report import markdown_table, run_report
from metakit.rl.tasks import make_env, task_env
from metakit.rl.training import build
from metakit.runs import write_report
from metakit.utils import load_checkpoint, set_threads

__all__ = ["evaluate_policy", "evaluate_rl_run", "markdown_table"]  # markdown_table: the CLI prints the report's table


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
    write_report(root, run_report(root, evaluation=report))
    return report
