"""The plugin registry: what each domain adds to metakit, found through entry points.

A domain (classification, text, rl, recsys, nas, hpo, or a package outside metakit) describes
itself with one :class:`Plugin`: its CLI subcommands, learners, backbones, datasets and the config
section it reads. It publishes that object under the ``metakit.plugins`` entry-point group::

    [project.entry-points."metakit.plugins"]
    rl = "metakit.rl.plugin:plugin"

The core never imports a domain; it asks this module. Every target is a ``"module:attribute"``
string that is imported only when that one name is used, so ``metakit --help`` loads the plugin
modules (which must stay light: no torch, no optional extra) and nothing else, and a domain whose
extra is missing fails only when it is used, with that domain's own error line.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from metakit.errors import MetakitError, unknown_name

#: The entry-point group every plugin is published under.
ENTRY_POINT_GROUP = "metakit.plugins"

#: The kinds of named things a plugin can add, as in configs (``learner.name``, ...).
KINDS = ("learner", "backbone", "dataset")


@dataclass(frozen=True)
class Plugin:
    """What one domain adds. Every target is ``"module:attribute"``, imported on first use.

    Attributes:
        name: the domain's name (shown by ``metakit plugins`` and in errors).
        summary: one line saying what the domain is for.
        commands: CLI subcommand name -> a function ``add(subparsers) -> None`` that adds that
            subcommand (with ``set_defaults(func=...)``) to the ``metakit`` parser; the helpers in
            :mod:`metakit.cli` (``add_config_command``, ...) give it the usual arguments.
        learners: learner name -> a :class:`~metakit.learners.Learner` subclass.
        backbones: backbone name -> a factory ``f(input_shape, **options) -> nn.Module``.
        datasets: dataset name -> a :class:`~metakit.datasets.DatasetSpec`, or a function of no
            arguments that returns one (so that the module need not import :mod:`metakit.datasets`,
            and with it torch, before the dataset is used).
        config_section: the top-level config section holding the domain's own settings
            (``nas``, ``tune``, ...), or ``None`` when it reads only the shared sections.
        inputs: a kind of raw input the domain's runs read (``text``) -> a function
            ``prepare(items, spec, progress) -> Tensor`` turning those items (sentences) into the
            tensors the run's learner takes, as the run's
            :class:`~metakit.predict.InputSpec` ``spec`` says; :mod:`metakit.predict` asks it
            (:func:`input_preparer`), so the core need not know how a domain encodes its inputs.
        config_schema: the dataclass of that section, which :mod:`metakit.config` validates it
            against (unknown keys, types, "did you mean"); its ``check()`` method, if any, then
            rejects impossible values.
        config_root: whether the section's keys sit at the top level of the domain's own config
            files instead of under ``config_section:`` beside the shared sections (rl and recsys:
            their ``train`` and ``eval`` mean something else than classification's).
        config_example: a config file of the domain, named by the errors about its config files.
        evaluate_run: ``f(args) -> int``, what ``metakit evaluate RUN_DIR`` runs on the domain's
            run directories (``args.run_dir``, ``args.json``, ``args.no_progress`` and the
            classification options, which it may ignore).
        report_run: ``f(run_dir) -> metakit.runs.Report``, the report rebuilt from the files in
            the domain's run directory, for ``metakit report RUN_DIR``.
        predict_run: ``f(args) -> int``, what ``metakit predict RUN_DIR`` runs on the domain's runs.
        serve_run: ``f(run_dir, host, port, checkpoint, limits, announce) -> int``, what ``metakit
            serve RUN_DIR`` runs on the domain's runs (:func:`metakit.serve.serve` with the
            domain's app).
    """

    name: str
    summary: str
    commands: Mapping[str, str] = field(default_factory=dict)
    learners: Mapping[str, str] = field(default_factory=dict)
    backbones: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)
    config_section: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    config_schema: str | None = None
    config_root: bool = False
    config_example: str | None = None
    evaluate_run: str | None = None
    report_run: str | None = None
    predict_run: str | None = None
    serve_run: str | None = None

    def targets(self, kind: str) -> Mapping[str, str]:
        """The names this plugin adds of ``kind`` (``learner``, ``backbone`` or ``dataset``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; one of {', '.join(KINDS)}")
        return getattr(self, kind + "s")


def load_target(target: str, what: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute; ``what`` names it in errors.

    An import error from a missing optional extra is the domain's own business (its modules raise
    their one-line hint when used); an import error for the target itself means the plugin points
    at something that does not exist, which is said here in one line.
    """
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise MetakitError(f"{what} points at {target!r}, but module {exc.name!r} is not installed; "
                               f"install the package that provides it.") from exc
        raise
    try:
        return getattr(module, attr) if attr else module
    except AttributeError:
        raise MetakitError(f"{what} points at {target!r}, but {module_name} has no {attr!r}; "
                           f"fix the plugin's entry.") from None


@cache
def plugins() -> dict[str, Plugin]:
    """Every installed plugin by name, discovered once through the ``metakit.plugins`` entry points.

    Raises:
        MetakitError: an entry point does not load or is not a :class:`Plugin`, two plugins claim
            one name, or metakit's own plugins are missing (an install that predates them).
    """
    found: dict[str, Plugin] = {}
    # The core's commands come first in `metakit --help`, then each domain's, by name.
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != "classification", e.name)):
        what = f"plugin {ep.name!r} ({ep.value})"
        try:
            plugin = ep.load()
        except MetakitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a third-party plugin may fail in any way; say which one
            raise MetakitError(f"{what} failed to load ({type(exc).__name__}: {exc}); "
                               f"fix or uninstall the package that provides it.") from exc
        if not isinstance(plugin, Plugin):
            raise MetakitError(f"{what} is a {type(plugin).__name__}, not a metakit.registry.Plugin; fix its entry point.")
        if plugin.name in found:
            raise MetakitError(f"two plugins are named {plugin.name!r}; uninstall one of them.")
        found[plugin.name] = plugin
    if "classification" not in found:
        # Without its own entry points metakit has no commands at all: the install predates them.
        raise MetakitError("metakit's own plugins are not registered (no metakit.plugins entry points); "
                           "reinstall metakit, e.g. pip install -e . in a checkout.")
    _check_unique(found)
    return found


def _check_unique(found: Mapping[str, Plugin]) -> None:
    """One owner per command, input kind and learner, backbone and dataset name, so no plugin shadows another."""
    for kind in ("command", "input", *KINDS):
        owners: dict[str, str] = {}
        for plugin in found.values():
            for name in getattr(plugin, kind + "s"):
                if name in owners:
                    raise MetakitError(f"plugins {owners[name]!r} and {plugin.name!r} both add the {kind} {name!r}; "
                                       f"uninstall one of them.")
                owners[name] = plugin.name


def names(kind: str) -> list[str]:
    """Every name of ``kind`` that the plugins add, without importing any of them."""
    return [name for plugin in plugins().values() for name in plugin.targets(kind)]


def find(kind: str, name: str) -> Any | None:
    """The object a plugin registers as ``name`` of ``kind``, imported now; ``None`` when none does."""
    for plugin in plugins().values():
        target = plugin.targets(kind).get(name)
        if target is not None:
            obj = load_target(target, f"{kind} {name!r} of plugin {plugin.name!r}")
            # A DatasetSpec is not callable; a function in its place builds it now (see Plugin.datasets).
            return obj() if kind == "dataset" and callable(obj) else obj
    return None


def input_preparer(kind: str) -> Callable[..., Any] | None:
    """The function a plugin prepares raw inputs of ``kind`` with (:attr:`Plugin.inputs`), imported now; ``None`` when none does."""
    for plugin in plugins().values():
        target = plugin.inputs.get(kind)
        if target is not None:
            return load_target(target, f"input kind {kind!r} of plugin {plugin.name!r}")
    return None


class PluginTable(dict[str, Any]):
    """The table of one kind (``BACKBONES``, ``LEARNERS``): what the core registered, then the plugins'.

    A name that is not in the table yet is looked up among the plugins (:func:`find`) on first
    use, so ``table[name]`` works for every installed name while only the used ones are imported.
    ``adopt(name, obj)``, when given, is how a plugin's object joins the table (a learner also
    learns its registry name); by default it is simply stored.
    """

    def __init__(self, kind: str, adopt: Callable[[str, Any], None] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._adopt = adopt

    def __missing__(self, name: str) -> Any:
        obj = find(self.kind, name)
        if obj is None:
            raise KeyError(name)
        if self._adopt is None:
            self[name] = obj
        else:
            self._adopt(name, obj)
        return self[name]

    def get_or_fail(self, name: str) -> Any:
        """``table[name]``, or a one-line error listing every valid name (the plugins' included)."""
        try:
            return self[name]
        except KeyError:
            raise unknown_name(self.kind, name, {*self, *names(self.kind)}) from None


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports ``package.exports[name]`` when ``name`` is first used.

    A domain package whose ``__init__`` re-exports torch-heavy names uses it so that importing its
    light plugin module (which imports the package first) does not import torch.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__


#: The core commands that act on a run directory, each dispatched to the hook of the run's domain.
RUN_COMMANDS = ("evaluate", "report", "predict", "serve")


def run_hook(domain: str, command: str, run_dir: str) -> Any:
    """The function ``domain`` registers for ``metakit COMMAND RUN_DIR`` (see :data:`RUN_COMMANDS`), imported now.

    Raises:
        MetakitError: no installed plugin is ``domain``, or it has no such hook (the line names the
            commands it has).
    """
    if domain not in plugins():
        raise MetakitError(f"{run_dir} is a {domain!r} run, but no installed plugin is named {domain!r} "
                           f"(installed: {', '.join(plugins())}); install the package that adds it.")
    plugin = plugins()[domain]
    target = getattr(plugin, f"{command}_run")
    if target is None:
        has = [f"metakit {c}" for c in RUN_COMMANDS if getattr(plugin, f"{c}_run")]
        own = [f"metakit {c}" for c in plugin.commands]
        offer = "; ".join(p for p in (f"{', '.join(has)} RUN_DIR work on them" if has else "",
                                       f"see {', '.join(own)} --help" if own else "") if p)
        raise MetakitError(f"{run_dir} is a {domain} run, and metakit {command} does not support {domain} runs"
                           f"{'; ' + offer if offer else ''}.")
    return load_target(target, f"{command} hook of plugin {plugin.name!r}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add every plugin's subcommands to the ``metakit`` parser, in the order the plugins declare them.

    Several commands may share one adder (the core adds all of its commands in one function); each
    adder is called once.
    """
    for plugin in plugins().values():
        called: set[str] = set()
        for command, target in plugin.commands.items():
            if target not in called:
                load_target(target, f"command {command!r} of plugin {plugin.name!r}")(subparsers)
                called.add(target)
            if command not in subparsers.choices:
                raise MetakitError(f"plugin {plugin.name!r} declares the command {command!r}, but {target} "
                                   f"did not add it; fix the plugin.")
