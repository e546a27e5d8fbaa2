"""Advantage estimation: the linear feature baseline of rllab/garage and GAE.

All arrays are time-major ``[T, N]`` with a ``mask`` that is 1 on an episode's steps. A column
ends at its last masked step; the value after it is taken as 0, the convention of the MAML/ProMP
code for fixed-horizon tasks (the horizon is part of the task).
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``sum_k gamma^k r_{t+k}`` over the valid steps of each column, [T, N] (0 on padding)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        valid = mask[t] > 0
        running = torch.where(valid, rewards[t] + gamma * running, running)
        out[t] = running * mask[t]
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), [T, N] (0 on padding).

    ``delta_t = r_t + gamma V(s_next) - V(s_t)``, ``A_t = delta_t + gamma lam A_next``, where
    *next* is the column's next valid step: padded steps are skipped, so a column may hold one
    episode (MAML-RL) or an RL² trial of several padded episodes that the value chain crosses.
    After a column's last valid step the value is 0.
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        valid = mask[t] > 0
        a = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        adv[t] = a * mask[t]
        running = torch.where(valid, a, running)
        next_value = torch.where(valid, values[t], next_value)
    return adv


class LinearFeatureBaseline:
    """Ridge regression of returns on ``[o, o^2, t, t^2, t^3, 1]`` (Duan et al. 2016), fitted per batch.

    Cheap and unbiased enough for MAML-RL's inner loop, where a learned critic could not adapt in
    one step; ``t`` is the time step / 100.
    """

    def __init__(self, reg: float = 1e-5) -> None:
        self.reg = reg
        self.weights: torch.Tensor | None = None

    @staticmethod
    def features(obs: torch.Tensor) -> torch.Tensor:
        """Features of time-major observations [T, N, D] -> [T, N, 2D + 4]."""
        T, N = obs.shape[:2]
        o = obs.clamp(-10, 10).double()
        t = (torch.arange(T, dtype=torch.float64) / 100.0)[:, None, None].expand(T, N, 1)
        return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)

    def fit(self, obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> None:
        """Least squares on the masked steps; the ridge term grows until the system is well posed."""
        x = self.features(obs)[mask.bool()]
        y = returns.double()[mask.bool()]
        gram, rhs = x.T @ x, x.T @ y
        reg = self.reg
        eye = torch.eye(gram.shape[0], dtype=torch.float64)
        for _ in range(5):
            weights = torch.linalg.solve(gram + reg * eye, rhs)
            if torch.isfinite(weights).all():
                break
            reg *= 10
        self.weights = weights

    def predict(self, obs: torch.Tensor) -> torch.Tensor:
        """Baseline values [T, N] (zeros before the first fit)."""
        if self.weights is None:
            return torch.zeros(obs.shape[:2])
        return (self.features(obs) @ self.weights).float()


def linear_baseline_advantages(obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
                               lam: float, normalize: bool = True) -> torch.Tensor:
    """Fit a fresh linear baseline on these episodes, then GAE; optionally normalised over valid steps."""
    baseline = LinearFeatureBaseline()
    baseline.fit(obs, discounted_returns(rewards, mask, gamma), mask)
    adv = gae(rewards, baseline.predict(obs) * mask, mask, gamma, lam)
    return normalize_masked(adv, mask) if normalize else adv


def normalize_masked(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries; masked-out entries become 0."""
    valid = mask.bool()
    mean = x[valid].mean()
    std = x[valid].std() if valid.sum() > 1 else torch.tensor(1.0)
    return torch.where(valid, (x - mean) / (std + eps), torch.zeros_like(x))
