"""The meta-RL training loop: phases, checkpoints, exact resume, metrics and the run directory.

A MAML-RL run trains two policies one after the other, each a *phase* with its own checkpoint:
``meta`` (MAML-RL) and, unless ``eval.baselines`` is false, ``pretrained`` (the same outer update
without an inner loop: the multi-task baseline). RL² and PEARL runs have the ``meta`` phase only.

Iteration ``i`` of phase ``p`` draws its tasks, environment seeds and action noise from
``numpy.random.default_rng([seed, p, i])``, so what an iteration does depends only on the weights
and optimiser state it starts from: a run resumed from its last checkpoint gives the same numbers
on CPU as one that never stopped.

Run directory (the spine's layout, :mod:`metakit.runs`)::

    config.yaml  metrics.jsonl  checkpoints/{meta,pretrained}.pt  training.json
    learning_curve.png  evaluation.json  adaptation_curve.png  report.md
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from metakit.errors import MetakitError
from metakit.rl.config import RLConfig, load_rl_run
from metakit.rl.report import run_report
from metakit.rl.maml_rl import MamlRL, TaskBatchSampler
from metakit.rl.pearl import PEARL
from metakit.rl.policies import MLPPolicy, RecurrentPolicy, space_sizes
from metakit.rl.rl2 import RL2, TrialRunner
from metakit.rl.rollout import make_vector_env
from metakit.rl.tasks import TaskEnv, make_env, task_env
from metakit.runs import Run, progress_bar, write_report
from metakit.utils import set_threads

PHASES = ("meta", "pretrained")


@dataclass
class Setup:
    """What a run builds from its config: the algorithm, a task source and the episode length."""

    algorithm: MamlRL | RL2 | PEARL
    tasks: TaskEnv
    horizon: int


def build_policy(config: RLConfig, seed: int) -> MLPPolicy | RecurrentPolicy:
    """The run's policy, initialised from ``seed`` (the same weights for every phase and baseline)."""
    env = make_env(config.env.name, config.env.horizon, config.env.options)
    obs_dim, action_dim, discrete = space_sizes(env.observation_space, env.action_space)
    env.close()
    torch.manual_seed(seed)
    p = config.policy
    if config.algorithm == "rl2":
        return RecurrentPolicy(obs_dim, action_dim, discrete, p.recurrent_hidden, p.init_std)
    return MLPPolicy(obs_dim, action_dim, discrete, p.hidden, p.activation, p.init_std)


def build(config: RLConfig, phase: str = "meta", episodes_per_task: int | None = None) -> Setup:
    """The algorithm of ``phase`` with its vector env (``episodes_per_task`` overrides the training value)."""
    source = make_env(config.env.name, config.env.horizon, config.env.options)
    horizon = _time_limit(source)
    if horizon is None:
        raise MetakitError(f"environment {config.env.name!r} has no episode limit; set env.horizon.")
    t = config.train
    if config.algorithm == "pearl":
        return Setup(_build_pearl(config, source, horizon), task_env(source), horizon)
    policy = build_policy(config, config.seed)
    if config.algorithm == "rl2":
        r = config.rl2
        envs = make_vector_env(config.env.name, t.meta_batch, config.env.horizon, config.env.options)
        algo: MamlRL | RL2 | PEARL = RL2(policy, TrialRunner(envs, horizon), **asdict(r), gamma=t.gamma,
                                         gae_lambda=t.gae_lambda)
    else:
        m = config.maml
        episodes = episodes_per_task or t.episodes_per_task
        envs = make_vector_env(config.env.name, t.meta_batch * episodes, config.env.horizon, config.env.options)
        inner_steps = m.inner_steps if phase == "meta" else 0
        algo = MamlRL(policy, TaskBatchSampler(envs, t.meta_batch, episodes, horizon),
                      **{**asdict(m), "inner_steps": inner_steps}, gamma=t.gamma, gae_lambda=t.gae_lambda)
    return Setup(algo, task_env(source), horizon)


def _build_pearl(config: RLConfig, source: Any, horizon: int) -> PEARL:
    obs_dim, action_dim, discrete = space_sizes(source.observation_space, source.action_space)
    if discrete:
        raise MetakitError(f"pearl needs continuous (Box) actions; {config.env.name!r} has discrete ones: use maml-rl or rl2.")
    p, space = config.pearl, source.action_space
    # PEARL keeps a replay buffer per training task: a fixed set, drawn once from the run's seed.
    train_tasks = task_env(source).sample_tasks(p.train_tasks, np.random.default_rng([config.seed, 99]), "train")
    envs = make_vector_env(config.env.name, config.train.meta_batch, config.env.horizon, config.env.options)
    torch.manual_seed(config.seed)
    options = {k: v for k, v in asdict(p).items() if k != "train_tasks"}
    return PEARL(envs, obs_dim, action_dim, torch.as_tensor(space.low, dtype=torch.float32),
                 torch.as_tensor(space.high, dtype=torch.float32), horizon, train_tasks, gamma=config.train.gamma, **options)


def _time_limit(env: Any) -> int | None:
    while env is not None:
        if hasattr(env, "_max_episode_steps"):
            return int(env._max_episode_steps)
        env = getattr(env, "env", None)
    return None


