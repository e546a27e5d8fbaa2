"""PEARL (Rakelly et al. 2019): off-policy meta-RL with SAC and a probabilistic context encoder.

A task is inferred, not adapted to by gradients: an encoder maps each transition ``(s, a, r, s')``
of a task's *context* to a Gaussian factor over a latent ``z``; their product is the posterior
``q(z | context)``. The SAC actor ``pi(a | s, z)`` and twin critics ``Q(s, a, z)`` condition on a
sample of ``z``. Training, per iteration:

1. *Data.* For a few training tasks, one episode with ``z`` from the prior (it also fills the
   task's context buffer) and one with ``z`` from the posterior of its context buffer (RL buffer
   only), as in the paper's prior/posterior collection.
2. *Updates.* ``updates`` gradient steps, each over a meta-batch of tasks: ``z`` ~ q(z | context
   batch) with the reparameterisation trick; the critic loss (soft Bellman error, target critics)
   trains the encoder too, plus ``kl_weight * KL(q || N(0, I))``; the actor loss sees ``z``
   detached; fixed entropy temperature ``alpha`` and ``reward_scale`` as in the paper.

Adaptation at test time: episode 1 with ``z`` from the prior, episode ``k + 1`` with ``z`` from
the posterior of the transitions of episodes ``1..k`` (no gradient step).

Transitions come from :func:`metakit.rl.rollout.collect`; the last step of each episode has no
stored next observation and is left out of the buffers, and episode ends are treated as time-outs
(bootstrapped), right for the fixed-horizon tasks of :mod:`metakit.rl.tasks`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metakit.rl.rollout import Episodes, collect, set_tasks
from metakit.rl.tasks import Task


def _mlp(inp: int, out: int, hidden: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, out))


class ContextEncoder(nn.Module):
    """Transitions -> Gaussian posterior over ``z``, a product of one Gaussian factor per transition."""

    def __init__(self, transition_dim: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp(transition_dim, 2 * latent_dim, hidden)

    def posterior(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``context`` [tasks, n, transition_dim] -> (mean, variance) [tasks, latent]; n = 0 gives the prior."""
        if context.shape[1] == 0:
            shape = (context.shape[0], self.latent_dim)
            return torch.zeros(shape), torch.ones(shape)
        mu, raw = self.net(context).chunk(2, dim=-1)
        var = nn.functional.softplus(raw).clamp_min(1e-7)
        post_var = 1.0 / (1.0 / var).sum(1)
        return post_var * (mu / var).sum(1), post_var


class TanhGaussianActor(nn.Module):
    """SAC's actor: a Gaussian squashed by tanh, rescaled to the action bounds."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.net = _mlp(obs_dim, 2 * action_dim, hidden)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("center", (high + low) / 2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action, log_prob)`` at inputs ``x`` (observation and ``z`` concatenated)."""
        mean, log_std = self.net(x).chunk(2, dim=-1)
        log_std = log_std.clamp(-20, 2)
        noise = torch.zeros_like(mean) if deterministic else torch.randn(mean.shape, generator=generator)
        pre = mean + log_std.exp() * noise
        squashed = torch.tanh(pre)
        # Log-density of the squashed sample: Gaussian minus the log-Jacobian of tanh and the rescaling.
        log_prob = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (torch.log(self.scale * (1 - squashed**2) + 1e-6)).sum(-1)
        return self.center + self.scale * squashed, log_prob


class TaskBuffer:
    """A ring buffer of transitions for each training task (by index)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: dict[int, torch.Tensor] = {}

    def add(self, task: int, transitions: torch.Tensor) -> None:
        """Append rows ``[n, width]``, dropping the oldest past the capacity."""
        old = self.data.get(task)
        merged = transitions if old is None else torch.cat([old, transitions])
        self.data[task] = merged[-self.capacity:]

    def sample(self, task: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` rows drawn uniformly with replacement."""
        rows = self.data[task]
        return rows[torch.randint(len(rows), (n,), generator=generator)]


