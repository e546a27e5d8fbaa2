"""RL² (Duan et al. 2016): a recurrent policy whose hidden state is the learning algorithm, trained with PPO.

A *trial* is ``episodes_per_trial`` consecutive episodes of one task. The GRU policy sees the
observation, its previous action and reward and an episode-start flag, and keeps its hidden state
across the episodes of the trial, so it can explore in the first episode and exploit what it found
in the next ones. Training maximises the return of the whole trial with PPO (clipped surrogate,
value loss, optional entropy bonus), the advantage chain running across the episode boundaries
(:func:`metakit.rl.advantages.gae` skips the padding of early-terminated episodes).

Every sub-environment of the vector env runs its own task, so one batched GRU step serves the
whole meta-batch. Adaptation is measured as the return of episode 1, 2, ... of a trial on held-out
tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metakit.rl.advantages import gae, normalize_masked
from metakit.rl.maml_rl import masked_mean
from metakit.rl.policies import RecurrentPolicy
from metakit.rl.rollout import Episodes, collect, set_tasks
from metakit.rl.tasks import Task


@dataclass
class Trial:
    """A meta-batch of trials, time-major over all their episodes: GRU inputs [L, N, in], and what PPO needs."""

    inputs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    episodes: list[Episodes]


class TrialRunner:
    """Runs trials of the recurrent policy in a vector env whose sub-environment ``i`` holds task ``i``."""

    def __init__(self, envs: Any, horizon: int) -> None:
        self.envs, self.horizon = envs, horizon

    def run(self, policy: RecurrentPolicy, tasks: list[Task], episodes: int, seed: int,
            generator: torch.Generator) -> Trial:
        """``episodes`` episodes of each task with the hidden state carried across them."""
        n = self.envs.num_envs
        padded = tasks + [tasks[-1]] * (n - len(tasks))
        set_tasks(self.envs, padded)
        h = policy.initial_state(n)
        inputs, logps, values, eps = [], [], [], []
        for k in range(episodes):
            # Previous action/reward are zero at an episode's start, flagged by ``first``.
            state = {
                "action": torch.zeros(n, dtype=torch.long) if policy.discrete else torch.zeros(n, policy.action_dim),
                "reward": torch.zeros(n), "first": torch.ones(n),
            }

            def act(obs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
                nonlocal h
                x = policy.inputs(obs, state["action"], state["reward"], state["first"])
                params, value, h_next = policy.step(x, h)
                # A finished sub-env is stepped with the others; its memory must not see those steps.
                h = torch.where(alive[:, None], h_next, h)
                action = policy.sample(params, generator)
                inputs.append(x)
                logps.append(policy.distribution(params).log_prob(action))
                values.append(value)
                state.update(action=action, first=torch.zeros(n))
                return action

            def after_step(rewards: torch.Tensor) -> None:
                state["reward"] = rewards

            with torch.no_grad():
                eps.append(collect(self.envs, act, seed * 1_009 + k, self.horizon, after_step=after_step))
        return Trial(
            inputs=torch.stack(inputs), actions=torch.cat([e.actions for e in eps]), rewards=torch.cat([e.rewards for e in eps]),
            mask=torch.cat([e.mask for e in eps]), logp=torch.stack(logps), values=torch.stack(values),
            episodes=[e.select(slice(0, len(tasks))) for e in eps],
        )


def replay(policy: RecurrentPolicy, inputs: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recompute log-probabilities, values and entropies of a stored trial under the current weights."""
    h = policy.initial_state(inputs.shape[1])
    heads, values = [], []
    for t in range(inputs.shape[0]):
        params, value, h_next = policy.step(inputs[t], h)
        h = torch.where(mask[t, :, None] > 0, h_next, h)
        heads.append(params[0])
        values.append(value)
    # One distribution over the whole [T, N] batch instead of one per step: less Python per replay, same numbers.
    stacked = (torch.stack(heads),) + tuple(params[1:])
    dist = policy.distribution(stacked)
    return dist.log_prob(actions), torch.stack(values), dist.entropy()


