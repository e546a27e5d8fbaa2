"""Task distributions over gymnasium environments: the task protocol and the environments that follow it.

A *task environment* is an ordinary ``gymnasium.Env`` with two more methods::

    tasks = env.sample_tasks(n, rng)     # n JSON-serialisable dicts, drawn with a numpy Generator
    env.set_task(tasks[0])               # the next reset() starts an episode of that task

The meta-learners only ever call these two methods, so any environment that implements them is a
task distribution. Tasks are plain dicts (``{"goal": [x, y]}``, ``{"velocity": 1.3}``) so they go
into reports and JSON as they are. ``split`` selects Meta-World's held-out goal positions; the
parametric distributions have no fixed split (held-out tasks are fresh draws from another seed).

Every environment here has a fixed episode length (``horizon``, a ``TimeLimit``), as in the MAML
and ProMP papers: 100 steps for 2D navigation, 200 for the MuJoCo and CartPole tasks, 150 for
Meta-World (shorter than its 500 to fit a CPU budget; say so when reporting).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from metakit.errors import MetakitError, unknown_name

Task = dict[str, Any]

INSTALL_HINT = "pip install 'metakit[rl]'"


def require(*modules: str) -> None:
    """Raise one clear line if a module of the ``rl`` extra is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MetakitError(f"metakit rl needs {', '.join(missing)} (the rl extra); install it with: {INSTALL_HINT}")


@runtime_checkable
class TaskEnv(Protocol):
    """What a meta-RL learner needs from an environment besides the gymnasium API."""

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
        """``n`` tasks drawn with ``rng`` (the env's own ``np_random`` when ``None``)."""
        ...

    def set_task(self, task: Task) -> None:
        """Switch the environment to ``task``; takes effect at the next ``reset``."""
        ...


def _rng(env: Any, rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else env.np_random


def _gym():  # noqa: ANN202
    require("gymnasium")
    import gymnasium

    return gymnasium


# --------------------------------------------------------------------------------------------------
# The environments are built inside factories so that importing this module needs no gymnasium.


def _navigation2d(**options: Any):  # noqa: ANN202
    gym = _gym()
    from gymnasium import spaces

    class Navigation2D(gym.Env):
        """2D point navigation of the MAML paper: reach a goal drawn uniformly from [-low, high]^2.

        The observation is the position (the goal is hidden: it must be inferred from rewards),
        an action moves the point by at most ``max_step`` per axis, the reward is minus the distance
        to the goal; the point starts at the origin.
        """

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, low: float = -0.5, high: float = 0.5, max_step: float = 0.1) -> None:
            self.low, self.high, self.max_step = float(low), float(high), float(max_step)
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
            self.action_space = spaces.Box(-max_step, max_step, shape=(2,), dtype=np.float32)
            self.goal = np.zeros(2)
            self.position = np.zeros(2)

        def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
            goals = _rng(self, rng).uniform(self.low, self.high, size=(n, 2))
            return [{"goal": [float(x), float(y)]} for x, y in goals]

        def set_task(self, task: Task) -> None:
            self.goal = np.asarray(task["goal"], dtype=np.float64)

        def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN206
            super().reset(seed=seed)
            self.position = np.zeros(2)
            return self.position.astype(np.float32), {}

        def step(self, action):  # noqa: ANN001, ANN201
            self.position = self.position + np.clip(action, -self.max_step, self.max_step)
            distance = float(np.linalg.norm(self.position - self.goal))
            return self.position.astype(np.float32), -distance, False, False, {"distance": distance}

    return Navigation2D(**options)


