"""Run configuration: YAML files validated against dataclasses, with ``key=value`` overrides.

The fixed sections (``train``, ``episodes``, ``eval``) are dataclasses; the open sections
(``dataset``, ``backbone``, ``learner``) hold a ``name`` plus options that are checked against the
signature of whatever that name builds, so a new learner brings its own options without any change
here. Every unknown key fails with one line naming it and the closest valid keys.

This is the one config system of every domain. Config files, and the ``config.yaml`` a run saves,
are read here only (:func:`read_yaml_mapping`, :func:`read_saved_config`); ``key=value``
overrides are parsed here (:func:`parse_overrides`). Each domain registers its own section in its
plugin (``Plugin.config_section`` and the section's dataclass, ``Plugin.config_schema``), and
:func:`load_config` validates it with the rest, so numbers, types and "did you mean" work the same
everywhere. A section sits beside the shared ones (``nas:``, ``tune:``; the domain reads it typed
from :meth:`Config.section`), or is the whole file for a domain whose files have a layout of their
own (``load_config(path, domain="rl")`` returns the rl section's dataclass).

Why dataclasses and not pydantic v2: the schema is plain dataclasses plus one validator of under a hundred lines
(:func:`_build`, :func:`_coerce`). Pydantic would replace the validator but not the open sections,
whose options are checked against constructor signatures, nor the error wording (one line: the
key, the problem, the fix), which would need a translation layer of about the same size over
pydantic's multi-line ``ValidationError``; and it would add a dependency to every domain. Less code
with clearer errors is what would justify the move, and it is not there.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints, overload

import yaml

from metakit.errors import MetakitError

# YAML 1.1 (PyYAML) reads ``1e-3``, ``1.0e3`` and ``-.5`` as strings, so ``lr: 1e-3`` used to fail
# as "not a number". These forms are floats to Python's float() and in YAML 1.2; metakit reads and
# writes them as floats everywhere it parses YAML (config files, ``key=value`` overrides, run dirs).
_FLOAT_EXTRA = re.compile(
    r"^[-+]?(?:(?:[0-9][0-9_]*)(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$|^[-+]?\.[0-9][0-9_]*$"
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads exponent floats without a dot (``1e-3``) as floats."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that quotes strings :class:`_Loader` would read back as floats (``"1e5"``)."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_EXTRA, list("-+.0123456789"))


def yaml_load(text: str) -> Any:
    """Parse YAML safely, reading numeric literals the way Python's ``float()`` does.

    Beyond PyYAML's YAML 1.1 floats, ``1e-3``, ``1E5``, ``1.0e3`` and ``-.5`` become floats. Bare
    words such as ``inf`` and ``nan`` stay strings here; the numeric keys of a config parse them
    (and reject them as not finite) in :func:`_coerce`.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def yaml_dump(data: Any) -> str:
    """Dump plain data as YAML that :func:`yaml_load` reads back unchanged (key order kept)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """`` Did you mean a, b?`` naming the valid keys closest to a mistyped ``key`` (empty if none is close)."""
    close = difflib.get_close_matches(str(key), list(valid), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _unknown_key(section: str, key: str, valid: Sequence[str]) -> MetakitError:
    hint = did_you_mean(key, valid)
    where = f"{section}." if section else ""
    return MetakitError(
        f"unknown config key {where}{key}.{hint} Valid keys{' in ' + section if section else ''}: "
        f"{', '.join(sorted(valid))}."
    )


def _option_names(params: Sequence[inspect.Parameter]) -> list[str]:
    return [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def _function_options(fn: Callable[..., Any], skip: int) -> list[str] | None:
    """The options ``fn`` takes after ``skip`` positional arguments; ``None`` when it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return _option_names(params[skip:])