class RL2:
    """RL² state and one PPO iteration.

    Args:
        policy: the recurrent policy.
        runner: trial runner over ``meta_batch`` sub-environments.
        episodes_per_trial: episodes of one task per trial.
        lr, epochs, minibatches, clip, value_coef, entropy_coef, max_grad_norm: PPO.
        gamma, gae_lambda: advantage estimation over the trial.
        reward_scale: multiplies the rewards the critic is trained on (the policy's inputs stay raw).
    """

    def __init__(self, policy: RecurrentPolicy, runner: TrialRunner, episodes_per_trial: int = 2, lr: float = 3e-4,
                 epochs: int = 4, minibatches: int = 4, clip: float = 0.2, value_coef: float = 0.5,
                 entropy_coef: float = 0.0, max_grad_norm: float = 0.5, gamma: float = 0.99, gae_lambda: float = 0.95,
                 reward_scale: float = 1.0) -> None:
        self.policy, self.runner, self.episodes = policy, runner, episodes_per_trial
        self.epochs, self.minibatches, self.clip = epochs, minibatches, clip
        self.value_coef, self.entropy_coef, self.max_grad_norm = value_coef, entropy_coef, max_grad_norm
        self.gamma, self.gae_lambda, self.reward_scale = gamma, gae_lambda, reward_scale
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-5)

    def iteration(self, tasks: list[Task], seed: int, generator: torch.Generator) -> dict[str, float]:
        """One trial per task, then PPO epochs over minibatches of whole trials."""
        trial = self.runner.run(self.policy, tasks, self.episodes, seed, generator)
        n = len(tasks)
        # Scaled rewards keep the critic's targets O(1-10): its loss shares the GRU and the gradient clip.
        mask, rewards = trial.mask[:, :n], trial.rewards[:, :n] * self.reward_scale
        values = trial.values[:, :n]
        adv = gae(rewards, values * mask, mask, self.gamma, self.gae_lambda)
        targets = adv + values
        # Columns are whole trials: minibatches split tasks, never time, so the GRU replays from the start.
        order = torch.randperm(n, generator=generator)
        size = max(1, n // self.minibatches)
        stats: dict[str, float] = {}
        for _ in range(self.epochs):
            order = order[torch.randperm(n, generator=generator)]
            for start in range(0, n, size):
                cols = order[start:start + size]
                m = mask[:, cols]
                logp, value, entropy = replay(self.policy, trial.inputs[:, cols], m, trial.actions[:, cols])
                a = normalize_masked(adv[:, cols], m)
                ratio = torch.exp(logp - trial.logp[:, cols])
                policy_loss = -masked_mean(torch.min(ratio * a, ratio.clamp(1 - self.clip, 1 + self.clip) * a), m)
                value_loss = masked_mean((value - targets[:, cols]) ** 2, m)
                entropy_mean = masked_mean(entropy, m)
                loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy_mean
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.optimizer.step()
                stats.update(loss=float(loss.detach()), value_loss=float(value_loss.detach()),
                             entropy=float(entropy_mean.detach()))
        returns = [float(e.returns.mean()) for e in trial.episodes]
        for k, r in enumerate(returns):
            stats[f"return_ep{k + 1}"] = r
        stats["return_pre"], stats["return"] = returns[0], returns[-1]
        if trial.episodes[0].reports_success:
            stats["success"] = float(trial.episodes[-1].success.mean())
        stats["env_steps"] = float(sum(e.steps for e in trial.episodes))
        return stats

    def evaluate(self, tasks: list[Task], episodes: int, seed: int, generator: torch.Generator) -> list[Episodes]:
        """Episodes 1..``episodes`` of one trial per task (no learning): the adaptation curve."""
        return self.runner.run(self.policy, tasks, episodes, seed, generator).episodes

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