def _half_cheetah(kind: str, **options: Any):  # noqa: ANN202
    _gym()
    require("mujoco")
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    class HalfCheetahTask(HalfCheetahEnv):
        """HalfCheetah-v5 with a task-dependent reward (ProMP's HalfCheetahRandVel / RandDirec).

        ``vel``: reward = -|forward velocity - target| - 0.05 |a|^2, target ~ U[low, high].
        ``dir``: reward = direction * forward velocity - 0.05 |a|^2, direction in {-1, +1}.
        The target is not in the observation.
        """

        def __init__(self, kind: str, low: float = 0.0, high: float = 2.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.kind, self.low, self.high = kind, float(low), float(high)
            self.task: Task = {"velocity": 1.0} if kind == "vel" else {"direction": 1.0}

        def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
            r = _rng(self, rng)
            if self.kind == "vel":
                return [{"velocity": float(v)} for v in r.uniform(self.low, self.high, size=n)]
            return [{"direction": float(d)} for d in r.choice([-1.0, 1.0], size=n)]

        def set_task(self, task: Task) -> None:
            self.task = dict(task)

        def step(self, action):  # noqa: ANN001, ANN201
            obs, _, terminated, truncated, info = super().step(action)
            # gymnasium's ctrl cost is 0.1 |a|^2; the meta-RL papers use half of it.
            control = 0.5 * float(info["reward_ctrl"])
            if self.kind == "vel":
                reward = -abs(float(info["x_velocity"]) - self.task["velocity"]) + control
            else:
                reward = self.task["direction"] * float(info["x_velocity"]) + control
            return obs, reward, terminated, truncated, info

    return HalfCheetahTask(kind, **options)


def _ant_dir(**options: Any):  # noqa: ANN202
    _gym()
    require("mujoco")
    from gymnasium.envs.mujoco.ant_v5 import AntEnv

    class AntDir(AntEnv):
        """Ant-v5 rewarded for running forward or backward along x (MAML's Ant direction task)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.task: Task = {"direction": 1.0}

        def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
            return [{"direction": float(d)} for d in _rng(self, rng).choice([-1.0, 1.0], size=n)]

        def set_task(self, task: Task) -> None:
            self.task = dict(task)

        def step(self, action):  # noqa: ANN001, ANN201
            obs, _, terminated, truncated, info = super().step(action)
            reward = (self.task["direction"] * float(info["x_velocity"]) + float(info["reward_survive"])
                      + float(info["reward_ctrl"]) + float(info["reward_contact"]))
            return obs, reward, terminated, truncated, info

    return AntDir(**options)


def _cartpole(**options: Any):  # noqa: ANN202
    _gym()
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    class CartPoleVaried(CartPoleEnv):
        """CartPole whose pole half-length and mass vary per task (uniform in the given ranges)."""

        def __init__(self, length: tuple[float, float] = (0.25, 1.0), masspole: tuple[float, float] = (0.05, 0.5)) -> None:
            super().__init__()
            self.length_range = tuple(float(v) for v in length)
            self.mass_range = tuple(float(v) for v in masspole)

        def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
            r = _rng(self, rng)
            lengths = r.uniform(*self.length_range, size=n)
            masses = r.uniform(*self.mass_range, size=n)
            return [{"length": float(a), "masspole": float(b)} for a, b in zip(lengths, masses)]

        def set_task(self, task: Task) -> None:
            # CartPoleEnv caches the derived quantities at construction; keep them consistent.
            self.length = float(task["length"])
            self.masspole = float(task["masspole"])
            self.total_mass = self.masspole + self.masscart
            self.polemass_length = self.masspole * self.length

    return CartPoleVaried(**options)


# Building an ML1 benchmark (its 100 goal positions) takes ~2 s; every sub-environment of a vector
# env shares one per (task, seed).
_ML1_CACHE: dict[tuple[str, int], Any] = {}


def _metaworld_ml1(task: str = "reach-v3", seed: int = 0):  # noqa: ANN202
    gym = _gym()
    require("mujoco", "metaworld")
    import metaworld

    class MetaWorldML1(gym.Env):
        """One Meta-World ML1 environment: 50 train and 50 test goal positions of one manipulation task.

        A task is ``{"index": i, "split": "train"|"test"}`` into the benchmark's task lists (fixed by
        ``seed``); the goal is hidden from the observation, as in the benchmark. ``info["success"]``
        is the benchmark's success flag.
        """

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, name: str, seed: int) -> None:
            if (name, seed) not in _ML1_CACHE:
                try:
                    _ML1_CACHE[name, seed] = metaworld.ML1(name, seed=seed)
                except (KeyError, ValueError):
                    raise unknown_name("Meta-World ML1 task", name, metaworld.ML1.ENV_NAMES) from None
            self.benchmark = _ML1_CACHE[name, seed]
            self.env = self.benchmark.train_classes[name]()
            self.tasks = {"train": self.benchmark.train_tasks, "test": self.benchmark.test_tasks}
            self.observation_space = self.env.observation_space
            self.action_space = self.env.action_space
            self.set_task({"index": 0, "split": "train"})

        def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
            if split not in self.tasks:
                raise MetakitError(f"Meta-World task split must be 'train' or 'test', got {split!r}.")
            count = len(self.tasks[split])
            # Without replacement while the list lasts, so a meta-batch covers distinct goals.
            index = _rng(self, rng).permutation(count)[:n] if n <= count else _rng(self, rng).integers(0, count, size=n)
            return [{"index": int(i), "split": split} for i in index]

        def set_task(self, task: Task) -> None:
            self.env.set_task(self.tasks[task.get("split", "train")][int(task["index"])])

        def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN206
            super().reset(seed=seed)
            obs, info = self.env.reset(seed=seed)
            return obs.astype(np.float32), info

        def step(self, action):  # noqa: ANN001, ANN201
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info

        def close(self) -> None:
            self.env.close()

    return MetaWorldML1(task, seed)


@dataclass(frozen=True)
class EnvSpec:
    """A named task distribution: how to build one environment of it and its episode length."""

    name: str
    summary: str
    factory: Callable[..., Any]
    horizon: int
    discrete: bool = False


ENVS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in [
        EnvSpec("point2d", "2D point navigation, goals U[-0.5, 0.5]^2, reward -distance (MAML)", _navigation2d, 100),
        EnvSpec("cheetah-vel", "HalfCheetah-v5, target velocity U[0, 2] (MAML, ProMP)", lambda **o: _half_cheetah("vel", **o), 200),
        EnvSpec("cheetah-dir", "HalfCheetah-v5, run forward or backward (MAML, ProMP)", lambda **o: _half_cheetah("dir", **o), 200),
        EnvSpec("ant-dir", "Ant-v5, run forward or backward (MAML)", _ant_dir, 200),
        EnvSpec("cartpole", "CartPole with pole half-length U[0.25, 1] and mass U[0.05, 0.5]", _cartpole, 200, discrete=True),
        EnvSpec("ml1", "Meta-World ML1 (option task: reach-v3, push-v3, ...), 50 train / 50 test goals", _metaworld_ml1, 150),
    ]
}


def make_env(name: str, horizon: int | None = None, options: dict[str, Any] | None = None) -> Any:
    """One environment of task distribution ``name`` with a fixed episode length.

    ``name`` is one of :data:`ENVS` or any registered gymnasium id whose environment implements the
    task protocol. Bad names and environments without the protocol raise :class:`MetakitError`.
    """
    gym = _gym()
    from gymnasium.wrappers import TimeLimit

    options = dict(options or {})
    if name in ENVS:
        spec = ENVS[name]
        try:
            env = spec.factory(**options)
        except TypeError as exc:
            raise MetakitError(f"bad env options for {name!r}: {exc}.") from None
        return TimeLimit(env, horizon or spec.horizon)
    if name not in gym.registry:
        raise unknown_name("meta-RL environment", name, list(ENVS))
    env = gym.make(name, **options)
    if not isinstance(env.unwrapped, TaskEnv):
        env.close()
        raise MetakitError(
            f"environment {name!r} has no task protocol (sample_tasks(n, rng), set_task(task)); "
            f"use one of {', '.join(ENVS)} or add those two methods to it."
        )
    return TimeLimit(env, horizon) if horizon else env


def task_env(env: Any) -> TaskEnv:
    """The innermost environment of ``env`` (through wrappers): the one that owns the task protocol."""
    return env.unwrapped
