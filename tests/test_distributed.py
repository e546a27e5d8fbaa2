"""Multi-process meta-training: 2 gloo processes on loopback equal one process with the same meta-batch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers the synthetic dataset
from metakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available in this build")
def test_two_processes_equal_one(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found beside the Python interpreter")
    cfg = {
        "name": "ddp",
        "seed": 5,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 4, "layers": 2},
        "learner": {"name": "maml", "inner_lr": 0.3, "inner_steps": 1},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 4},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 4, "val_episodes": 4},
        # SGD, not Adam: Adam turns float noise in ~0 gradients (conv bias before BatchNorm) into full steps.
        "train": {"steps": 4, "val_every": 2, "threads": 1, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0},
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    script = tmp_path / "run_cli.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    common = ["train", str(tmp_path / "ddp.yaml"), "--no-progress", "--out"]

    single = subprocess.run([sys.executable, str(script), *common, str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--nnodes=1", f"--master_addr=127.0.0.1", f"--master_port={free_port()}",
         str(script), *common, str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert multi.returncode == 0, multi.stderr

    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)
    assert two["state"]["step"] == 4
    for key, value in one["learner"].items():
        assert torch.allclose(value, two["learner"][key], atol=1e-6, rtol=1e-5), key
    summary = yaml.safe_load((tmp_path / "two" / "training.json").read_text())
    assert summary["world_size"] == 2
    # Only rank 0 wrote: one metrics log, no duplicate records.
    records = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == len(set(records))


def test_meta_batch_must_split_evenly(monkeypatch, tmp_path):
    from metakit import distributed as dist
    from metakit.config import config_from_dict
    from metakit.errors import MetakitError
    from metakit.training import train

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    cfg = {"dataset": {"name": "synthetic"}, "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 4},
           "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 2, "val_episodes": 2}, "train": {"steps": 1}}
    with pytest.raises(MetakitError, match="meta_batch=4 does not split evenly over 3 processes"):
        train(config_from_dict(cfg), tmp_path / "r", progress=False)


def test_shard_takes_every_nth_task(monkeypatch):
    from conftest import make_synthetic

    from metakit import distributed as dist
    from metakit.episodes import EpisodeSampler, sample_batch

    batch = sample_batch(EpisodeSampler(make_synthetic(), 3, 1, 1), 6, torch.Generator().manual_seed(0))
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    part = dist.shard(batch)
    assert part.num_tasks == 3 and torch.equal(part.support_x, batch.support_x[1::2])
