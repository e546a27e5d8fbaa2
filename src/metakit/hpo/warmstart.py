"""Meta-learned warm starts for any Optuna study.

Learn from earlier tuning results (prior tasks: configurations and their scores) which
configurations to try first on a new task, then put them at the front of an Optuna study with
``study.enqueue_trial``; the study's own sampler (TPE, CMA-ES, ...) continues from there and
models the warm-start trials like any other.

* :meth:`PriorTasks.knn_configs`: the best configurations of the prior tasks nearest to the new
  task in meta-feature space (auto-sklearn 1.0, Feurer et al. 2015);
* :meth:`PriorTasks.portfolio`: a task-independent ordered list chosen greedily to minimise the
  average normalised regret over the prior tasks (auto-sklearn 2.0, Feurer et al. 2022);
* :meth:`PriorTasks.surrogate_configs`: a transfer surrogate over the new task's candidate
  configurations: each prior task predicts a candidate's regret from its nearest evaluated
  configurations, tasks are weighted by meta-feature similarity, and a greedy pick keeps the
  chosen configurations diverse.

Prior tasks rarely share configurations (random search draws new ones per task), so a
configuration is scored on a prior task by its nearest evaluated configuration there, in the
space scaled to ``[0, 1]`` per numeric parameter (log scale where the distribution is) plus 1 per
mismatched categorical.

Use with any objective::

    import optuna
    from metakit.hpo.warmstart import PriorTasks, enqueue_configs

    prior = PriorTasks.from_storage("sqlite:///old-studies.db")      # one study = one task
    study = optuna.create_study(direction="maximize")
    enqueue_configs(study, prior.portfolio(size=5), space=prior.space)
    study.optimize(objective, n_trials=20)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metakit.config import yaml_load
from metakit.errors import MetakitError, unknown_name
from metakit.hpo.metafeatures import metafeature_distances
from metakit.utils import write_text

METHODS = ("knn", "portfolio", "surrogate")
PORTFOLIO_KIND = "metakit-portfolio"


class SpaceEncoder:
    """Maps configurations to numeric vectors so that nearest neighbours make sense.

    Numeric parameters go to ``[0, 1]`` over their distribution's range (log-scaled where the
    distribution is log); categorical ones to their choice index, compared by equality.
    """

    def __init__(self, space: Mapping[str, Any]) -> None:
        from optuna.distributions import CategoricalDistribution

        self.space = dict(space)
        self.numeric = [k for k, d in self.space.items() if not isinstance(d, CategoricalDistribution)]
        self.categorical = [k for k, d in self.space.items() if isinstance(d, CategoricalDistribution)]

    def _scale(self, name: str, values: np.ndarray) -> np.ndarray:
        d = self.space[name]
        lo, hi = float(d.low), float(d.high)
        if getattr(d, "log", False):
            values, lo, hi = np.log(np.maximum(values, 1e-300)), math.log(lo), math.log(hi)
        return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric [n, d_num], categorical codes [n, d_cat])``; a missing value is NaN / -1."""
        num = np.full((len(configs), len(self.numeric)), np.nan)
        for j, name in enumerate(self.numeric):
            col = np.array([float(c[name]) if c.get(name) is not None else np.nan for c in configs], dtype=np.float64)
            num[:, j] = self._scale(name, col)
        cat = np.full((len(configs), len(self.categorical)), -1, dtype=np.int64)
        for j, name in enumerate(self.categorical):
            choices = list(self.space[name].choices)
            for i, c in enumerate(configs):
                if name in c and c[name] in choices:
                    cat[i, j] = choices.index(c[name])
        return num, cat

    @staticmethod
    def distances(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Pairwise distances ``[len(a), len(b)]``; a parameter missing on either side counts 0.5 / 1."""
        an, ac = a
        bn, bc = b
        diff = an[:, None, :] - bn[None, :, :]
        sq = np.where(np.isnan(diff), 0.25, diff**2).sum(axis=2)
        if ac.shape[1]:
            sq = sq + (ac[:, None, :] != bc[None, :, :]).sum(axis=2)
        return np.sqrt(sq)

    def clip(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` restricted to this space, numeric values clipped into range, unknown choices dropped."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        out: dict[str, Any] = {}
        for name, d in self.space.items():
            if name not in config or config[name] is None:
                continue
            value = config[name]
            if isinstance(d, CategoricalDistribution):
                if value in d.choices:
                    out[name] = value
                continue
            value = min(max(float(value), float(d.low)), float(d.high))
            step = getattr(d, "step", None)
            if step:
                value = float(d.low) + round((value - float(d.low)) / step) * step
                value = min(value, float(d.high))
            out[name] = int(round(value)) if isinstance(d, IntDistribution) else value
        return out


@dataclass
class PriorTask:
    """Tuning results on one task.

    Attributes:
        name: task name (study name, OpenML task id, ...).
        configs: evaluated configurations.
        scores: their scores, higher is better (values of a minimised study are negated).
        metafeatures: the task's meta-features.
    """

    name: str
    configs: list[dict[str, Any]]
    scores: np.ndarray
    metafeatures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if len(self.configs) != len(self.scores) or not len(self.configs):
            raise MetakitError(f"prior task {self.name!r} needs one score per configuration and at least one of each.")
        self._encoded: tuple[np.ndarray, np.ndarray] | None = None
        self._encoder: SpaceEncoder | None = None

    def encoded(self, encoder: SpaceEncoder) -> tuple[np.ndarray, np.ndarray]:
        """The task's configurations encoded by ``encoder`` (cached per encoder)."""
        if self._encoder is not encoder:
            self._encoded, self._encoder = encoder.encode(self.configs), encoder
        assert self._encoded is not None
        return self._encoded

    def nearest(self, encoder: SpaceEncoder, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Index of the nearest evaluated configuration for each of ``configs``."""
        return self.nearest_encoded(encoder, encoder.encode(configs))

    def nearest_encoded(self, encoder: SpaceEncoder, encoded: tuple[np.ndarray, np.ndarray], k: int = 1) -> np.ndarray:
        """Like :meth:`nearest` for encoded configurations; ``k > 1`` gives ``[n, k]`` indices (unordered)."""
        mine = self.encoded(encoder)
        k = min(k, len(self.configs))
        out = np.empty((len(encoded[0]), k), dtype=np.int64)
        for start in range(0, len(out), 256):
            part = (encoded[0][start:start + 256], encoded[1][start:start + 256])
            d = SpaceEncoder.distances(part, mine)
            out[start:start + 256] = d.argmin(axis=1)[:, None] if k == 1 else np.argpartition(d, k - 1, axis=1)[:, :k]
        return out[:, 0] if k == 1 else out

    def normalized_regret(self, scores: np.ndarray) -> np.ndarray:
        """``(best - score) / (best - worst)`` on this task; 0 everywhere if every score is equal."""
        best, worst = self.scores.max(), self.scores.min()
        if best - worst <= 1e-12:
            return np.zeros_like(np.asarray(scores, dtype=np.float64))
        return (best - np.asarray(scores, dtype=np.float64)) / (best - worst)

    def ranked(self) -> np.ndarray:
        """Indices of the configurations, best first (ties keep file order)."""
        return np.argsort(-self.scores, kind="stable")


@dataclass
class PriorTasks:
    """A set of prior tasks over one search space: the knowledge a warm start learns from."""

    tasks: list[PriorTask]
    space: dict[str, Any]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise MetakitError("no prior tasks to warm-start from; give a study or storage with completed trials.")
        if not self.space:
            raise MetakitError("the prior tasks have no search space (no parameters in their trials).")
        self.encoder = SpaceEncoder(self.space)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_studies(cls, studies: Sequence[Any], metafeatures: Mapping[str, Mapping[str, float]] | None = None) -> PriorTasks:
        """Prior tasks from Optuna studies (one study = one task), using their completed trials.

        Meta-features come from ``metafeatures[study_name]`` or the study's ``metafeatures``
        user attribute (``metakit tune`` stores it there).
        """
        from optuna.trial import TrialState

        tasks, space = [], {}
        for study in studies:
            trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
            if not trials:
                continue
            sign = 1.0 if study.direction.name == "MAXIMIZE" else -1.0
            for t in trials:
                for name, dist in t.distributions.items():
                    space.setdefault(name, dist)
            mf = dict((metafeatures or {}).get(study.study_name) or study.user_attrs.get("metafeatures") or {})
            tasks.append(PriorTask(study.study_name, [dict(t.params) for t in trials], sign * np.array([t.value for t in trials]), mf))
        return cls(tasks, space)

    @classmethod
    def from_storage(cls, storage: Any, exclude: Sequence[str] = (), heartbeat: int | None = None) -> PriorTasks:
        """Every study in an Optuna storage (URL, journal path or storage object) except ``exclude``."""
        import optuna

        from metakit.hpo.study import open_storage

        if isinstance(storage, (str, Path)):
            storage = open_storage(str(storage), heartbeat=heartbeat)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names if n not in exclude]
        return cls.from_studies(studies)

    # -- the warm starts ------------------------------------------------------------------------

    def knn_configs(self, metafeatures: Mapping[str, float], size: int = 5, k: int | None = None) -> list[dict[str, Any]]:
        """Best configurations of the ``k`` prior tasks nearest in meta-feature space, nearest first.

        The best configuration of each of the ``k`` nearest tasks comes first, then the
        second-best of each, and so on until ``size`` distinct configurations are chosen.
        """
        order = self.nearest_tasks(metafeatures)
        chosen = [self.tasks[i] for i in order[: (k or size)]]
        out: list[dict[str, Any]] = []
        depth = 0
        while len(out) < size and depth < max(len(t.configs) for t in chosen):
            for task in chosen:
                ranked = task.ranked()
                if depth < len(ranked):
                    _append_unique(out, task.configs[ranked[depth]])
                if len(out) >= size:
                    break
            depth += 1
        return out

    def nearest_tasks(self, metafeatures: Mapping[str, float]) -> np.ndarray:
        """Indices of the prior tasks, nearest in meta-feature space first."""
        if not metafeatures:
            raise MetakitError("the knn warm start needs the new task's meta-features; use the portfolio instead.")
        missing = [t.name for t in self.tasks if not t.metafeatures]
        if missing:
            raise MetakitError(f"prior task {missing[0]!r} has no meta-features; the knn warm start cannot rank it.")
        dist = metafeature_distances(dict(metafeatures), [t.metafeatures for t in self.tasks])
        return np.argsort(dist, kind="stable")

    def candidates(self, per_task: int = 5) -> list[dict[str, Any]]:
        """Candidate configurations: the ``per_task`` best of every prior task (deduplicated)."""
        out: list[dict[str, Any]] = []
        for task in self.tasks:
            for i in task.ranked()[:per_task]:
                _append_unique(out, task.configs[i])
        return out

    def regret_matrix(self, configs: Sequence[Mapping[str, Any]], neighbours: int = 1) -> np.ndarray:
        """Normalised regret ``[len(configs), len(tasks)]`` of each configuration on each prior task.

        A configuration's regret on a task is that of its nearest evaluated configuration there,
        or the mean over its ``neighbours`` nearest (a smoother estimate from noisy random-search
        results).
        """
        encoded = self.encoder.encode(configs)
        out = np.empty((len(configs), len(self.tasks)))
        for j, task in enumerate(self.tasks):
            idx = task.nearest_encoded(self.encoder, encoded, k=neighbours)
            regret = task.normalized_regret(task.scores[idx])
            out[:, j] = regret if regret.ndim == 1 else regret.mean(axis=1)
        return out

    def portfolio(self, size: int = 10, per_task: int = 5, regret: np.ndarray | None = None,
                  candidates: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """An ordered portfolio minimising the mean (over prior tasks) of the best regret it reaches.

        Greedy forward selection (auto-sklearn 2.0): each step adds the candidate that lowers the
        average of ``min over the portfolio so far`` the most; it stops early once no candidate
        helps. ``regret`` (a precomputed :meth:`regret_matrix` of ``candidates``) skips the lookups.
        """
        cands = list(candidates) if candidates is not None else self.candidates(per_task)
        r = self.regret_matrix(cands) if regret is None else np.asarray(regret)
        chosen = greedy_portfolio(r, size)
        return [dict(cands[i]) for i in chosen]

    def task_weights(self, metafeatures: Mapping[str, float] | None, bandwidth: float = 1.0) -> np.ndarray:
        """Similarity of each prior task to the new one, ``exp(-(d / median d)^2 / bandwidth^2)``, summing to 1.

        ``d`` is the z-scored meta-feature distance; uniform without meta-features.
        """
        if metafeatures and all(t.metafeatures for t in self.tasks):
            d = metafeature_distances(dict(metafeatures), [t.metafeatures for t in self.tasks])
            d = d / max(float(np.median(d)), 1e-12)
            w = np.exp(-(d**2) / bandwidth**2)
        else:
            w = np.ones(len(self.tasks))
        return w / w.sum()

    def surrogate_configs(self, candidates: Sequence[Mapping[str, Any]], metafeatures: Mapping[str, float] | None = None,
                          size: int = 5, bandwidth: float = 1.0, neighbours: int = 5) -> list[dict[str, Any]]:
        """Transfer surrogate: an ordered pick among the new task's ``candidates``.

        Each prior task acts as a surrogate of the new one: a candidate's regret there is the mean
        regret of its ``neighbours`` nearest evaluated configurations. The tasks are weighted by
        meta-feature similarity (:meth:`task_weights`), and the candidates are chosen by greedy
        forward selection on that weighted regret matrix, so the pick is good on the similar tasks
        *and* diverse (a second pick covers the tasks where the first is poor). Useful when the new
        task's candidate set is known (a finite grid, or recorded evaluations).
        """
        r = self.regret_matrix(candidates, neighbours=neighbours)
        w = self.task_weights(metafeatures, bandwidth)
        chosen = greedy_portfolio(r * (w * len(w))[None, :], size)
        return [dict(candidates[i]) for i in chosen]

    def predict_regret(self, candidates: Sequence[Mapping[str, Any]], metafeatures: Mapping[str, float] | None = None,
                       bandwidth: float = 1.0, neighbours: int = 5) -> np.ndarray:
        """The surrogate's prediction: similarity-weighted mean regret of each candidate over the prior tasks."""
        return self.regret_matrix(candidates, neighbours=neighbours) @ self.task_weights(metafeatures, bandwidth)


def greedy_portfolio(regret: np.ndarray, size: int) -> list[int]:
    """Greedy forward selection on a regret matrix ``[candidates, tasks]``; returns candidate indices."""
    regret = np.asarray(regret, dtype=np.float64)
    if regret.ndim != 2 or not regret.size:
        raise MetakitError("a portfolio needs at least one candidate configuration and one prior task.")
    current = np.full(regret.shape[1], np.inf)
    chosen: list[int] = []
    for _ in range(min(size, regret.shape[0])):
        scores = np.minimum(current[None, :], regret).mean(axis=1)
        scores[chosen] = np.inf
        best = int(np.argmin(scores))
        if chosen and scores[best] >= current.mean() - 1e-15:
            break  # no candidate lowers the average regret any more
        chosen.append(best)
        current = np.minimum(current, regret[best])
    return chosen


def _append_unique(out: list[dict[str, Any]], config: Mapping[str, Any]) -> None:
    config = dict(config)
    if config not in out:
        out.append(config)


def enqueue_configs(study: Any, configs: Sequence[Mapping[str, Any]], space: Mapping[str, Any] | None = None,
                    source: str = "warm-start") -> int:
    """Enqueue ``configs`` at the front of ``study`` (any Optuna study); returns how many were enqueued.

    With ``space`` (name -> Optuna distribution) each configuration is restricted to the space
    and clipped into range first. A configuration already in the study (any state) is skipped, so
    a restarted worker does not enqueue twice. Enqueued trials carry the user attribute
    ``warm_start`` = ``source``.
    """
    encoder = SpaceEncoder(space) if space else None
    count = 0
    for config in configs:
        params = encoder.clip(config) if encoder else dict(config)
        if not params:
            continue
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(params, user_attrs={"warm_start": source}, skip_if_exists=True)
        count += len(study.get_trials(deepcopy=False)) > before
    return count


# -- portfolio files ---------------------------------------------------------------------------


def save_portfolio(path: str | Path, configs: Sequence[Mapping[str, Any]], space: Mapping[str, Any],
                   info: Mapping[str, Any] | None = None) -> None:
    """Write a portfolio (ordered configurations + their space) as YAML, atomically."""
    from optuna.distributions import distribution_to_json

    data = {
        "kind": PORTFOLIO_KIND,
        "space": {k: json.loads(distribution_to_json(d)) for k, d in space.items()},
        "configs": [_plain(c) for c in configs],
        **({"info": _plain(dict(info))} if info else {}),
    }
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_portfolio(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a portfolio file written by :func:`save_portfolio`: ``(configs, space)``."""
    from optuna.distributions import json_to_distribution

    path = Path(path)
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MetakitError(f"cannot read portfolio {path}: {type(exc).__name__}; give a file written by metakit.") from None
    if not isinstance(data, dict) or data.get("kind") != PORTFOLIO_KIND or not isinstance(data.get("configs"), list):
        raise MetakitError(f"{path} is not a metakit portfolio file (kind: {PORTFOLIO_KIND}, configs: [...]).")
    try:
        space = {k: json_to_distribution(json.dumps(v)) for k, v in (data.get("space") or {}).items()}
    except Exception:  # noqa: BLE001 - malformed distribution entries
        raise MetakitError(f"portfolio {path} has a malformed space section.") from None
    return [dict(c) for c in data["configs"] if isinstance(c, dict)], space


def check_method(method: str) -> None:
    """Fail with one line unless ``method`` is a warm-start method."""
    if method not in METHODS:
        raise unknown_name("warm-start method", method, METHODS)