def _class_options(cls: type, skip: int) -> list[str] | None:
    """The options class ``cls`` takes after ``skip`` positional arguments, from its whole hierarchy.

    Walks the ``__init__`` of each class in the MRO for as long as they take ``**kwargs`` (which
    they pass on to their parent, with the positional arguments in place), collecting keyword
    parameters, subclasses' first. A parent option that a class in between sets itself is listed
    in that class's ``fixed_options`` and left out. ``None`` (no check) when the chain ends in
    ``**kwargs`` that go nowhere checkable.
    """
    valid: list[str] = []
    fixed: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            if klass is object:
                return None
            try:
                params = list(inspect.signature(init).parameters.values())[1 + skip:]  # after self
            except (TypeError, ValueError):  # a builtin's __init__: nothing to read
                return None
            valid += [n for n in _option_names(params) if n not in fixed and n not in valid]
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                return valid
        fixed.update(klass.__dict__.get("fixed_options", ()))
    return None


def call_with_options(fn: Callable[..., Any], options: dict[str, Any], what: str, *args: Any) -> Any:
    """Call ``fn(*args, **options)`` after checking every option names one of ``fn``'s parameters.

    Datasets, backbones and learners are configured through their own signatures this way; an
    unknown option fails with one line naming it and the closest valid options. A class is checked
    against its whole hierarchy (:func:`_class_options`), so a subclass that takes ``**options``
    and passes them to its parent accepts the parent's options without declaring them again.
    """
    valid = _function_options(fn, len(args))
    if valid is None and inspect.isclass(fn):
        valid = _class_options(fn, len(args))
    if valid is None:
        return fn(*args, **options)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise MetakitError(f"unknown option {key!r} for {what}.{hint} Valid: {', '.join(valid) or 'none'}.")
    try:
        return fn(*args, **options)
    except TypeError as exc:
        raise MetakitError(f"bad options for {what}: {exc}.") from None


def options_section(
    fn: Callable[..., Any],
    name: str,
    doc: str,
    exclude: Sequence[str] = (),
    extra: Sequence[tuple[str, Any, Any]] = (),
    module: str | None = None,
) -> type:
    """A config section (a dataclass) whose keys are ``fn``'s options, with their types and defaults.

    An algorithm declares its options once, in its constructor; the section that configures it is
    read from that signature instead of being written again as a dataclass, so a new option or a
    changed default reaches the config file, the resolved ``config.yaml`` and the "did you mean"
    errors at once. Every parameter with a default becomes a key, except those in ``exclude``
    (options the caller fills from another section); ``extra`` adds ``(key, type, default)`` keys
    the caller reads itself (e.g. a count from which it builds a constructor argument). ``module``
    names the module the section belongs to (in messages and ``repr``).
    """
    hints = get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    fields = [(key, hint, field(default=default)) for key, hint, default in extra]
    skip = {*exclude, *(key for key, _, _ in extra)}
    for p in inspect.signature(fn).parameters.values():
        if p.default is not inspect.Parameter.empty and p.name not in skip:
            fields.append((p.name, hints.get(p.name, Any), field(default=p.default)))
    cls = dataclasses.make_dataclass(name, fields)
    cls.__doc__ = doc
    if module:
        cls.__module__ = module
    return cls


@dataclass
class TrainConfig:
    """Meta-training loop settings."""

    steps: int = 2000
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 0
    gamma: float = 0.5
    grad_clip: float | None = None
    val_every: int = 250
    checkpoint_every: int = 0
    patience: int | None = None
    threads: int | None = None
    tensorboard: bool = False
    device: str = "cpu"


@dataclass
class EpisodeConfig:
    """Meta-training episodes: N-way K-shot Q-query, ``meta_batch`` tasks per step.

    ``sampler`` is ``standard`` (N-way K-shot) or ``metadataset``: variable-way variable-shot
    episodes as in Meta-Dataset (:class:`~metakit.episodes.MetaDatasetSampler`), for training and
    for every evaluation of the run (``ways``, ``shots``, ``queries`` and ``eval.ways/shots`` are
    then not used).
    """

    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 4
    augment: str | None = None
    sampler: str = "standard"


