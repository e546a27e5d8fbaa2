"""Vectorised episode sampling with gymnasium's ``SyncVectorEnv``.

One call of :func:`collect` runs exactly one episode in every sub-environment, side by side, and
returns them as time-major tensors ``[T, N, ...]`` with a ``mask`` that is 1 on the steps that
belong to the episode (an episode that terminates early is padded). Which task each sub-environment
runs is set with :func:`set_tasks` before the call; the policy is any function from the batch of
observations to a batch of actions, so the same sampler serves a per-task adapted MAML policy
(sub-environments grouped by task) and a recurrent RL² policy (one task per sub-environment).

The vector env is synchronous on purpose: on 1-2 CPU cores, worker processes cost more in
pickling than they save. Every reset is seeded, so the same seeds give the same episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metakit.rl.tasks import Task, make_env, task_env

#: ``policy(obs [N, obs_dim], alive [N] bool) -> actions [N, ...]`` (a torch tensor).
ActFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Episodes:
    """One episode per sub-environment, time-major.

    ``obs`` [T, N, obs_dim], ``actions`` [T, N, act_dim] (or [T, N] for discrete), ``rewards`` and
    ``mask`` [T, N] (1 on the episode's steps), ``success`` [N] (Meta-World's flag reached at any
    step; 0 where the env reports none, with ``reports_success`` false).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    success: torch.Tensor
    reports_success: bool = False

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, [N]."""
        return (self.rewards * self.mask).sum(0)

    def select(self, columns: slice | Sequence[int]) -> Episodes:
        """The episodes of some sub-environments (e.g. those of one task)."""
        return Episodes(self.obs[:, columns], self.actions[:, columns], self.rewards[:, columns],
                        self.mask[:, columns], self.success[columns], self.reports_success)

    @property
    def steps(self) -> int:
        """Number of environment steps that belong to episodes."""
        return int(self.mask.sum().item())


def make_vector_env(name: str, count: int, horizon: int | None = None, options: dict[str, Any] | None = None) -> Any:
    """``count`` copies of task environment ``name`` in one synchronous vector env."""
    import gymnasium as gym

    make_env(name, horizon, options).close()  # fail on bad names/options before building copies
    return gym.vector.SyncVectorEnv([lambda: make_env(name, horizon, options) for _ in range(count)])


def set_tasks(envs: Any, tasks: Sequence[Task]) -> None:
    """Give sub-environment ``i`` task ``tasks[i]`` (effective from the next reset)."""
    if len(tasks) != envs.num_envs:
        raise ValueError(f"{len(tasks)} tasks for {envs.num_envs} sub-environments")
    for env, task in zip(envs.envs, tasks):
        task_env(env).set_task(task)


def collect(envs: Any, policy: ActFn, seed: int, horizon: int,
            after_step: Callable[[torch.Tensor], None] | None = None) -> Episodes:
    """Run one episode in every sub-environment of ``envs`` with ``policy``; resets are seeded by ``seed``.

    ``after_step(rewards)`` is called after each step (RL²'s policy feeds the reward back in).
    """
    n = envs.num_envs
    obs, _ = envs.reset(seed=[int(seed) * 100_003 + i for i in range(n)])
    alive = np.ones(n, dtype=bool)
    obs_buf, act_buf, rew_buf, mask_buf = [], [], [], []
    success = np.zeros(n, dtype=np.float32)
    reports_success = False
    space = envs.single_action_space
    bounds = (space.low, space.high) if hasattr(space, "low") else None
    for _ in range(horizon):
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        with torch.no_grad():
            action = policy(obs_t, torch.as_tensor(alive))
        # The policy's actions are unbounded Gaussians: clip only what the environment sees.
        sent = np.clip(action.numpy(), *bounds) if bounds is not None else action.numpy()
        next_obs, reward, terminated, truncated, info = envs.step(sent)
        obs_buf.append(obs_t)
        act_buf.append(action)
        rew_buf.append(torch.as_tensor(np.where(alive, reward, 0.0), dtype=torch.float32))
        if after_step is not None:
            after_step(rew_buf[-1])
        mask_buf.append(torch.as_tensor(alive, dtype=torch.float32))
        if "success" in info:
            reports_success = True
            flags = np.asarray(info["success"], dtype=np.float32) * np.asarray(info.get("_success", True))
            success = np.maximum(success, np.where(alive, flags, 0.0))
        # A finished sub-env keeps being stepped (and auto-reset) with the others; its steps are masked.
        alive = alive & ~(np.asarray(terminated) | np.asarray(truncated))
        obs = next_obs
        if not alive.any():
            break
    return Episodes(torch.stack(obs_buf), torch.stack(act_buf), torch.stack(rew_buf), torch.stack(mask_buf),
                    torch.as_tensor(success), reports_success)
