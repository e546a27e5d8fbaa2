"""The building blocks of every ``metakit`` command, the core's and each domain's.

A domain's commands (``metakit.rl.cli``, ``metakit.nas.cli``, ...) build their parsers and check
their outputs with these, so every command takes the same arguments (``CONFIG KEY=VALUE ... --out
DIR``, ``RUN_DIR``, ``--json``, ``--no-progress``) and refuses a bad output path the same way. They
sit below :mod:`metakit.cli`, which assembles the commands of all plugins: a domain imports this
module, never the command line that imports the domains' plugins.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from metakit.errors import MetakitError

console = Console()
err_console = Console(stderr=True)


def default_out(name: str) -> Path:
    """The run directory a command uses without ``--out``: ``runs/NAME-YYYYMMDD-HHMMSS``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def positive_int(text: str) -> int:
    """argparse type for counts (episodes, ways, shots, ...): an integer >= 1, so 0 is not silently "the default"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail in one line, before any work starts, if ``path`` cannot become a directory of results.

    Nothing is created: a command that fails later on bad input leaves no empty directory behind.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MetakitError(f"{flag} {path} is an existing file; give a directory path (it is created if missing).")
    probe = _nearest_existing(path)
    if not probe.is_dir():
        raise MetakitError(f"{flag} {path} cannot be created: {probe} is a file, not a directory; choose another path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MetakitError(f"{flag} {path} cannot be written: {probe} is read-only for this user; choose another path.")
    return path


def check_output_file(path: str | os.PathLike | None, flag: str = "--json") -> None:
    """Like :func:`check_output_dir` for a file to be written at the end (``--json PATH``)."""
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        raise MetakitError(f"{flag} {path} is a directory; give a file path such as results.json.")
    probe = _nearest_existing(path.parent)
    if not probe.is_dir():
        raise MetakitError(f"{flag} {path} cannot be written: {probe} is a file, not a directory; choose another path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MetakitError(f"{flag} {path} cannot be written: {probe} is read-only for this user; choose another path.")


def write_json_option(path: str | None, data: Any) -> None:
    """Write a command's results to its ``--json PATH``, if given, and say so on stderr."""
    if path:
        from metakit.utils import write_json

        write_json(path, data)
        err_console.print(f"results written to {path}")


def add_common_options(p: argparse.ArgumentParser, json: bool = True) -> None:
    """Add ``--no-progress`` (and ``--json PATH`` unless ``json`` is false), which every command takes."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    if json:
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def add_config_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    config_help: str,
    overrides_help: str,
    out_help: str = "run directory (default runs/NAME-TIMESTAMP)",
    resume: str | None = None,
    evaluate: str | None = None,
) -> argparse.ArgumentParser:
    """Add a command that runs a YAML config: ``NAME CONFIG [KEY=VALUE ...] --out DIR``.

    ``resume`` and ``evaluate``, when given, are the help of ``--resume`` and ``--evaluate``. The
    command's description is ``func``'s docstring. Returns the subparser, for extra options.
    """
    p = sub.add_parser(name, help=help, description=func.__doc__)
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=overrides_help)
    p.add_argument("--out", metavar="DIR", help=out_help)
    if resume:
        p.add_argument("--resume", action="store_true", help=resume)
    if evaluate:
        p.add_argument("--evaluate", action="store_true", help=evaluate)
    add_common_options(p)
    p.set_defaults(func=func)
    return p


def add_run_dir_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str, run_dir_help: str
) -> argparse.ArgumentParser:
    """Add a command that reads a run directory: ``NAME RUN_DIR``. Returns the subparser, for extra options."""
    p = sub.add_parser(name, help=help, description=func.__doc__)
    p.add_argument("run_dir", help=run_dir_help)
    add_common_options(p)
    p.set_defaults(func=func)
    return p


def add_train_evaluate(
    group: argparse._SubParsersAction,
    command: str,
    train: Callable[[argparse.Namespace], int],
    evaluate: Callable[[argparse.Namespace], int],
    example: str,
    overrides: str,
    held_out: str,
    evaluate_help: str,
) -> argparse.ArgumentParser:
    """Add a domain group's ``train CONFIG`` (with ``--resume`` and ``--evaluate``) and ``evaluate RUN_DIR``.

    Args:
        group: the subparsers :func:`add_command_group` returned for ``command`` (``rl``, ``segment``).
        train, evaluate: the two commands' functions (their docstrings are the descriptions).
        example: a config path shown in the help (``configs/rl-point2d-mamlrl.yaml``); its name up
            to the first ``-`` is the configs' prefix.
        overrides: example overrides for the help.
        held_out: what ``--evaluate`` evaluates on (``held-out tasks``).
        evaluate_help: the help line of ``evaluate``.

    Returns:
        The ``evaluate`` subparser, for the domain's own options.
    """
    prefix = Path(example).name.split("-")[0]
    add_config_command(group, "train", train, help=f"meta-train from a YAML config (configs/{prefix}-*.yaml)",
                       config_help=f"YAML config, e.g. {example}", overrides_help=f"config overrides, e.g. {overrides}",
                       resume="continue the run in --out from its last checkpoints",
                       evaluate=f"evaluate on {held_out} after training")
    return add_run_dir_command(group, "evaluate", evaluate, help=evaluate_help,
                               run_dir_help=f"a run directory written by metakit {command} train")


def add_command_group(sub: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse._SubParsersAction:
    """Add a command ``NAME`` with subcommands of its own (``metakit rl train``); returns their subparsers.

    ``NAME`` alone prints the group's help and exits with status 2, as it names no work to do.
    """
    group = sub.add_parser(name, help=help, description=description)
    group.set_defaults(func=lambda _args: (group.print_help(), 2)[1])
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
