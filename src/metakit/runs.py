"""The run directory: one folder per run holding everything needed to inspect or continue it.

Layout::

    RUN_DIR/
      run.json               the run's domain ({"domain": "rl"}), which metakit evaluate/report/predict dispatch on
      config.yaml            resolved config (re-run it to reproduce the run)
      metrics.jsonl          one JSON record per log point (train and val)
      checkpoints/last.pt    full training state, for --resume
      checkpoints/best.pt    learner weights at the best validation score
      pretraining.json       self-supervised pretraining log (when pretrain.objective is set)
      checkpoints/pretrained_backbone.pt   the backbone right after pretraining
      training.json          training summary (steps, time, best validation)
      evaluation.json        test results written by ``metakit evaluate``
      learning_curve.png     train loss/metric and validation metric against steps
      report.md              human-readable summary linking the plots

Every domain's trainer writes its run directory through :class:`Run`: it starts a fresh run
(the directory appears atomically, holding its config, seed included, and an empty metrics log)
or checks that a resumed one has the same config, appends to ``metrics.jsonl`` (and TensorBoard),
and saves and loads checkpoints, always with safe loading (``weights_only``). The domains differ
only in what they put in the config and in the checkpoints.

Every domain's run report lands on disk through :func:`write_report`: the domain builds a
:class:`Report` (markdown, JSON and figures, each under its file name) from its own results, and
this module writes it. Reports are thus written the same way whatever the domain (atomically, so a
killed run never leaves half a file; figures always closed, so long jobs do not leak memory).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from metakit.config import Config, config_from_dict, read_saved_config
from metakit.errors import MetakitError
from metakit.utils import _UMASK, atomic_path, keep_jsonl, load_checkpoint, torch_save, write_json, write_text


def _file(relative: str, doc: str) -> property:
    """A :class:`RunPaths` property: ``relative`` below the run directory."""

    def path(self: RunPaths) -> Path:
        return self.root / relative

    return property(path, doc=doc)


@dataclass
class RunPaths:
    """Paths of the files in a run directory."""

    root: Path

    record = _file("run.json", "The run's domain.")
    config = _file("config.yaml", "Resolved config.")
    metrics = _file("metrics.jsonl", "JSONL metrics log.")
    last = _file("checkpoints/last.pt", "Full training state for resuming.")
    best = _file("checkpoints/best.pt", "Weights at the best validation score.")
    summary = _file("training.json", "Training summary.")
    evaluation = _file("evaluation.json", "Test results.")
    report = _file("report.md", "Markdown report.")
    curve = _file("learning_curve.png", "Learning-curve plot.")


def run_config_data(run_dir: str | Path, kind: str = "metakit", command: str = "a train run") -> dict[str, Any]:
    """The plain data of a run directory's ``config.yaml``, for the domain to validate.

    ``kind`` and ``command`` word the error when ``run_dir`` is not a run directory: "not a
    ``kind`` run directory; pass the --out of ``command``".
    """
    missing = f"{run_dir} is not a {kind + ' ' if kind else ''}run directory (no config.yaml); pass the --out of {command}."
    return read_saved_config(RunPaths(Path(run_dir)).config, missing)


def run_domain(run_dir: str | Path) -> str:
    """The domain that wrote ``run_dir`` (its ``run.json``); ``classification`` for runs from before the record."""
    path = RunPaths(Path(run_dir)).record
    if not path.is_file():
        return "classification"
    try:
        domain = json.loads(path.read_text(encoding="utf-8")).get("domain")
    except (ValueError, UnicodeDecodeError, AttributeError):
        domain = None
    if not isinstance(domain, str):
        raise MetakitError(f"{path} does not name the run's domain; restore it, or delete it if the run is a classification run.")
    return domain


def load_run_config(run_dir: str | Path) -> Config:
    """Read a run directory's resolved ``config.yaml``."""
    data = run_config_data(run_dir)
    train = data.get("train")
    if isinstance(train, dict) and train.get("threads") == 0:
        # Runs saved before threads=0 was rejected meant torch's default by it.
        train["threads"] = None
    return config_from_dict(data)


def load_weights(run_dir: str | Path, which: str = "best") -> dict[str, Any]:
    """The learner ``state_dict`` of checkpoint ``which`` (``best`` or ``last``)."""
    if which not in ("best", "last"):
        raise MetakitError(f"checkpoint must be 'best' or 'last', got {which!r}.")
    run = Run(run_dir)
    if not run.checkpoint(which).is_file():
        raise MetakitError(f"{run.checkpoint(which)} not found; train the run first (metakit train CONFIG --out {run_dir}).")
    return run.load(which, "re-run training", keys=("learner",))["learner"]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or ``None`` if it does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless backend, for a domain drawing a report's figures."""
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are files
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Plot:
    """A drawn matplotlib figure and the resolution it is saved at."""

    figure: Any
    dpi: int = 110


@dataclass
class Report:
    """What a domain hands :func:`write_report`: file name -> content; every part may be empty.

    A report is often written in pieces (the training part when training ends, the evaluation
    part later), so each call writes only the files it is given and leaves the others as they are.
    """

    text: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Plot] = field(default_factory=dict)