def transitions(episodes: Episodes, column: int) -> torch.Tensor:
    """Rows ``[s, a, r, s']`` of one sub-environment's episode (its last step has no ``s'`` and is dropped)."""
    valid = int(episodes.mask[:, column].sum().item())
    obs = episodes.obs[:valid, column]
    actions = episodes.actions[:valid, column].reshape(valid, -1)
    rewards = episodes.rewards[:valid, column, None]
    return torch.cat([obs[:-1], actions[:-1], rewards[:-1], obs[1:]], dim=-1)


class PEARL:
    """PEARL state, data collection, one training iteration and test-time adaptation.

    Args:
        envs: vector env with ``meta_batch`` sub-environments (one task each).
        obs_dim, action_dim, low, high: continuous spaces (PEARL's SAC needs Box actions).
        horizon: episode length.
        train_tasks: the fixed set of training tasks (PEARL keeps one buffer per task).
        latent_dim, hidden: sizes.
        lr, gamma, tau, alpha, reward_scale, kl_weight: SAC and the encoder's KL weight.
        batch_size, context_size, updates: per gradient step and per iteration.
    """

    def __init__(self, envs: Any, obs_dim: int, action_dim: int, low: torch.Tensor, high: torch.Tensor, horizon: int,
                 train_tasks: list[Task], latent_dim: int = 5, hidden: int = 128, lr: float = 3e-4, gamma: float = 0.99,
                 tau: float = 0.005, alpha: float = 1.0, reward_scale: float = 5.0, kl_weight: float = 0.1,
                 batch_size: int = 256, context_size: int = 100, updates: int = 50, buffer_size: int = 100_000) -> None:
        self.envs, self.horizon, self.train_tasks = envs, horizon, train_tasks
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.gamma, self.tau, self.alpha, self.reward_scale, self.kl_weight = gamma, tau, alpha, reward_scale, kl_weight
        self.batch_size, self.context_size, self.updates = batch_size, context_size, updates
        width = 2 * obs_dim + action_dim + 1
        self.encoder = ContextEncoder(width, latent_dim, hidden)
        self.actor = TanhGaussianActor(obs_dim + latent_dim, action_dim, hidden, low, high)
        self.critics = nn.ModuleList([_mlp(obs_dim + action_dim + latent_dim, 1, hidden) for _ in range(2)])
        self.targets = nn.ModuleList([_mlp(obs_dim + action_dim + latent_dim, 1, hidden) for _ in range(2)])
        self.targets.load_state_dict(self.critics.state_dict())
        self.policy = nn.ModuleDict({"encoder": self.encoder, "actor": self.actor, "critics": self.critics})
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam([*self.critics.parameters(), *self.encoder.parameters()], lr=lr)
        self.rl_buffer, self.context_buffer = TaskBuffer(buffer_size), TaskBuffer(buffer_size)

    # -- acting -----------------------------------------------------------------------------------

    def _sample_z(self, contexts: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        zs = []
        for c in contexts:
            mean, var = self.encoder.posterior(c[None])
            zs.append(mean + var.sqrt() * torch.randn(mean.shape, generator=generator))
        return torch.cat(zs)

    def run_episodes(self, tasks: list[Task], contexts: list[torch.Tensor], seed: int, generator: torch.Generator,
                     deterministic: bool = False) -> Episodes:
        """One episode per task with ``z`` drawn from the posterior of its context (empty = prior)."""
        n = self.envs.num_envs
        set_tasks(self.envs, tasks + [tasks[-1]] * (n - len(tasks)))
        with torch.no_grad():
            z = self._sample_z(contexts, generator)
        z = torch.cat([z, z[-1:].expand(n - len(tasks), -1)])

        def act(obs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
            return self.actor(torch.cat([obs, z], -1), generator, deterministic)[0]

        return collect(self.envs, act, seed, self.horizon)

    # -- training ---------------------------------------------------------------------------------

    def iteration(self, task_ids: list[int], seed: int, generator: torch.Generator) -> dict[str, float]:
        """Collect prior and posterior episodes on ``task_ids``, then ``updates`` SAC/encoder steps."""
        tasks = [self.train_tasks[i] for i in task_ids]
        empty = torch.zeros(0, 2 * self.obs_dim + self.action_dim + 1)
        prior = self.run_episodes(tasks, [empty] * len(tasks), seed, generator)
        for j, i in enumerate(task_ids):
            rows = transitions(prior, j)
            self.rl_buffer.add(i, rows)
            self.context_buffer.add(i, rows)
        contexts = [self.context_buffer.sample(i, self.context_size, generator) for i in task_ids]
        post = self.run_episodes(tasks, contexts, seed + 1, generator)
        for j, i in enumerate(task_ids):
            self.rl_buffer.add(i, transitions(post, j))
        stats: dict[str, float] = {}
        ready = [i for i in range(len(self.train_tasks)) if i in self.rl_buffer.data]
        for _ in range(self.updates):
            batch = [ready[k] for k in torch.randint(len(ready), (len(task_ids),), generator=generator)]
            stats = self._update(batch, generator)
        stats["return_pre"] = float(prior.returns[: len(tasks)].mean())
        stats["return"] = float(post.returns[: len(tasks)].mean())
        if prior.reports_success:
            stats["success"] = float(post.success[: len(tasks)].mean())
        stats["env_steps"] = float(prior.select(slice(0, len(tasks))).steps + post.select(slice(0, len(tasks))).steps)
        return stats

    def _update(self, task_ids: list[int], generator: torch.Generator) -> dict[str, float]:
        o, a = self.obs_dim, self.action_dim
        context = torch.stack([self.context_buffer.sample(i, self.context_size, generator) for i in task_ids])
        rows = torch.stack([self.rl_buffer.sample(i, self.batch_size, generator) for i in task_ids])
        obs, act, rew, nxt = rows[..., :o], rows[..., o:o + a], rows[..., o + a:o + a + 1], rows[..., o + a + 1:]
        mean, var = self.encoder.posterior(context)
        z = mean + var.sqrt() * torch.randn(mean.shape, generator=generator)
        kl = 0.5 * (var + mean**2 - 1 - var.log()).sum(-1).mean()
        z_rows = z[:, None].expand(-1, self.batch_size, -1)
        with torch.no_grad():
            next_in = torch.cat([nxt, z_rows], -1)
            next_act, next_logp = self.actor(next_in, generator)
            q_in = torch.cat([nxt, next_act, z_rows], -1)
            next_q = torch.min(self.targets[0](q_in), self.targets[1](q_in)) - self.alpha * next_logp[..., None]
            target = self.reward_scale * rew + self.gamma * next_q
        q_in = torch.cat([obs, act, z_rows], -1)
        critic_loss = sum(((q(q_in) - target) ** 2).mean() for q in self.critics) + self.kl_weight * kl
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        zd = z_rows.detach()
        new_act, logp = self.actor(torch.cat([obs, zd], -1), generator)
        q_new = torch.cat([obs, new_act, zd], -1)
        actor_loss = (self.alpha * logp[..., None] - torch.min(self.critics[0](q_new), self.critics[1](q_new))).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for target_p, p in zip(self.targets.parameters(), self.critics.parameters()):
                target_p.lerp_(p, self.tau)
        return {"loss": float(critic_loss.detach()), "actor_loss": float(actor_loss.detach()), "kl": float(kl.detach())}

    # -- test-time adaptation ---------------------------------------------------------------------

    def evaluate(self, tasks: list[Task], episodes: int, seed: int, generator: torch.Generator) -> list[Episodes]:
        """Episodes 1..``episodes`` per task, each with ``z`` from the posterior of the episodes before it."""
        width = 2 * self.obs_dim + self.action_dim + 1
        contexts = [torch.zeros(0, width) for _ in tasks]
        out = []
        for k in range(episodes):
            ep = self.run_episodes(tasks, contexts, seed * 1_009 + k, generator)
            contexts = [torch.cat([c, transitions(ep, j)]) for j, c in enumerate(contexts)]
            out.append(ep.select(slice(0, len(tasks))))
        return out

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers and replay buffers (an exact resume needs the buffers)."""
        return {"policy": self.policy.state_dict(), "targets": self.targets.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "rl_buffer": self.rl_buffer.data, "context_buffer": self.context_buffer.data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
        self.targets.load_state_dict(state["targets"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.rl_buffer.data, self.context_buffer.data = dict(state["rl_buffer"]), dict(state["context_buffer"])
