"""Checkpoints load with ``weights_only=True``: a crafted pickle is refused by every command that reads one.

Each command gets a real tiny run whose checkpoints were re-saved with a payload that, if unpickled
by plain ``torch.load``, would create a marker file. The command must exit 2 with one ``error:``
line naming the file, print no traceback, and leave no marker.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metakit.cli import main
from metakit.errors import MetakitError
from metakit.utils import load_checkpoint, rng_state, set_rng_state, torch_save

REPO = Path(__file__).resolve().parents[1]
needs_gym = pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None,
                               reason="gymnasium not installed (pip install 'metakit[rl]')")


class TouchOnLoad:
    """Unpickles by calling ``pathlib.Path.touch(marker)``: pure-Python code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class ExecOnLoad(TouchOnLoad):
    """Unpickles by calling ``exec`` on source that creates the marker."""

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class SystemOnLoad(TouchOnLoad):
    """Unpickles by running a shell command through ``os.system``."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch '{self.marker}'",))


PAYLOADS = [TouchOnLoad, ExecOnLoad, SystemOnLoad]


def poison(path: Path, marker: Path) -> None:
    """Re-save the real checkpoint ``path`` (which must itself load safely) with a payload inside."""
    content = load_checkpoint(path, "test setup")
    assert isinstance(content, dict)
    content["payload"] = TouchOnLoad(marker)
    torch.save(content, path)


def assert_refused(capsys: pytest.CaptureFixture[str], args: list[str], checkpoint: Path, marker: Path) -> None:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, err)
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert str(checkpoint) in err and "refused" in err, err
    assert not marker.exists(), f"{args}: loading the checkpoint ran code from it"


# -- the loader itself --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_run_under_plain_torch_load(tmp_path, payload):
    """The payloads are live: without weights_only they do run, so the refusals below mean something."""
    marker = tmp_path / "marker"
    torch.save({"learner": payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_loader_refuses_code(tmp_path, payload):
    marker = tmp_path / "marker"
    torch.save({"learner": payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(MetakitError) as exc:
        load_checkpoint(tmp_path / "evil.pt", "re-run training", keys=("learner",))
    message = str(exc.value)
    assert "\n" not in message and "evil.pt was refused" in message and message.endswith("re-run training.")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is corrupt or not a metakit checkpoint"),
        (os.urandom(4096), "is corrupt or not a metakit checkpoint"),
        (pickle.dumps({"learner": 1}, protocol=4), "is corrupt or not a metakit checkpoint"),
        ("truncated", "is corrupt or not a metakit checkpoint"),
        ("list", "is not a metakit checkpoint (no 'learner' entry)"),
        ("no-key", "is not a metakit checkpoint (no 'learner' entry)"),
    ],
)
def test_loader_bad_files_are_one_line(tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        torch.save({"learner": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:-500])
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "no-key":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(MetakitError) as exc:
        load_checkpoint(path, "delete it", keys=("learner",))
    assert needle in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state: that must round-trip too
    torch_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), np.random.randint(1 << 30), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt", "unused", keys=("rng",))["rng"])
    again = (random.random(), np.random.standard_normal(3).tolist(), np.random.randint(1 << 30), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


# -- every command that reads a checkpoint --------------------------------------------------------------


def _classification_config(tmp_path: Path) -> Path:
    cfg = {
        "name": "tiny",
        "seed": 1,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 4, "val_episodes": 2},
        "train": {"steps": 2, "val_every": 1, "threads": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run directory) of a 2-step classification run, trained once for this module."""
    root = tmp_path_factory.mktemp("trained")
    config = _classification_config(root)
    assert main(["train", str(config), "--out", str(root / "run"), "--no-progress"]) == 0
    return config, root / "run"


@pytest.fixture
def poisoned(trained, tmp_path) -> tuple[Path, Path, Path]:
    """(config, run, marker): a copy of the trained run with both checkpoints poisoned."""
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "marker"
    for name in ("best.pt", "last.pt"):
        poison(copy / "checkpoints" / name, marker)
    return config, copy, marker


@pytest.mark.parametrize(
    ("command", "checkpoint"),
    [
        (["evaluate", "{run}", "--episodes", "2"], "best.pt"),
        (["evaluate", "{run}", "--episodes", "2", "--checkpoint", "last"], "last.pt"),
        (["train", "{config}", "--out", "{run}", "--resume"], "last.pt"),
        (["train", "{config}", "train.steps=4", "--out", "{run}", "--resume"], "last.pt"),
        (["compare", "{run}", "--episodes", "2", "--out", "{tmp}/cmp"], "best.pt"),
        (["cross-domain", "{run}", "--datasets", "synthetic", "--episodes", "2", "--out", "{tmp}/x"], "best.pt"),
        (["continual", "{run}", "--tasks", "2", "--sequences", "1"], "best.pt"),
    ],
)
def test_classification_commands_refuse_a_malicious_checkpoint(poisoned, tmp_path, capsys, command, checkpoint):
    config, run, marker = poisoned
    args = [a.format(run=run, config=config, tmp=tmp_path) for a in command] + ["--no-progress"]
    assert_refused(capsys, args, run / "checkpoints" / checkpoint, marker)


