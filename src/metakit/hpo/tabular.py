"""Tabular leave-one-task-out benchmark of warm starts on recorded HPO results.

On each held-out task the optimiser may only obtain the scores of that task's evaluated
configurations. Every optimiser proposes in the continuous search space (Optuna's samplers, as
they would in a live study), and the objective *snaps* a proposal to the nearest evaluated
configuration of the held-out task (:class:`~metakit.hpo.warmstart.SpaceEncoder` distance) and
returns its recorded score. The black-box is therefore piecewise constant over the Voronoi cells
of the evaluated configurations, a well-defined function on the whole space; the sampler sees the
parameters it proposed and the value it got, exactly as in a live study. Warm-start
configurations (from other tasks) are enqueued and snapped the same way. Random search draws the
held-out task's evaluated configurations uniformly without replacement (that is what the data
are: random-search samples).

Regret is normalised per task: ``(best - best found so far) / (best - worst)`` over the task's
evaluated configurations; tasks whose configurations all score the same are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metakit.hpo.warmstart import PriorTask, PriorTasks, SpaceEncoder, enqueue_configs, greedy_portfolio

WARM_SIZE = 10


def suggest_space(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Ask an Optuna trial for every parameter of ``space`` (name -> distribution)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, list(d.choices))
        elif isinstance(d, IntDistribution):
            out[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            out[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return out


def run_optuna(task: PriorTask, encoder: SpaceEncoder, trials: int, seed: int,
               warm: Sequence[dict[str, Any]] = ()) -> np.ndarray:
    """Normalised best-so-far regret per trial of Optuna's TPE on ``task``, after enqueuing ``warm``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    enqueue_configs(study, warm, space=encoder.space)
    regrets: list[float] = []

    def objective(trial: Any) -> float:
        params = suggest_space(trial, encoder.space)
        idx = int(task.nearest(encoder, [params])[0])
        regrets.append(float(task.normalized_regret(task.scores[idx : idx + 1])[0]))
        return float(task.scores[idx])

    study.optimize(objective, n_trials=trials)
    return np.minimum.accumulate(np.array(regrets))


def run_random(task: PriorTask, trials: int, seed: int) -> np.ndarray:
    """Best-so-far regret of random search over the task's evaluated configurations."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(task.scores))[:trials]
    regrets = task.normalized_regret(task.scores[order])
    if len(regrets) < trials:  # fewer configurations than trials: the best is found by then
        regrets = np.concatenate([regrets, np.zeros(trials - len(regrets))])
    return np.minimum.accumulate(regrets)


@dataclass
class LotoResult:
    """Regret curves ``[tasks, seeds, trials]`` per method, and the held-out task names."""

    curves: dict[str, np.ndarray]
    tasks: list[str]
    skipped: list[str] = field(default_factory=list)

    def summary(self, at: Sequence[int] = (1, 5, 10, 20, 30, 50)) -> list[dict[str, Any]]:
        """Median and mean (over tasks, after averaging seeds) normalised regret at each trial count."""
        rows = []
        for method, c in self.curves.items():
            per_task = c.mean(axis=1)
            row: dict[str, Any] = {"method": method}
            for n in at:
                if n <= per_task.shape[1]:
                    row[f"median@{n}"] = float(np.median(per_task[:, n - 1]))
                    row[f"mean@{n}"] = float(per_task[:, n - 1].mean())
            rows.append(row)
        return rows

    def median_curve(self, method: str) -> np.ndarray:
        """Median over tasks of the seed-averaged regret, per trial count."""
        return np.median(self.curves[method].mean(axis=1), axis=0)

    def mean_curve(self, method: str) -> np.ndarray:
        """Mean over tasks of the seed-averaged regret, per trial count."""
        return self.curves[method].mean(axis=(0, 1))


def leave_one_task_out(prior: PriorTasks, trials: int = 50, seeds: Sequence[int] = (0,), warm_size: int = WARM_SIZE,
                       methods: Sequence[str] = ("random", "tpe", "knn+tpe", "portfolio+tpe", "surrogate+tpe"),
                       per_task: int = 5, knn_tasks: int | None = None,
                       progress: Callable[[str], None] | None = None) -> LotoResult:
    """Run every method on every held-out task; warm starts learn from the other tasks only.

    Methods: ``random``; ``tpe`` (cold Optuna TPE); ``knn+tpe`` (best configurations of the
    nearest tasks by meta-features, auto-sklearn 1.0); ``portfolio+tpe`` (greedy portfolio,
    auto-sklearn 2.0); ``surrogate+tpe`` (the transfer surrogate's pick among the held-out
    task's evaluated configurations, whose values it never sees). Each warm start enqueues
    ``warm_size`` configurations, then TPE continues.
    """
    tasks = [t for t in prior.tasks if t.scores.max() - t.scores.min() > 1e-12]
    skipped = [t.name for t in prior.tasks if t not in tasks]
    encoder = prior.encoder
    # Candidates (the best few of each task) and their regret on every task, computed once;
    # each fold drops the held-out task's candidates and column.
    cands: list[dict[str, Any]] = []
    origin: list[int] = []
    for i, task in enumerate(tasks):
        for j in task.ranked()[:per_task]:
            cands.append(dict(task.configs[j]))
            origin.append(i)
    full = PriorTasks(tasks, prior.space)
    full.encoder = encoder
    regret = full.regret_matrix(cands) if "portfolio+tpe" in methods else None
    origin_a = np.array(origin)
    curves = {m: np.zeros((len(tasks), len(seeds), trials)) for m in methods}
    for t, task in enumerate(tasks):
        others = PriorTasks([o for k, o in enumerate(tasks) if k != t], prior.space)
        others.encoder = encoder  # share the encoding cache across folds
        warm: dict[str, list[dict[str, Any]]] = {}
        if "knn+tpe" in methods:
            warm["knn+tpe"] = others.knn_configs(task.metafeatures, size=warm_size, k=knn_tasks)
        if "portfolio+tpe" in methods and regret is not None:
            rows = np.flatnonzero(origin_a != t)
            cols = [k for k in range(len(tasks)) if k != t]
            chosen = greedy_portfolio(regret[np.ix_(rows, cols)], warm_size)
            warm["portfolio+tpe"] = [cands[rows[i]] for i in chosen]
        if "surrogate+tpe" in methods:
            warm["surrogate+tpe"] = others.surrogate_configs(task.configs, task.metafeatures, size=warm_size)
        for s, seed in enumerate(seeds):
            for method in methods:
                if method == "random":
                    curves[method][t, s] = run_random(task, trials, seed)
                else:
                    curves[method][t, s] = run_optuna(task, encoder, trials, seed, warm.get(method, ()))
        if progress:
            progress(task.name)
    return LotoResult(curves, [t.name for t in tasks], skipped)