def iteration_seeds(seed: int, phase: int, iteration: int) -> tuple[np.random.Generator, int, torch.Generator]:
    """Task rng, environment seed and action-noise generator of one iteration (see the module docstring)."""
    rng = np.random.default_rng([seed, phase, iteration])
    env_seed = int(rng.integers(2**31 - 1))
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, env_seed, generator


class RLTrainer:
    """Trains every phase of a meta-RL run into ``run_dir``.

    Args:
        config: the run's config.
        run_dir: the run directory.
        resume: continue from the checkpoints in ``run_dir``.
        progress: show rich progress bars.
    """

    def __init__(self, config: RLConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.config, self.root, self.resume, self.progress = config, Path(run_dir), resume, progress
        self.run = Run(self.root, domain="rl")
        self.console = Console(stderr=True)

    def checkpoint(self, phase: str) -> Path:
        """The checkpoint file of ``phase``."""
        return self.run.checkpoint(phase)

    def phases(self) -> list[tuple[str, int]]:
        """``(phase, iterations)`` to train."""
        t = self.config.train
        out = [("meta", t.iterations)]
        if self.config.algorithm == "maml-rl" and self.config.eval.baselines:
            out.append(("pretrained", t.pretrained_iterations if t.pretrained_iterations is not None else t.iterations))
        return [(name, n) for name, n in out if n > 0]

    def _prepare(self) -> None:
        self.run.start(self.config.to_yaml(), self.resume, lambda: load_rl_run(self.root).to_dict(), self.config.to_dict(),
                       extendable=("train.iterations", "train.pretrained_iterations"))

    def fit(self) -> dict[str, Any]:
        """Train every phase; returns the summary also written to ``training.json``."""
        threads = set_threads(self.config.train.threads)
        env = self.config.env
        make_env(env.name, env.horizon, env.options).close()  # bad names/options fail before the run dir exists
        self._prepare()
        summary: dict[str, Any] = {"algorithm": self.config.algorithm, "env": self.config.env.name, "threads": threads,
                                   "phases": {}}
        for index, (phase, iterations) in enumerate(self.phases()):
            summary["phases"][phase] = self._fit_phase(phase, index, iterations)
        summary["train_seconds"] = round(sum(p["train_seconds"] for p in summary["phases"].values()), 2)
        write_report(self.root, run_report(self.root, training=summary))
        return summary

    def _fit_phase(self, phase: str, index: int, iterations: int) -> dict[str, Any]:
        cfg = self.config
        setup = build(cfg, phase)
        algo = setup.algorithm
        start, seconds, env_steps = 0, 0.0, 0.0
        path = self.checkpoint(phase)
        if path.exists():
            saved = self.run.load(phase, f"delete {path} to start over",
                                  keys=("algorithm", "iteration", "train_seconds", "env_steps"))
            algo.load_state_dict(saved["algorithm"])
            start, seconds, env_steps = saved["iteration"], saved["train_seconds"], saved["env_steps"]
        # A resumed phase's log has no duplicates: its records past the checkpoint go.
        self.run.keep_metrics(lambda r: r.get("phase") != phase or r.get("iteration", start + 1) <= start)
        with progress_bar(f"[bold]{cfg.algorithm} {phase}", self.console, self.progress) as bar:
            task = bar.add_task(phase, total=iterations, completed=start, info="")
            t0 = time.perf_counter() - seconds
            for i in range(start, iterations):
                rng, env_seed, generator = iteration_seeds(cfg.seed, index, i)
                if isinstance(algo, PEARL):  # indices into its fixed training tasks
                    count = len(algo.train_tasks)
                    tasks = [int(k) for k in rng.choice(count, min(cfg.train.meta_batch, count), replace=False)]
                else:
                    tasks = setup.tasks.sample_tasks(cfg.train.meta_batch, rng, "train")
                stats = algo.iteration(tasks, env_seed, generator)
                if not all(np.isfinite(v) for v in stats.values()):
                    raise MetakitError(f"non-finite loss at {phase} iteration {i + 1}; lower the learning rates "
                                       f"(maml.outer_lr, maml.inner_lr or rl2.lr).")
                env_steps += stats["env_steps"]
                seconds = time.perf_counter() - t0
                self.run.log({"phase": phase, "iteration": i + 1, **{k: round(v, 5) for k, v in stats.items()},
                           "seconds": round(seconds, 3)})
                if (i + 1) % cfg.train.checkpoint_every == 0 or i + 1 == iterations:
                    self.run.save(phase, {"algorithm": algo.state_dict(), "iteration": i + 1, "train_seconds": seconds,
                                          "env_steps": env_steps})
                info = f"return {stats['return']:.2f}" + (f" (pre {stats['return_pre']:.2f})" if "return_pre" in stats else "")
                bar.update(task, completed=i + 1, info=info)
        return {"iterations": iterations, "train_seconds": round(seconds, 2), "env_steps": int(env_steps)}


def train_rl(config: RLConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a meta-RL run into ``run_dir`` (see :class:`RLTrainer`)."""
    return RLTrainer(config, run_dir, resume=resume, progress=progress).fit()