def test_the_unpoisoned_run_is_accepted(trained, tmp_path, capsys):
    """The same commands work on the genuine checkpoints: the refusals come from the payload alone."""
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["evaluate", str(copy), "--episodes", "2", "--no-progress"]) == 0
    assert main(["train", str(config), "train.steps=3", "--out", str(copy), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(copy / "checkpoints" / "last.pt", "unused", keys=("state",))["state"]["step"] == 3


@needs_gym
def test_rl_commands_refuse_a_malicious_checkpoint(tmp_path, capsys):
    cfg = {
        "name": "tiny", "env": "point2d", "seed": 3, "policy": {"hidden": [8]},
        "train": {"iterations": 1, "meta_batch": 2, "episodes_per_task": 2, "checkpoint_every": 1},
        "maml": {"outer_steps": 1}, "eval": {"tasks": 2, "adapt_steps": 1},
    }
    config = tmp_path / "rl.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run, marker = tmp_path / "rl", tmp_path / "marker"
    assert main(["rl", "train", str(config), "--out", str(run), "--no-progress"]) == 0
    for phase in ("meta", "pretrained"):
        poison(run / "checkpoints" / f"{phase}.pt", marker)
    meta = run / "checkpoints" / "meta.pt"
    capsys.readouterr()
    assert_refused(capsys, ["rl", "evaluate", str(run), "--no-progress"], meta, marker)
    assert_refused(capsys, ["rl", "train", str(config), "--out", str(run), "--resume", "--no-progress"], meta, marker)
    assert_refused(capsys, ["rl", "train", str(config), "train.iterations=2", "--out", str(run), "--resume", "--no-progress"],
                   meta, marker)


def test_recsys_evaluate_refuses_a_malicious_checkpoint(tmp_path, capsys):
    overrides = ["data.synthetic.users=80", "data.synthetic.items=100", "data.synthetic.max_ratings=60",
                 "model.embedding_dim=4", "model.hidden=[8]", "melu.epochs=1", "melu.local_steps=[1]",
                 "melu.local_lr_grid=[0.01]", "baselines.nn_epochs=1", "baselines.mf_regs=[5.0]",
                 "baselines.mf_factors=[2]", "baselines.mf_iters=2", "baselines.finetune_steps=[1]",
                 "baselines.finetune_lrs=[0.01]", "eval.scenarios=[warm]", "threads=1"]
    run, marker = tmp_path / "rec", tmp_path / "marker"
    assert main(["recsys", "train", str(REPO / "configs" / "recsys-melu-synthetic.yaml"), *overrides,
                 "--out", str(run), "--no-progress"]) == 0
    models = run / "checkpoints" / "models.pt"
    poison(models, marker)  # the genuine models.pt (NumPy-fitted baselines included) loads with weights_only
    capsys.readouterr()
    assert_refused(capsys, ["recsys", "evaluate", str(run), "--no-progress"], models, marker)


def test_nas_commands_refuse_a_malicious_checkpoint(tmp_path, capsys):
    cfg = {
        "name": "tinynas", "seed": 0,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "supernet", "channels": 4, "cells": 2, "nodes": 2, "reductions": [1]},
        "learner": {"name": "fomaml", "inner_lr": 0.4, "inner_steps": 1},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 2, "val_episodes": 2},
        "train": {"steps": 1, "val_every": 1, "threads": 1},
        "nas": {"random_architectures": 1, "conv4": None, "evaluate": {"train": {"steps": 1}}},
    }
    config = tmp_path / "nas.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run, marker = tmp_path / "search", tmp_path / "marker"
    assert main(["nas", "search", str(config), "--out", str(run), "--no-progress"]) == 0
    assert main(["nas", "evaluate", str(run), "--only", "found", "--no-progress"]) == 0
    last = run / "checkpoints" / "last.pt"
    poison(last, marker)
    found = run / "evaluate" / "found"
    poison(found / "checkpoints" / "best.pt", marker)
    (found / "evaluation.json").unlink()  # so nas evaluate scores the found network again
    capsys.readouterr()
    assert_refused(capsys, ["nas", "search", str(config), "--out", str(run), "--resume", "--no-progress"], last, marker)
    assert_refused(capsys, ["nas", "evaluate", str(run), "--only", "found", "--no-progress"],
                   found / "checkpoints" / "best.pt", marker)
