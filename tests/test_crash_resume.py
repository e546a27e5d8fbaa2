"""Crash safety: a training process killed with SIGKILL and resumed ends bit-identical to one never killed.

The classification run uses a dropout backbone, so its result depends on the global torch RNG:
a resume that did not restore the saved RNG state (or the optimiser, schedule or episode sampler)
would end with different weights. The meta-RL run uses PEARL, whose replay buffers must come back
exactly. Checkpoints are written every few steps, so the kill often lands during a write; the
atomic rename must leave ``last.pt`` loadable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from metakit.config import config_from_dict
from metakit.utils import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers the synthetic dataset
from metakit.cli import main
sys.exit(main(sys.argv[1:]))
"""

CLASSIFICATION = {
    "name": "crash",
    "seed": 7,
    "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
    "backbone": {"name": "projection", "dims": [128, 32], "dropout": 0.3},
    "learner": {"name": "protonet"},
    "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
    "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 10, "val_episodes": 5},
    "train": {"steps": 240, "val_every": 40, "checkpoint_every": 3, "schedule": "cosine", "threads": 1},
}

PEARL = {
    "name": "crash-pearl", "algorithm": "pearl", "seed": 3,
    "env": {"name": "point2d", "horizon": 12},
    "policy": {"hidden": [16]},
    "pearl": {"train_tasks": 5, "updates": 3, "batch_size": 16, "context_size": 8, "hidden": 16},
    "train": {"iterations": 36, "meta_batch": 2, "episodes_per_task": 4, "checkpoint_every": 2, "threads": 1},
    "eval": {"tasks": 4, "adapt_steps": 1},
}


def _cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "run_cli.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode() + out.decode()


def _logged(metrics: Path, key: str) -> int:
    """The furthest step/iteration in a metrics log that may be mid-write."""
    if not metrics.exists():
        return 0
    done = [json.loads(line)[key] for line in metrics.read_text().splitlines() if line.strip().endswith("}")]
    return max(done, default=0)


def _kill_after(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def _same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            _same_tensors(a[key], b[key], f"{what}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}.{key} differs"
        else:
            assert a[key] == b[key], f"{what}.{key} differs"


def _records(metrics: Path, drop: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != drop} for line in metrics.read_text().splitlines()]


@pytest.mark.slow
def test_classification_sigkill_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump(CLASSIFICATION))
    total, every = CLASSIFICATION["train"]["steps"], CLASSIFICATION["train"]["checkpoint_every"]
    args = ["train", str(config), "--no-progress", "--out"]
    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.pt"
    # Both start at once (one thread each): the reference runs while the victim is killed.
    reference = _cli([*args, str(tmp_path / "ref")], tmp_path)
    victim = _cli([*args, str(killed)], tmp_path)
    # Killed past its third checkpoint and past validation, so best.pt exists and steps are redone.
    _kill_after(victim, lambda: last.exists() and _logged(killed / "metrics.jsonl", "step") >= 3 * every + 40)
    killed_at = load_checkpoint(last, "the atomic rename must leave a complete last.pt", keys=("state",))["state"]["step"]
    assert 0 < killed_at < total, f"the run must be killed mid-way, was at step {killed_at}"
    _finish(_cli([*args, str(killed), "--resume"], tmp_path))
    _finish(reference)

    for name in ("last.pt", "best.pt"):
        ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / name, "unused", keys=("learner",))
        res = load_checkpoint(killed / "checkpoints" / name, "unused", keys=("learner",))
        _same_tensors(ref["learner"], res["learner"], f"{name} learner")
    best = [load_checkpoint(d / "checkpoints" / "best.pt", "unused") for d in (tmp_path / "ref", killed)]
    assert best[0]["step"] == best[1]["step"] and best[0]["accuracy"] == best[1]["accuracy"]
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", "unused")
    res = load_checkpoint(last, "unused")
    assert res["state"]["step"] == total
    _same_tensors(ref["optimizer"], res["optimizer"], "optimizer")
    _same_tensors(ref["rng"], res["rng"], "rng")
    ref_log, res_log = _records(tmp_path / "ref" / "metrics.jsonl", "seconds"), _records(killed / "metrics.jsonl", "seconds")
    assert [(r["split"], r["step"]) for r in ref_log] == [(r["split"], r["step"]) for r in res_log]
    # The steps since the last train record are checkpointed too, so even the first record after
    # the resume point averages the same steps: the whole log matches.
    assert ref_log == res_log


