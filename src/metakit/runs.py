"""The run directory: one folder per run holding everything needed to inspect or continue it.

Layout::

    RUN_DIR/
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

Every domain's run report lands on disk through :func:`write_report`: the domain builds a
:class:`Report` (markdown, JSON and figures, each under its file name) from its own results, and
this module writes it. Reports are thus written the same way whatever the domain (atomically, so a
killed run never leaves half a file; figures always closed, so long jobs do not leak memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metakit.config import Config, config_from_dict, yaml_load
from metakit.errors import MetakitError
from metakit.utils import atomic_path, load_checkpoint, write_json, write_text


@dataclass
class RunPaths:
    """Paths of the files in a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        """Resolved config."""
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        """JSONL metrics log."""
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        """Full training state for resuming."""
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """Weights at the best validation score."""
        return self.root / "checkpoints" / "best.pt"

    @property
    def summary(self) -> Path:
        """Training summary."""
        return self.root / "training.json"

    @property
    def evaluation(self) -> Path:
        """Test results."""
        return self.root / "evaluation.json"

    @property
    def report(self) -> Path:
        """Markdown report."""
        return self.root / "report.md"

    @property
    def curve(self) -> Path:
        """Learning-curve plot."""
        return self.root / "learning_curve.png"


def load_run_config(run_dir: str | Path) -> Config:
    """Read a run directory's resolved ``config.yaml``."""
    path = RunPaths(Path(run_dir)).config
    if not path.is_file():
        raise MetakitError(f"{run_dir} is not a metakit run directory (no config.yaml); pass the --out of a train run.")
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MetakitError(f"{path} is not valid YAML; restore it or re-run training.") from None
    if not isinstance(data, dict):
        raise MetakitError(f"{path} does not hold a run config; restore it or re-run training.")
    train = data.get("train")
    if isinstance(train, dict) and train.get("threads") == 0:
        # Runs saved before threads=0 was rejected meant torch's default by it.
        train["threads"] = None
    return config_from_dict(data)


def load_weights(run_dir: str | Path, which: str = "best") -> dict[str, Any]:
    """The learner ``state_dict`` of checkpoint ``which`` (``best`` or ``last``)."""
    paths = RunPaths(Path(run_dir))
    path = paths.best if which == "best" else paths.last
    if which not in ("best", "last"):
        raise MetakitError(f"checkpoint must be 'best' or 'last', got {which!r}.")
    if not path.is_file():
        raise MetakitError(f"{path} not found; train the run first (metakit train CONFIG --out {run_dir}).")
    return load_checkpoint(path, "re-run training", keys=("learner",))["learner"]


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
