"""Policies: an MLP policy (Gaussian or categorical head) with functional parameters, and RL²'s recurrent policy.

As in :mod:`metakit.learners.gradient`, the MLP policy is called on a dict of tensors
(``torch.func.functional_call``), so MAML-RL's inner step returns a new dict and the outer update
differentiates through it; no layer is rewritten. Sampling takes an explicit ``torch.Generator``
so that a run's episodes depend only on its seeds.

Gaussian policies have a state-independent log standard deviation (one parameter per action
dimension, adapted with the rest, as in the MAML paper); actions are sampled unbounded and clipped
to the action space only when sent to the environment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal
from torch.func import functional_call

from metakit.errors import MetakitError

Params = dict[str, torch.Tensor]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise MetakitError(f"unknown policy.activation {name!r}; use {' or '.join(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def space_sizes(observation_space: Any, action_space: Any) -> tuple[int, int, bool]:
    """``(obs_dim, action_dim_or_count, discrete)`` of gymnasium spaces; other spaces are an error."""
    from gymnasium import spaces

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise MetakitError(f"meta-RL policies need flat Box observations, got {observation_space}.")
    if isinstance(action_space, spaces.Discrete):
        return observation_space.shape[0], int(action_space.n), True
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return observation_space.shape[0], action_space.shape[0], False
    raise MetakitError(f"meta-RL policies need Discrete or flat Box actions, got {action_space}.")


def _sample(dist_params: tuple[torch.Tensor, ...], discrete: bool, generator: torch.Generator | None) -> torch.Tensor:
    if discrete:
        (logits,) = dist_params
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
    mean, log_std = dist_params
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return mean + log_std.exp() * noise


def _distribution(dist_params: tuple[torch.Tensor, ...], discrete: bool) -> Distribution:
    if discrete:
        return Categorical(logits=dist_params[0], validate_args=False)
    mean, log_std = dist_params
    return Independent(Normal(mean, log_std.exp().expand_as(mean), validate_args=False), 1, validate_args=False)


class MLPPolicy(nn.Module):
    """A feed-forward policy: Gaussian with learned log-std for Box actions, categorical for Discrete.

    Args:
        obs_dim: observation size.
        action_dim: action size (Box) or number of actions (Discrete).
        discrete: categorical head when true.
        hidden: hidden layer widths.
        activation: ``tanh`` or ``relu``.
        init_std: initial standard deviation of the Gaussian head.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: Sequence[int] = (64, 64),
                 activation: str = "tanh", init_std: float = 1.0) -> None:
        super().__init__()
        act = _activation(activation)
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, action_dim)
        self.discrete = discrete
        if not discrete:
            if init_std <= 0:
                raise MetakitError(f"policy.init_std must be > 0, got {init_std}.")
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        # Small last layer: the initial policy is close to the prior (mean 0 / uniform) everywhere.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def params(self) -> Params:
        """The parameters as a dict (the starting point of an adaptation)."""
        return dict(self.named_parameters())

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Distribution parameters: ``(logits,)`` or ``(mean, log_std)``."""
        out = self.head(self.body(obs))
        return (out,) if self.discrete else (out, self.log_std)

    def dist_params(self, obs: torch.Tensor, params: Params | None = None) -> tuple[torch.Tensor, ...]:
        """Distribution parameters under ``params`` (the module's own when ``None``)."""
        return self(obs) if params is None else functional_call(self, params, (obs,))

    def distribution(self, obs: torch.Tensor, params: Params | None = None) -> Distribution:
        """The action distribution at ``obs`` under ``params``."""
        return _distribution(self.dist_params(obs, params), self.discrete)

    def distribution_from(self, dist_params: tuple[torch.Tensor, ...]) -> Distribution:
        """The action distribution for parameters returned by :meth:`dist_params`."""
        return _distribution(dist_params, self.discrete)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Log-probability of ``actions`` at ``obs`` (batch shape of ``obs`` without the last dim)."""
        return self.distribution(obs, params).log_prob(actions)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, params: Params | None = None) -> torch.Tensor:
        """Actions drawn with ``generator``."""
        return _sample(self.dist_params(obs, params), self.discrete, generator)


class RecurrentPolicy(nn.Module):
    """RL²'s policy: a GRU over (observation, previous action, previous reward, episode-start flag).

    The hidden state is carried across the episodes of one task (a *trial*), so what the policy
    learned about the task in earlier episodes shapes its later ones; a value head shares the GRU
    (PPO's critic).

    Args:
        obs_dim, action_dim, discrete: as for :class:`MLPPolicy`.
        hidden: GRU width.
        init_std: initial standard deviation of the Gaussian head.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: int = 128, init_std: float = 1.0) -> None:
        super().__init__()
        self.discrete, self.action_dim, self.hidden_size = discrete, action_dim, hidden
        self.input_size = obs_dim + action_dim + 2
        self.encoder = nn.Sequential(nn.Linear(self.input_size, hidden), nn.Tanh())
        self.gru = nn.GRUCell(hidden, hidden)
        self.actor = nn.Linear(hidden, action_dim)
        self.critic = nn.Linear(hidden, 1)
        nn.init.normal_(self.actor.weight, std=0.01)
        nn.init.zeros_(self.actor.bias)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def initial_state(self, n: int) -> torch.Tensor:
        """Hidden state at the start of a trial, [n, hidden]."""
        return torch.zeros(n, self.hidden_size)

    def inputs(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The GRU's input: observation, previous action (one-hot if discrete), previous reward, episode start."""
        if self.discrete:
            prev_action = nn.functional.one_hot(prev_action.long(), self.action_dim).float()
        return torch.cat([obs, prev_action, prev_reward[..., None], first[..., None].float()], dim=-1)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """One time step: ``(distribution parameters, value, next hidden state)``."""
        h = self.gru(self.encoder(x), h)
        out = self.actor(h)
        params = (out,) if self.discrete else (out, self.log_std)
        return params, self.critic(h).squeeze(-1), h

    def sample(self, dist_params: tuple[torch.Tensor, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Actions drawn with ``generator``."""
        return _sample(dist_params, self.discrete, generator)

    def distribution(self, dist_params: tuple[torch.Tensor, ...]) -> Distribution:
        """The action distribution for distribution parameters returned by :meth:`step`."""
        return _distribution(dist_params, self.discrete)
