"""The search space and study settings of ``metakit tune``, declared in a config's ``tune:`` section.

A tunable config is an ordinary run config plus a ``tune`` section::

    tune:
      sampler: tpe            # grid | random | tpe | cmaes (Optuna's own samplers)
      pruner: median          # none | median | hyperband
      trials: 20              # default for --trials
      space:
        learner.inner_lr: {low: 0.01, high: 1.0, log: true}     # float (log scale)
        learner.inner_steps: {low: 1, high: 5}                  # int (both bounds integers)
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        episodes.ways: {choices: [5, 10, 20]}                   # categorical
        backbone.hidden: {low: 16, high: 64, step: 16}          # int on a grid

Every parameter name is a dotted config key, applied like a command-line override; the values
become Optuna distributions, so any sampler can work on them. The ``tune`` section is removed
before the rest is validated as a run config, so ``metakit train`` never sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from metakit.config import config_from_dict, did_you_mean, merge, parse_overrides, read_yaml_mapping
from metakit.errors import MetakitError, unknown_name

SAMPLERS = ("grid", "random", "tpe", "cmaes")
PRUNERS = ("none", "median", "hyperband")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "values"}
#: A grid over an integer range larger than this is almost certainly a mistake (e.g. a missing step).
MAX_GRID_POINTS = 10_000


@dataclass
class TuneSection:
    """The ``tune:`` section, the config section the hpo plugin registers (see the module docstring).

    ``load_config`` validates a tunable config with it (keys and types); :func:`parse_tune` then
    reads the section into a :class:`TuneSpec`, checking each parameter of the space.
    """

    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 20
    space: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def check(self) -> TuneSection:
        """Reject an unknown sampler or pruner; returns ``self``."""
        check_sampler(self.sampler.lower())
        check_pruner(self.pruner.lower())
        return self


_SETTING_KEYS = {f.name for f in fields(TuneSection)}


@dataclass(frozen=True)
class Param:
    """One tunable config key.

    Attributes:
        name: dotted config key, e.g. ``learner.inner_lr``.
        kind: ``float``, ``int`` or ``categorical``.
        low, high: bounds (numeric kinds).
        log: sample on a log scale.
        step: discretisation step, or ``None``.
        choices: the values of a categorical parameter.
        values: explicit grid points for the grid sampler, or ``None``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    values: tuple[Any, ...] | None = None

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        """The grid points of this parameter (for the grid sampler)."""
        if self.values is not None:
            return list(self.values)
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            points = list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        elif self.step:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            points = [self.low + i * self.step for i in range(count)]
        else:
            raise MetakitError(
                f"tune.space.{self.name} is a continuous float; the grid sampler needs a step or an explicit "
                f"values: [..] list for it."
            )
        if len(points) > MAX_GRID_POINTS:
            raise MetakitError(f"tune.space.{self.name} has {len(points)} grid points; give a larger step or values: [..].")
        return points