def write_report(out: str | Path, report: Report) -> Path:
    """Write ``report``'s JSON, PNG and text files into folder ``out`` (created if missing); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in report.data.items():
        write_json(out / name, data)
    if report.plots:
        plt = pyplot()
        for name, plot in report.plots.items():
            try:
                with atomic_path(out / name) as tmp:
                    plot.figure.savefig(tmp, format="png", dpi=plot.dpi)
            finally:
                plt.close(plot.figure)
    for name, text in report.text.items():
        write_text(out / name, text)
    return out


class Run:
    """A run directory as a trainer writes it: started or resumed, its metrics log and checkpoints.

    Args:
        root: the run directory.
        writes: whether this process writes files (the non-main processes of distributed training
            read checkpoints but leave the writing to the main one).
        domain: the plugin that writes the run, recorded in ``run.json`` when the run starts.
    """

    def __init__(self, root: str | Path, writes: bool = True, domain: str = "classification") -> None:
        self.paths = RunPaths(Path(root))
        self.root = self.paths.root
        self.writes = writes
        self.domain = domain
        self.tensorboard: Any = None

    def start(
        self, config_text: str, resume: bool, saved: Callable[[], dict[str, Any]], mine: dict[str, Any],
        extendable: Sequence[str] = (), started: Path | None = None, config_name: str = "config.yaml",
        fresh_log: bool = True,
    ) -> bool:
        """Start a fresh run (:meth:`create`), or check the run to resume (:meth:`resumes`); ``True`` if resuming."""
        if self.resumes(resume, saved, mine, extendable, started or self.root / config_name):
            if self.writes and not self.paths.record.exists():  # a run started before the record: give it one
                write_text(self.paths.record, self._record_text())
            return True
        self.create(config_text, config_name, fresh_log)
        return False

    def resumes(
        self, resume: bool, saved: Callable[[], dict[str, Any]], mine: dict[str, Any], extendable: Sequence[str] = (),
        started: Path | None = None, what: str = "run",
    ) -> bool:
        """Whether the run continues one already in the folder; that one must have the same config.

        A run counts as started once ``started`` exists (default: its ``config.yaml``). Resuming
        compares ``saved()`` (the config it was started with) to ``mine``, except for the dotted
        ``extendable`` keys (a longer training budget is allowed).
        """
        if not (started or self.paths.config).exists():
            return False
        if not resume:
            raise MetakitError(f"{self.root} already holds a {what}; pass --resume to continue it or choose another --out.")
        old = saved()
        for key in extendable:
            *parents, last = key.split(".")
            into, source = old, mine
            for part in parents:
                into, source = into.setdefault(part, {}), source[part]
            into[last] = source[last]
        if old != mine:
            raise MetakitError(f"the config differs from the one {self.root} was started with; resume with the same config.")
        return True

    def create(self, config_text: str, config_name: str = "config.yaml", fresh_log: bool = True) -> None:
        """Start a fresh run: the directory appears at once holding its config (and an empty log, with ``fresh_log``).

        Into an existing folder (one that holds other runs' files, or none) the files are written
        one by one, each atomically; ``run.json`` records the domain unless the folder has a record
        already. The fresh log matters: lines an earlier run left in the folder
        (another domain's run, or one whose checkpoint was deleted) would break the learning curve.
        """
        if not self.writes:
            return
        files = {config_name: config_text, **({self.paths.metrics.name: ""} if fresh_log else {})}
        if not self.paths.record.exists():
            # The first run in a folder owns it: a NAS search trains its supernet in its own folder
            # through the classification trainer, and the folder stays a nas run.
            files[self.paths.record.name] = self._record_text()
        if not self.root.exists():
            try:
                self.root.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", dir=self.root.parent))
            except OSError as exc:  # name the folder the user asked for, not its parent
                raise OSError(exc.errno, exc.strerror, str(self.root)) from None
            try:
                for name, text in files.items():
                    (staging / name).write_text(text, encoding="utf-8")
                os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp creates 0700; use what a plain mkdir would
                os.rename(staging, self.root)
                return
            except OSError:
                if not self.root.is_dir():
                    raise
                # Another process made the folder meanwhile: write into it below.
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        for name, text in files.items():
            write_text(self.root / name, text)

    def _record_text(self) -> str:
        return json.dumps({"domain": self.domain}) + "\n"

    def log(self, record: dict[str, Any], tag: str = "split", step: str = "step") -> None:
        """Append ``record`` to ``metrics.jsonl``; with TensorBoard on, its numbers as ``{record[tag]}/{key}``."""
        if not self.writes:
            return
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in (step, tag) and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{record[tag]}/{key}", value, record[step])

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the log records ``keep`` rejects (those past a resume point), so a resumed log has no duplicates."""
        if self.writes:
            keep_jsonl(self.paths.metrics, keep)

    def open_tensorboard(self, enabled: bool) -> None:
        """Mirror the logged numbers to TensorBoard under ``tensorboard/`` (if ``enabled``)."""
        if not enabled or not self.writes:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MetakitError("train.tensorboard needs the tensorboard package: pip install 'metakit[tensorboard]'.") from None
        self.tensorboard = SummaryWriter(str(self.root / "tensorboard"))

    def close_tensorboard(self) -> None:
        """Flush and close TensorBoard's writer, if open."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def checkpoint(self, name: str) -> Path:
        """The path of checkpoint ``name`` (``checkpoints/NAME.pt``)."""
        return self.root / "checkpoints" / f"{name}.pt"

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write checkpoint ``name`` atomically (a killed run keeps the previous one)."""
        if self.writes:
            torch_save(state, self.checkpoint(name))

    def load(self, name: str, fix: str, keys: Sequence[str] = ()) -> dict[str, Any]:
        """Checkpoint ``name``, loaded safely (see :func:`metakit.utils.load_checkpoint`); ``fix`` ends its errors."""
        return load_checkpoint(self.checkpoint(name), fix, keys=keys)


def progress_bar(label: str, console: Console, enabled: bool, transient: bool = False) -> Progress:
    """The training progress bar every domain shows: ``label``, bar, count, an info field, elapsed time and ETA."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=transient)
