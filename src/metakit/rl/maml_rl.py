"""MAML-RL (Finn et al. 2017) with ProMP's outer update (Rothfuss et al. 2019).

One meta-iteration, for a meta-batch of tasks:

1. *Inner loop.* Sample ``episodes_per_task`` episodes of every task with the current parameters
   theta, fit a linear feature baseline, compute GAE advantages, and take ``inner_steps`` policy
   gradient steps ``theta' = theta + inner_lr * grad J(theta)`` (fresh episodes before each step).
   The inner objective is ProMP's low-variance-curvature surrogate
   ``mean(pi_theta(a|s) / stop_grad(pi_theta(a|s)) * A)``: its gradient is the policy gradient,
   its Hessian estimate is the one ProMP shows to have lower variance than the score-function
   form.
2. *Post-update episodes* with each task's adapted theta'.
3. *Outer update.* ``outer_steps`` Adam steps on the clipped surrogate
   ``min(r A, clip(r, 1 +- clip) A)`` of the post-update episodes, with ``r`` the ratio of the
   adapted policy theta'(theta) (recomputed through the inner step, second order unless
   ``first_order``) to the one that sampled them, minus an adaptive KL penalty between the old
   and new pre-update policies on the pre-update episodes (ProMP's trust region).

``inner_steps=0`` turns this into the multi-task *pretrained* baseline: one policy trained with the
same outer update on episodes of all tasks, without an inner loop. Evaluation adapts any policy
(meta-trained, pretrained or freshly initialised) with the same inner step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metakit import inner
from metakit.rl.advantages import linear_baseline_advantages
from metakit.rl.policies import MLPPolicy, Params
from metakit.rl.rollout import Episodes, collect, set_tasks
from metakit.rl.tasks import Task


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the steps where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class TaskData:
    """Episodes of one task with their advantages."""

    episodes: Episodes
    advantages: torch.Tensor


class TaskBatchSampler:
    """Samples episodes for a group of tasks, each with its own policy parameters, in one vector env.

    Sub-environment ``i`` runs task ``i // episodes_per_task``; a group smaller than the vector env
    is padded with repeats of its last task (their episodes are dropped).
    """

    def __init__(self, envs: Any, tasks_per_batch: int, episodes_per_task: int, horizon: int) -> None:
        self.envs, self.tasks_per_batch, self.episodes, self.horizon = envs, tasks_per_batch, episodes_per_task, horizon

    def set_tasks(self, tasks: list[Task]) -> None:
        """Assign ``tasks`` (at most ``tasks_per_batch``) to the sub-environments."""
        padded = tasks + [tasks[-1]] * (self.tasks_per_batch - len(tasks))
        set_tasks(self.envs, [t for t in padded for _ in range(self.episodes)])

    def sample(self, policy: MLPPolicy, params: list[Params], seed: int, generator: torch.Generator) -> list[Episodes]:
        """Episodes of every task under its parameters (tasks set by :meth:`set_tasks`)."""
        e = self.episodes
        padded = params + [params[-1]] * (self.tasks_per_batch - len(params))

        def act(obs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
            return torch.cat([policy.sample(obs[i * e:(i + 1) * e], generator, p) for i, p in enumerate(padded)])

        episodes = collect(self.envs, act, seed, self.horizon)
        return [episodes.select(slice(i * e, (i + 1) * e)) for i in range(len(params))]


class MamlRL:
    """MAML-RL state and one meta-iteration (see the module docstring).

    Args:
        policy: the meta-learned initial policy.
        sampler: episode sampler over ``meta_batch`` tasks.
        inner_lr, inner_steps, first_order: the inner loop.
        outer_lr, outer_steps, clip, kl_coef, kl_target: ProMP's outer update.
        gamma, gae_lambda: advantage estimation.
    """

    def __init__(self, policy: MLPPolicy, sampler: TaskBatchSampler, inner_lr: float = 0.1, inner_steps: int = 1,
                 first_order: bool = False, outer_lr: float = 1e-3, outer_steps: int = 5, clip: float = 0.3,
                 kl_coef: float = 5e-4, kl_target: float = 0.01, gamma: float = 0.99, gae_lambda: float = 1.0) -> None:
        self.policy, self.sampler = policy, sampler
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.outer_steps, self.clip, self.kl_target = outer_steps, clip, kl_target
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=outer_lr)
        self.kl_coef = kl_coef

    # -- pieces shared with evaluation ------------------------------------------------------------

    def advantages(self, episodes: Episodes) -> TaskData:
        """Linear-baseline GAE advantages of one task's episodes, normalised."""
        adv = linear_baseline_advantages(episodes.obs, episodes.rewards, episodes.mask, self.gamma, self.gae_lambda)
        return TaskData(episodes, adv)

    def inner_objective(self, params: Params, data: TaskData) -> torch.Tensor:
        """ProMP's LVC surrogate: value = mean advantage, gradient = the policy gradient."""
        ep = data.episodes
        logp = self.policy.log_prob(ep.obs, ep.actions, params)
        return masked_mean(torch.exp(logp - logp.detach()) * data.advantages, ep.mask)

    def adapt(self, params: Params, data: list[TaskData], first_order: bool) -> Params:
        """Inner policy-gradient ascent steps from ``params``, one per entry of ``data`` (each step's episodes)."""
        return inner.adapt(params, lambda p, step: self.inner_objective(p, data[step]), len(data), self.inner_lr,
                           first_order=first_order, maximize=True)

    def adapted_rollouts(self, tasks: list[Task], steps: int, seed: int, generator: torch.Generator,
                         params: Params | None = None) -> tuple[list[list[TaskData]], list[Params]]:
        """Sample, adapt, sample again ``steps`` times for ``tasks``.

        Returns the data after 0..steps adaptation steps (``steps + 1`` lists over tasks) and the
        final adapted (detached) parameters of every task.
        """
        start = {k: v.detach() for k, v in (params or self.policy.params()).items()}
        current = [start for _ in tasks]
        self.sampler.set_tasks(tasks)
        history: list[list[TaskData]] = []
        for step in range(steps + 1):
            batch = self.sampler.sample(self.policy, current, seed * 1_009 + step, generator)
            data = [self.advantages(ep) for ep in batch]
            history.append(data)
            if step < steps:
                adapted = [self.adapt(p, [d], first_order=True) for p, d in zip(current, data)]
                current = [{k: v.detach() for k, v in p.items()} for p in adapted]
        return history, current

    # -- one meta-iteration -----------------------------------------------------------------------

    def iteration(self, tasks: list[Task], seed: int, generator: torch.Generator) -> dict[str, float]:
        """Sample, adapt and update theta once; returns returns before/after adaptation, KL, loss."""
        history, adapted = self.adapted_rollouts(tasks, self.inner_steps, seed, generator)
        pre, post = history[:-1], history[-1]
        with torch.no_grad():
            old_logp = [self.policy.log_prob(d.episodes.obs, d.episodes.actions, p) for d, p in zip(post, adapted)]
            old_pre = [self.policy.dist_params(d.episodes.obs) for d in pre[0]] if pre else []
        stats: dict[str, float] = {}
        for _ in range(self.outer_steps):
            losses, kls = [], []
            for j in range(len(tasks)):
                start = self.policy.params()
                kl = self._kl(old_pre[j], start, pre[0][j].episodes) if self.inner_steps else torch.zeros(())
                params = self.adapt(start, [step[j] for step in pre], self.first_order)
                ep, adv = post[j].episodes, post[j].advantages
                ratio = torch.exp(self.policy.log_prob(ep.obs, ep.actions, params) - old_logp[j])
                surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
                losses.append(-masked_mean(surrogate, ep.mask) + self.kl_coef * kl)
                kls.append(kl.detach())
            loss = torch.stack(losses).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            stats["loss"] = float(loss.detach())
        if self.inner_steps:
            kl_mean = float(torch.stack(kls).mean())
            # ProMP's adaptive penalty: keep the pre-update policy's step near kl_target.
            if kl_mean < self.kl_target / 1.5:
                self.kl_coef /= 2
            elif kl_mean > self.kl_target * 1.5:
                self.kl_coef *= 2
            stats.update(kl=kl_mean, kl_coef=self.kl_coef)
            stats["return_pre"] = _mean_return(history[0])
        stats["return"] = _mean_return(post)
        if post[0].episodes.reports_success:
            stats["success"] = float(torch.stack([d.episodes.success.mean() for d in post]).mean())
        stats["env_steps"] = float(sum(d.episodes.steps for h in history for d in h))
        return stats

    def _kl(self, old: tuple[torch.Tensor, ...], params: Params, episodes: Episodes) -> torch.Tensor:
        old_dist = self.policy.distribution_from(old)
        new_dist = self.policy.distribution(episodes.obs, params)
        return masked_mean(torch.distributions.kl_divergence(old_dist, new_dist), episodes.mask)

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_coef = state["kl_coef"]


def _mean_return(data: list[TaskData]) -> float:
    return float(np.mean([d.episodes.returns.mean().item() for d in data]))