@dataclass
class TuneSpec:
    """A parsed tunable config: the run config without ``tune``, the space and the study settings."""

    base: dict[str, Any]
    params: list[Param]
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 20
    seed: int | None = None
    source: str = "<dict>"
    extra: dict[str, Any] = field(default_factory=dict)

    def distributions(self) -> dict[str, Any]:
        """Parameter name -> Optuna distribution."""
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` (an ``optuna.Trial``) for a value of every parameter."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return out

    def config_dict(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The run config (plain data) with ``params`` applied as dotted overrides."""
        return merge(self.base, params_to_nested(params))

    def grid(self) -> dict[str, list[Any]]:
        """Grid points per parameter (for Optuna's GridSampler)."""
        return {p.name: p.grid() for p in self.params}


def params_to_nested(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"learner.inner_lr": 0.1}`` -> ``{"learner": {"inner_lr": 0.1}}``."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetakitError(f"tune.space.{name}.{key} must be a finite number, got {value!r}.")
    return value


def _count(value: Any) -> int | None:
    """``value`` as an integer (``20``, ``2e1``), or ``None`` if it is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value)


def parse_param(name: str, spec: Any) -> Param:
    """Parse one ``tune.space`` entry; a list is shorthand for ``{choices: [...]}``."""
    if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
        raise MetakitError(f"tune.space key {name!r} must be a dotted config key such as learner.inner_lr.")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise MetakitError(
            f"tune.space.{name} must be a mapping such as {{low: 0.01, high: 1.0, log: true}} or {{choices: [..]}}, "
            f"got {spec!r}."
        )
    for key in spec:
        if key not in _PARAM_KEYS:
            raise MetakitError(f"unknown key {key!r} in tune.space.{name}.{did_you_mean(key, _PARAM_KEYS)} "
                               f"Valid: {', '.join(sorted(_PARAM_KEYS))}.")
    kind = spec.get("type")
    if kind is None:
        if "choices" in spec:
            kind = "categorical"
        elif "low" in spec and "high" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high"))
            step_int = spec.get("step") is None or isinstance(spec.get("step"), int)
            kind = "int" if ints and step_int else "float"
        else:
            raise MetakitError(f"tune.space.{name} needs low and high (a range) or choices (a list).")
    if kind not in ("float", "int", "categorical"):
        raise unknown_name(f"type in tune.space.{name}", str(kind), ("float", "int", "categorical"))
    values = spec.get("values")
    if values is not None and (not isinstance(values, list) or not values):
        raise MetakitError(f"tune.space.{name}.values must be a non-empty list of grid points.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise MetakitError(f"tune.space.{name}.choices must be a non-empty list.")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise MetakitError(f"tune.space.{name}.choices may hold numbers, strings, booleans or null, got {c!r}.")
        return Param(name, "categorical", choices=tuple(choices), values=tuple(values) if values else None)
    if "low" not in spec or "high" not in spec:
        raise MetakitError(f"tune.space.{name} ({kind}) needs both low and high.")
    low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
    if low > high:
        raise MetakitError(f"tune.space.{name}: low ({low}) is above high ({high}).")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise MetakitError(f"tune.space.{name}.log must be true or false, got {log!r}.")
    if log and low <= 0:
        raise MetakitError(f"tune.space.{name}: a log scale needs low > 0, got {low}.")
    step = spec.get("step")
    if step is not None:
        step = _number(name, "step", step)
        if step <= 0:
            raise MetakitError(f"tune.space.{name}.step must be > 0, got {step}.")
        if log:
            raise MetakitError(f"tune.space.{name}: step and log cannot be combined (Optuna does not support it).")
    if kind == "int":
        if not float(low).is_integer() or not float(high).is_integer() or (step is not None and not float(step).is_integer()):
            raise MetakitError(f"tune.space.{name} is an int parameter; low, high and step must be integers.")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
    if values is not None:
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high]
        if bad:
            raise MetakitError(f"tune.space.{name}.values must be numbers within [{low}, {high}], got {bad[0]!r}.")
    return Param(name, kind, low, high, log, step, values=tuple(values) if values else None)


def parse_tune(data: Mapping[str, Any], source: str = "<dict>") -> TuneSpec:
    """Split plain config data into the run config and a validated :class:`TuneSpec`.

    Raises:
        MetakitError: no ``tune`` section, an empty or malformed space, an unknown sampler or
            pruner, or a parameter that is not a valid config key.
    """
    data = dict(data)
    tune = data.pop("tune", None)
    if tune is None:
        raise MetakitError(
            f"{source} has no tune: section; add one with a search space, e.g. "
            f"tune: {{space: {{learner.inner_lr: {{low: 0.01, high: 1.0, log: true}}}}}}."
        )
    if not isinstance(tune, dict):
        raise MetakitError(f"the tune: section of {source} must be a mapping, got {tune!r}.")
    for key in tune:
        if key not in _SETTING_KEYS:
            raise MetakitError(f"unknown key tune.{key} in {source}.{did_you_mean(key, _SETTING_KEYS)} "
                               f"Valid: {', '.join(sorted(_SETTING_KEYS))}.")
    space = tune.get("space")
    if not space:
        raise MetakitError(f"tune.space in {source} is empty; declare at least one parameter, e.g. learner.inner_lr.")
    if not isinstance(space, dict):
        raise MetakitError(f"tune.space in {source} must be a mapping of config keys to ranges, got {space!r}.")
    params = [parse_param(name, spec) for name, spec in space.items()]
    sampler = str(tune.get("sampler", "tpe")).lower()
    pruner = str(tune.get("pruner", "median")).lower()
    check_sampler(sampler)
    check_pruner(pruner)
    trials = _count(tune.get("trials", 20))
    if trials is None or trials < 1:
        raise MetakitError(f"tune.trials must be a positive integer, got {tune.get('trials')!r}.")
    seed = tune.get("seed")
    if seed is not None:
        seed = _count(seed)
        if seed is None or seed < 0:
            raise MetakitError(f"tune.seed must be a non-negative integer, got {tune.get('seed')!r}.")
    spec = TuneSpec(data, params, sampler, pruner, trials, seed, source)
    validate_keys(spec)
    return spec


def check_sampler(name: str) -> None:
    """Fail with one line unless ``name`` is a supported sampler."""
    if name not in SAMPLERS:
        raise unknown_name("sampler", name, SAMPLERS)


def check_pruner(name: str) -> None:
    """Fail with one line unless ``name`` is a supported pruner."""
    if name not in PRUNERS:
        raise unknown_name("pruner", name, PRUNERS)


def _corner(p: Param, high: bool) -> Any:
    if p.kind == "categorical":
        return p.choices[-1 if high else 0]
    return p.high if high else p.low


def validate_keys(spec: TuneSpec) -> None:
    """Check that every parameter is a config key by validating the space's two corners.

    Keys of the fixed sections (``train``, ``episodes``, ...) are checked here; options of open
    sections (``learner.*``, ``backbone.*``) are checked when the experiment is first built.
    """
    for high in (False, True):
        point = {p.name: _corner(p, high) for p in spec.params}
        try:
            config_from_dict(spec.config_dict(point))
        except MetakitError as exc:
            raise MetakitError(f"search space of {spec.source} does not fit the config: {exc}") from None


def load_tune_spec(path: str | Path, overrides: Sequence[str] = ()) -> TuneSpec:
    """Read a YAML config with a ``tune:`` section, apply ``key=value`` overrides, parse the space."""
    data = read_yaml_mapping(path, "configs/glyphs-maml-tune.yaml (a config with a tune: section)")
    return parse_tune(merge(data, parse_overrides(overrides)), source=str(path))