def test_resume_without_restoring_the_rng_would_differ(tmp_path, monkeypatch):
    """The classification config above is sensitive to the global RNG, so the test above can fail."""
    import metakit.training as training

    before = torch.get_num_threads()
    try:
        cfg = {**CLASSIFICATION, "train": {**CLASSIFICATION["train"], "steps": 30, "val_every": 10,
                                           "checkpoint_every": 10, "schedule": "constant"}}
        stop = {**cfg, "train": {**cfg["train"], "steps": 20}}
        training.train(config_from_dict(cfg), tmp_path / "ref", progress=False)
        weights = {}
        for label, restore in (("restored", training.set_rng_state), ("forgotten", lambda state: None)):
            monkeypatch.setattr(training, "set_rng_state", restore)
            training.train(config_from_dict(stop), tmp_path / label, progress=False)
            training.train(config_from_dict(cfg), tmp_path / label, resume=True, progress=False)
            weights[label] = load_checkpoint(tmp_path / label / "checkpoints" / "last.pt", "unused")["learner"]
    finally:
        torch.set_num_threads(before)
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", "unused")["learner"]
    assert all(torch.equal(ref[k], weights["restored"][k]) for k in ref)
    assert not all(torch.equal(ref[k], weights["forgotten"][k]) for k in ref)


def test_resume_after_a_log_line_cut_by_the_kill(tmp_path):
    """SIGKILL can land inside a metrics.jsonl write; the resume drops the cut line, not the run."""
    import metakit.training as training

    before = torch.get_num_threads()
    try:
        cfg = {**CLASSIFICATION, "train": {**CLASSIFICATION["train"], "steps": 8, "val_every": 4, "checkpoint_every": 4,
                                           "schedule": "constant"}}
        training.train(config_from_dict({**cfg, "train": {**cfg["train"], "steps": 4}}), tmp_path / "run", progress=False)
        metrics = tmp_path / "run" / "metrics.jsonl"
        with open(metrics, "a", encoding="utf-8") as f:
            f.write('{"split": "train", "step": 5, "lo')
        training.train(config_from_dict(cfg), tmp_path / "run", resume=True, progress=False)
        training.train(config_from_dict(cfg), tmp_path / "ref", progress=False)
    finally:
        torch.set_num_threads(before)
    assert _records(metrics, "seconds") == _records(tmp_path / "ref" / "metrics.jsonl", "seconds")


@pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="gymnasium not installed (pip install 'metakit[rl]')")
@pytest.mark.slow
def test_pearl_sigkill_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "pearl.yaml"
    config.write_text(yaml.safe_dump(PEARL))
    total, every = PEARL["train"]["iterations"], PEARL["train"]["checkpoint_every"]
    args = ["rl", "train", str(config), "--no-progress", "--out"]
    killed = tmp_path / "killed"
    meta = killed / "checkpoints" / "meta.pt"
    reference = _cli([*args, str(tmp_path / "ref")], tmp_path)
    victim = _cli([*args, str(killed)], tmp_path)
    _kill_after(victim, lambda: meta.exists() and _logged(killed / "metrics.jsonl", "iteration") >= 4 * every + 1)
    killed_at = load_checkpoint(meta, "the atomic rename must leave a complete meta.pt", keys=("iteration",))["iteration"]
    assert 0 < killed_at < total, f"the run must be killed mid-way, was at iteration {killed_at}"
    _finish(_cli([*args, str(killed), "--resume"], tmp_path))
    _finish(reference)

    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "meta.pt", "unused", keys=("algorithm",))
    res = load_checkpoint(meta, "unused", keys=("algorithm",))
    assert res["iteration"] == total and res["env_steps"] == ref["env_steps"]
    # Policy, target critics, both optimisers and both replay buffers.
    _same_tensors(ref["algorithm"], res["algorithm"], "algorithm")
    assert _records(tmp_path / "ref" / "metrics.jsonl", "seconds") == _records(killed / "metrics.jsonl", "seconds")
