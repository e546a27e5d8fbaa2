"""Meta-RL run configuration: YAML validated against dataclasses, with ``key=value`` overrides.

Sections: ``name``, ``seed``, ``algorithm`` (``maml-rl``, ``rl2`` or ``pearl``), ``env`` (``name``,
``horizon``, ``options`` passed to the environment), ``policy``, ``train`` (shared loop settings),
``maml``, ``rl2`` and ``pearl`` (each algorithm's own settings) and ``eval``. Unknown keys fail with one line
naming the closest valid keys: the rl plugin registers :class:`RLConfig` as its config section,
which :mod:`metakit.config` validates like every other (``load_config(path, domain="rl")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metakit.config import config_from_dict, load_config, options_section, yaml_dump
from metakit.errors import MetakitError
from metakit.rl.maml_rl import MamlRL
from metakit.rl.pearl import PEARL
from metakit.rl.rl2 import RL2

ALGORITHMS = ("maml-rl", "rl2", "pearl")


@dataclass
class EnvConfig:
    """Which task distribution: a name of :data:`metakit.rl.tasks.ENVS` (or a gymnasium id with the protocol).

    Any other key of the ``env`` section (e.g. ``task: push-v3`` for ``ml1``) is an option of the
    environment's constructor, kept in ``options`` (an open section, as ``learner`` is).
    """

    name: str = "point2d"
    horizon: int | None = None
    options: dict = field(default_factory=dict)


@dataclass
class PolicyConfig:
    """Policy network: MLP widths (MAML-RL), GRU width (RL²), activation, initial action std."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    init_std: float = 1.0
    recurrent_hidden: int = 128


@dataclass
class TrainConfig:
    """The loop shared by the algorithms: iterations of ``meta_batch`` tasks, ``episodes_per_task`` each."""

    iterations: int = 100
    meta_batch: int = 20
    episodes_per_task: int = 20
    gamma: float = 0.99
    gae_lambda: float = 1.0
    threads: int = 1
    checkpoint_every: int = 10
    pretrained_iterations: int | None = None


# The algorithms' sections are read from their constructors (metakit.config.options_section), so an
# option and its default are declared once, where the algorithm uses it. gamma and gae_lambda come
# from the train section, which all algorithms share.
MamlConfig = options_section(
    MamlRL, "MamlConfig", "MAML-RL with ProMP's outer update (clipped surrogate + adaptive KL penalty on the pre-update policy).",
    exclude=("gamma", "gae_lambda"), module=__name__)
RL2Config = options_section(
    RL2, "RL2Config", "RL² trained with PPO: a trial is ``episodes_per_trial`` episodes of one task, hidden state kept.",
    exclude=("gamma", "gae_lambda"), module=__name__)
PearlConfig = options_section(
    PEARL, "PearlConfig", "PEARL: SAC + probabilistic context encoder over a fixed set of ``train_tasks`` training tasks.",
    exclude=("gamma",), extra=(("train_tasks", int, 100),), module=__name__)


@dataclass
class EvalConfig:
    """Held-out tasks (drawn with ``seed``, Meta-World's test split), adaptation steps/episodes."""

    tasks: int = 40
    adapt_steps: int = 3
    episodes_per_task: int | None = None
    seed: int = 1234
    baselines: bool = True


@dataclass
class RLConfig:
    """A whole meta-RL run."""

    name: str = "rl"
    seed: int = 0
    algorithm: str = "maml-rl"
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    maml: MamlConfig = field(default_factory=MamlConfig)
    rl2: RL2Config = field(default_factory=RL2Config)
    pearl: PearlConfig = field(default_factory=PearlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written in YAML (environment options flattened into ``env``)."""
        out = asdict(self)
        out["env"].update(out["env"].pop("options"))
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml_dump(self.to_dict())

    def check(self) -> RLConfig:
        """Check values that the types alone do not; returns ``self``."""
        if self.algorithm not in ALGORITHMS:
            raise MetakitError(f"unknown algorithm {self.algorithm!r}; use {' or '.join(ALGORITHMS)}.")
        t = self.train
        for key in ("iterations", "meta_batch", "episodes_per_task", "threads", "checkpoint_every"):
            if getattr(t, key) < 1:
                raise MetakitError(f"train.{key} must be >= 1, got {getattr(t, key)}.")
        if not 0 < t.gamma <= 1 or not 0 <= t.gae_lambda <= 1:
            raise MetakitError(f"train.gamma must be in (0, 1] and train.gae_lambda in [0, 1], got {t.gamma}, {t.gae_lambda}.")
        if self.maml.inner_steps < 0 or self.maml.outer_steps < 1 or self.maml.inner_lr <= 0:
            raise MetakitError("maml.inner_steps must be >= 0, maml.outer_steps >= 1 and maml.inner_lr > 0.")
        if self.rl2.episodes_per_trial < 1 or self.rl2.epochs < 1 or self.rl2.minibatches < 1:
            raise MetakitError("rl2.episodes_per_trial, rl2.epochs and rl2.minibatches must be >= 1.")
        if self.algorithm == "rl2" and t.meta_batch % self.rl2.minibatches:
            raise MetakitError(f"train.meta_batch={t.meta_batch} must be a multiple of rl2.minibatches={self.rl2.minibatches}.")
        if self.algorithm == "pearl" and min(self.pearl.train_tasks, self.pearl.updates, self.pearl.batch_size,
                                             self.pearl.context_size, self.pearl.latent_dim) < 1:
            raise MetakitError("pearl.train_tasks, updates, batch_size, context_size and latent_dim must be >= 1.")
        if self.eval.tasks < 2 or self.eval.adapt_steps < 0:
            raise MetakitError("eval.tasks must be >= 2 (for a confidence interval) and eval.adapt_steps >= 0.")
        if self.env.horizon is not None and self.env.horizon < 1:
            raise MetakitError(f"env.horizon must be >= 1, got {self.env.horizon}.")
        return self


def rl_config_from_dict(data: dict[str, Any]) -> RLConfig:
    """Validate plain data (parsed YAML) into an :class:`RLConfig`."""
    return config_from_dict(data, "rl")


def load_rl_config(path: str | Path, overrides: Sequence[str] = ()) -> RLConfig:
    """Read a meta-RL YAML config, apply ``key=value`` overrides and validate."""
    return load_config(path, overrides, "rl")


def load_rl_run(run_dir: str | Path) -> RLConfig:
    """The resolved config of a meta-RL run directory."""
    from metakit.runs import run_config_data

    return rl_config_from_dict(run_config_data(run_dir, "metakit rl", "metakit rl train"))