@dataclass
class EvalConfig:
    """Validation and test protocol: fixed episodes drawn from ``seed``."""

    ways: list[int] = field(default_factory=lambda: [5])
    shots: list[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    episodes: int = 1000
    val_episodes: int = 200
    val_shots: int | None = None
    seed: int = 1234


@dataclass
class PretrainConfig:
    """Optional self-supervised pretraining of the backbone before meta-training.

    ``objective`` is ``None`` (off), ``"rotation"`` or ``"simclr"``; it runs on the training
    split's images without their labels.
    """

    objective: str | None = None
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 0.5


@dataclass
class DatasetConfig:
    """Which dataset and how its classes are split; other keys go to the dataset's loader."""

    name: str = "glyphs"
    split: str = "group"
    split_seed: int = 0
    fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    rotations: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class NamedConfig:
    """A ``name`` plus options checked against what the name builds (backbone, learner)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """A whole run: everything needed to reproduce it, saved as ``config.yaml`` in the run dir."""

    name: str = "run"
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: NamedConfig = field(default_factory=lambda: NamedConfig(_DEFAULT_NAMES["backbone"]))
    learner: NamedConfig = field(default_factory=lambda: NamedConfig(_DEFAULT_NAMES["learner"]))
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    #: Domain sections (``nas``, ``tune``): section name -> the typed section its plugin registers.
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """The typed domain section ``name`` (e.g. ``nas``), or ``None`` when the config has none."""
        return self.sections.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, with open sections flattened as they are written in YAML."""
        sections = self.sections
        out = asdict(dataclasses.replace(self, sections={}))
        del out["sections"]
        for section in ("dataset", "backbone", "learner"):
            opts = out[section].pop("options")
            out[section].update(opts)
        for name, value in sections.items():
            out[name] = value.to_dict() if hasattr(value, "to_dict") else asdict(value)
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML (read back unchanged by :func:`load_config`)."""
        return yaml_dump(self.to_dict())


T = TypeVar("T")
# An override such as backbone.hidden=32 without a name configures the default backbone.
_DEFAULT_NAMES = {"backbone": "conv4", "learner": "protonet"}


def _is_open(cls: type) -> bool:
    """Whether ``cls`` is an open section: its unknown keys are ``options`` for what its name builds."""
    return any(f.name == "options" for f in dataclasses.fields(cls))


def _number(name: str, value: Any, what: str) -> float | int | None:
    """``value`` as a number, or ``None`` if it is not one; numeric strings count (``"1e-3"``, ``"inf"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        if not math.isfinite(number):
            raise MetakitError(f"config key {name} must be a finite {what}, got {value!r}.")
        return number
    return None


def _coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    name = f"{section}.{key}" if section else key
    text = str(hint)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise MetakitError(f"config key {name} must not be empty.")
    if "list" in text:
        if not isinstance(value, list):
            value = [value]
        inner = float if "float" in text else int if "int" in text else None
        if inner is None:
            return value
        numbers = [_number(name, v, "number") for v in value]
        if any(n is None or (isinstance(n, float) and not math.isfinite(n)) for n in numbers):
            raise MetakitError(f"config key {name} must be a list of numbers, got {value!r}.")
        if inner is int and not all(float(n).is_integer() for n in numbers):
            raise MetakitError(f"config key {name} must be a list of integers, got {value!r}.")
        return [inner(n) for n in numbers]
    if text.startswith("bool") or hint is bool:
        if not isinstance(value, bool):
            raise MetakitError(f"config key {name} must be true or false, got {value!r}.")
        return value
    if hint is int or text.startswith("int"):
        number = _number(name, value, "integer")
        if number is None or not math.isfinite(number) or not float(number).is_integer():
            raise MetakitError(f"config key {name} must be an integer, got {value!r}.")
        return int(number)
    if hint is float or text.startswith("float"):
        number = _number(name, value, "number")
        if number is None:
            raise MetakitError(f"config key {name} must be a number, got {value!r}.")
        if not math.isfinite(number):
            raise MetakitError(f"config key {name} must be a finite number, got {value!r}.")
        return float(number)
    if hint is str or text.startswith("str"):
        if not isinstance(value, str):
            raise MetakitError(f"config key {name} must be a string, got {value!r}.")
    return value


def _valid_keys(cls: type) -> list[str]:
    """The keys a section of ``cls`` takes; at the top level of a run config, the domains' sections too."""
    if cls is not Config:
        return [f.name for f in dataclasses.fields(cls)]
    nested = [name for name, plugin in domain_sections().items() if not plugin.config_root]
    return [f.name for f in dataclasses.fields(cls) if f.name != "sections"] + nested


def _build(cls: type[T], data: Any, section: str) -> T:
    is_open = _is_open(cls)
    if isinstance(data, str) and is_open:
        data = {"name": data}
    if not isinstance(data, dict):
        raise MetakitError(f"config section {section or 'top level'} must be a mapping, got {data!r}.")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key == "options" or key not in fields:
            if is_open:
                options.update(value if key == "options" and isinstance(value, dict) else {key: value})
                continue
            raise _unknown_key(section, key, _valid_keys(cls))
        hint = hints[key]
        if key == "sections" and cls is Config:  # filled from the domain sections, never written as such
            raise _unknown_key(section, key, _valid_keys(cls))
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, key)
        else:
            kwargs[key] = _coerce(section, key, value, hint)
    if is_open:
        if "name" not in kwargs and cls is NamedConfig:
            if section not in _DEFAULT_NAMES:
                raise MetakitError(f"config section {section} needs a name.")
            kwargs["name"] = _DEFAULT_NAMES[section]
        kwargs["options"] = options
    return cls(**kwargs)


def section_from_dict(schema: type[T], data: Any, section: str = "") -> T:
    """Validate one config section (``""``: a whole config) against its dataclass ``schema``.

    Every domain's sections go through here (:meth:`DomainSection.build` for those the plugins
    register), so they all read numbers the same way (``1e-3``, ``"5e1"`` steps), reject wrong
    types with one line, and name the closest valid keys for an unknown one. Nested dataclass
    fields are sections of their own.
    """
    return _build(schema, data, section)


def dataset_from_dict(data: dict[str, Any] | str) -> DatasetConfig:
    """Validate a ``dataset`` section on its own (e.g. a cross-domain target)."""
    return _build(DatasetConfig, data, "dataset")


def parse_value(raw: str) -> Any:
    """The value of a command-line ``key=value``: YAML (``5``, ``1e-3``, ``[1, 5]``), empty is ``None``.

    Text that is not YAML (a path with a colon and brackets) stays the text it is.
    """
    try:
        return yaml_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return raw


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["train.steps=100", "learner.inner_lr=0.1"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise MetakitError(f"override {item!r} must look like key=value, e.g. train.steps=100.")
        key, raw = item.split("=", 1)
        value = parse_value(raw)
        node = nested
        parts = key.strip().split(".")
        if not all(parts):
            raise MetakitError(f"override {item!r} needs a dotted key such as train.steps before the '='.")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MetakitError(f"override {item!r} sets a key inside a non-mapping.")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


#: What ``train.device`` may say; whether that device exists is checked when training starts.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_threads(key: str, threads: int | None) -> None:
    """Fail with one line unless ``threads`` is ``None`` (torch's default) or a count >= 1."""
    if threads is not None and threads < 1:
        raise MetakitError(
            f"{key} must be >= 1, or null (leave it out) for torch's default of one thread per physical core; "
            f"got {threads}."
        )


@dataclass(frozen=True)
class DomainSection:
    """A config section a plugin registers (:class:`metakit.registry.Plugin`): its name, dataclass and layout."""

    domain: str
    name: str
    schema: type
    root: bool
    example: str | None

    def build(self, data: Any) -> Any:
        """Validate ``data`` against the section's dataclass, then its ``check()`` (if it has one)."""
        value = section_from_dict(self.schema, {} if data is None else data, "" if self.root else self.name)
        check = getattr(value, "check", None)
        return check() if callable(check) else value


def domain_sections() -> dict[str, Any]:
    """The plugins that register a config section, by section name (``nas``, ``tune``, ``rl``, ...)."""
    from metakit.registry import plugins

    return {p.config_section: p for p in plugins().values() if p.config_section and p.config_schema}


def domain_section(domain: str) -> DomainSection:
    """The config section of plugin ``domain``, its dataclass imported now; one line if it registers none.

    Only the sections a config uses are imported, so reading a classification config imports no domain.
    """
    from metakit.registry import load_target

    for p in domain_sections().values():
        if p.name == domain:
            schema = load_target(p.config_schema, f"config section {p.config_section!r} of plugin {p.name!r}")
            return DomainSection(p.name, p.config_section, schema, p.config_root, p.config_example)
    with_one = ", ".join(p.name for p in domain_sections().values())
    raise MetakitError(f"domain {domain!r} registers no config section; domains with one: {with_one}.")


@overload
def config_from_dict(data: dict[str, Any], domain: None = None) -> Config: ...
@overload
def config_from_dict(data: dict[str, Any], domain: str) -> Any: ...
def config_from_dict(data: dict[str, Any], domain: str | None = None) -> Any:
    """Validate plain data (parsed YAML) into the config of ``domain`` (``None``: a run :class:`Config`).

    A run config's domain sections (``nas:``, ``tune:``) are validated by the dataclass their
    plugin registers and kept, typed, in :attr:`Config.sections`. A domain whose section is its
    files' top level (rl, recsys) gets that section's dataclass back instead of a :class:`Config`.
    """
    if domain is not None:
        section = domain_section(domain)
        if section.root:
            return section.build(dict(data))
    data = dict(data)
    nested = [p for name, p in domain_sections().items() if not p.config_root and name in data]
    # Domain sections first: their errors came first when each domain read its own section.
    sections = {p.config_section: domain_section(p.name).build(data.pop(p.config_section)) for p in nested}
    config = _build(Config, data, "")
    config.sections = sections
    check_threads("train.threads", config.train.threads)
    if not DEVICE_PATTERN.fullmatch(config.train.device):
        raise MetakitError(f"unknown train.device {config.train.device!r}; use cpu, cuda, cuda:N, mps or auto.")
    return config


def read_yaml_mapping(path: str | Path, example: str = "configs/quickstart.yaml") -> dict[str, Any]:
    """A YAML config file's top-level mapping; a missing, unreadable, binary, empty or malformed file is one clear line.

    ``example`` names a config of the right kind for the messages (NAS, RL, recsys and tune
    configs share this reader but have schemas of their own).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise MetakitError(f"config file {path} {what}; pass a YAML file such as {example}.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetakitError(f"cannot read config file {path} ({exc.strerror or exc}); check its permissions.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetakitError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            f"pass a YAML file such as {example}."
        ) from None
    try:
        loaded = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MetakitError(f"malformed YAML in {path}{where}; fix the syntax.") from None
    if loaded is None:
        # An empty file is almost always a mistake (wrong file, failed copy), not "all defaults".
        raise MetakitError(f"config file {path} is empty; start from an example such as {example}.")
    if not isinstance(loaded, dict):
        raise MetakitError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}.")
    return loaded


def read_saved_config(path: Path, missing: str) -> dict[str, Any]:
    """The mapping of a config file a run saved (its ``config.yaml``); ``missing`` is the error when there is none.

    The file was written by metakit, so any problem means it was damaged or is not a run's: the
    fix is to restore it or train again, not to edit it.
    """
    if not path.is_file():
        raise MetakitError(missing)
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MetakitError(f"{path} is not valid YAML; restore it or re-run training.") from None
    if not isinstance(data, dict):
        raise MetakitError(f"{path} does not hold a run config; restore it or re-run training.")
    return data


@overload
def load_config(path: str | Path | None, overrides: Sequence[str] = (), domain: None = None) -> Config: ...
@overload
def load_config(path: str | Path | None, overrides: Sequence[str], domain: str) -> Any: ...
@overload
def load_config(path: str | Path | None, *, domain: str) -> Any: ...
def load_config(path: str | Path | None, overrides: Sequence[str] = (), domain: str | None = None) -> Any:
    """Read a YAML config file (``None`` = all defaults), apply overrides and validate.

    ``domain`` names a domain whose config files have a layout of their own (``rl``, ``recsys``);
    without it the file is a run :class:`Config`, with any domain sections (``nas:``, ``tune:``) in it.
    """
    example = (domain_section(domain).example if domain else None) or "configs/quickstart.yaml"
    data = {} if path is None else read_yaml_mapping(path, example)
    return config_from_dict(merge(data, parse_overrides(overrides)), domain)
