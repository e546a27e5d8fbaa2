"""Trainer: run directory, best checkpoint, early stop, exact resume after SIGKILL, NaN loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metakit.config import config_from_dict
from metakit.errors import MetakitError
from metakit.runs import RunPaths
from metakit.training import train

REPO = Path(__file__).resolve().parents[1]


def small_config(**train: object) -> dict:
    return {
        "name": "tiny",
        "seed": 3,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
        "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 20, "val_episodes": 10},
        "train": {"steps": 30, "val_every": 10, "threads": 1, **train},
    }


def test_run_directory_has_everything(tmp_path):
    summary = train(config_from_dict(small_config()), tmp_path / "run", progress=False)
    p = RunPaths(tmp_path / "run")
    for f in (p.config, p.metrics, p.last, p.best, p.summary, p.report, p.curve):
        assert f.is_file(), f
    records = [json.loads(line) for line in p.metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20, 30]
    assert summary["steps"] == 30 and 0 <= summary["best_val_accuracy"] <= 1
    best = torch.load(p.best, weights_only=False)
    val = {r["step"]: r["accuracy"] for r in records if r["split"] == "val"}
    assert best["accuracy"] == max(val.values()) and best["step"] == summary["best_step"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_same_seed_same_numbers(tmp_path):
    a = train(config_from_dict(small_config(steps=12, val_every=6)), tmp_path / "a", progress=False)
    b = train(config_from_dict(small_config(steps=12, val_every=6)), tmp_path / "b", progress=False)
    assert a["best_val_accuracy"] == b["best_val_accuracy"]
    wa = torch.load(RunPaths(tmp_path / "a").last, weights_only=False)["learner"]
    wb = torch.load(RunPaths(tmp_path / "b").last, weights_only=False)["learner"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stop(tmp_path):
    # lr 0 with SGD would be refused; a tiny lr makes validation plateau, patience 0 stops at once.
    summary = train(config_from_dict(small_config(steps=100, val_every=5, patience=0, lr=1e-9)), tmp_path / "r", progress=False)
    assert summary["stopped_early"] and summary["steps"] < 100


def test_refuses_to_overwrite_a_run(tmp_path):
    train(config_from_dict(small_config(steps=2, val_every=1)), tmp_path / "r", progress=False)
    with pytest.raises(MetakitError, match="already holds a run; pass --resume"):
        train(config_from_dict(small_config(steps=2, val_every=1)), tmp_path / "r", progress=False)


def test_corrupt_checkpoint_on_resume(tmp_path):
    train(config_from_dict(small_config(steps=2, val_every=1)), tmp_path / "r", progress=False)
    RunPaths(tmp_path / "r").last.write_bytes(b"truncated")
    with pytest.raises(MetakitError, match="is corrupt"):
        train(config_from_dict(small_config(steps=4, val_every=1)), tmp_path / "r", resume=True, progress=False)


def test_nan_loss_is_one_clear_error(tmp_path):
    cfg = small_config(steps=50, optimizer="sgd", lr=1e30, momentum=0.0)
    with pytest.raises(MetakitError, match="loss became (nan|inf).*lower train.lr"):
        train(config_from_dict(cfg), tmp_path / "r", progress=False)
    assert not list(tmp_path.rglob("*.tmp"))


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers the synthetic dataset
from metakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "run_cli.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _max_logged_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    import yaml

    total = 300
    cfg = small_config(steps=total, val_every=50, checkpoint_every=7)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = [str(config), "--no-progress", "--out"]

    reference = _cli(["train", *args, str(tmp_path / "ref")], tmp_path)
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    victim = _cli(["train", *args, str(tmp_path / "killed")], tmp_path)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while _max_logged_step(metrics) < 40 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)["state"]["step"]
    assert 0 < killed_at < total, "the run must be killed mid-way"

    resumed = _cli(["train", *args, str(tmp_path / "killed"), "--resume"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()

    ref = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=False)
    res = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert res["state"]["step"] == total
    for key, value in ref["learner"].items():
        assert torch.equal(value, res["learner"][key]), key
    for a, b in zip(ref["optimizer"]["state"].values(), res["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [(r["split"], r["step"]) for r in logged]
    assert len(steps) == len(set(steps)), "resumed log has duplicate records"
    ref_log = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("accuracy") for r in ref_log if r["split"] == "val"] == [r.get("accuracy") for r in logged if r["split"] == "val"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Files written atomically are readable like files from open() (mkstemp alone gives 0600)."""
    import os

    from metakit.utils import write_text

    mask = os.umask(0o022)
    os.umask(mask)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
