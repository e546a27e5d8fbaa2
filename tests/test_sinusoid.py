"""Sinusoid regression tasks: shapes, ranges, determinism, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from metakit.datasets import get_dataset
from metakit.datasets.sinusoid import SinusoidTasks, sinusoid_status
from metakit.episodes import FixedEpisodes, TaskSource, sample_batch
from metakit.errors import MetakitError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_episode_shapes_and_fields() -> None:
    tasks = SinusoidTasks(shots=5, queries=7)
    ep = tasks.sample(gen(0))
    assert ep.support_x.shape == ep.support_y.shape == (5, 1)
    assert ep.query_x.shape == ep.query_y.shape == (7, 1)
    assert all(t.dtype == torch.float32 for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y))
    assert (ep.ways, ep.shots, ep.queries, ep.classes) == (1, 5, 7, None)
    assert isinstance(tasks, TaskSource) and tasks.task_type == "regression"


def test_values_follow_the_task() -> None:
    tasks = SinusoidTasks(shots=50, queries=50)
    for seed in range(20):
        amplitude, phase = tasks.sample_task(gen(seed))
        assert 0.1 <= amplitude <= 5.0 and 0.0 <= phase <= math.pi
        ep = tasks.make_episode(amplitude, phase, gen(seed))
        x = torch.cat([ep.support_x, ep.query_x])
        y = torch.cat([ep.support_y, ep.query_y])
        assert x.min() >= -5.0 and x.max() <= 5.0
        assert torch.allclose(y, amplitude * torch.sin(x - phase), atol=1e-5)
        assert y.abs().max() <= amplitude + 1e-5


def test_sample_composes_sample_task_and_make_episode() -> None:
    tasks = SinusoidTasks()
    g = gen(11)
    amplitude, phase = tasks.sample_task(g)
    composed = tasks.make_episode(amplitude, phase, g)
    sampled = tasks.sample(gen(11))
    assert torch.equal(sampled.support_x, composed.support_x) and torch.equal(sampled.query_y, composed.query_y)


def test_deterministic_per_generator_seed() -> None:
    tasks = SinusoidTasks()
    a, b, c = tasks.sample(gen(3)), tasks.sample(gen(3)), tasks.sample(gen(4))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)
    # Global RNG state plays no part.
    torch.manual_seed(0)
    d = tasks.sample(gen(3))
    torch.manual_seed(1)
    assert torch.equal(d.support_y, tasks.sample(gen(3)).support_y)


def test_meta_batches_and_fixed_episodes() -> None:
    tasks = SinusoidTasks(shots=10, queries=15)
    batch = sample_batch(tasks, 4, gen(0))
    assert batch.support_x.shape == (4, 10, 1) and batch.query_y.shape == (4, 15, 1)
    fixed = FixedEpisodes(tasks, 3, seed=7)
    assert torch.equal(fixed[2].query_x, FixedEpisodes(tasks, 5, seed=7)[2].query_x)


def test_custom_ranges() -> None:
    tasks = SinusoidTasks(amplitude=[2.0, 2.0], phase=[0.5, 0.5], x_range=[0.0, 1.0])
    amplitude, phase = tasks.sample_task(gen(0))
    assert (amplitude, phase) == (2.0, 0.5)
    ep = tasks.sample(gen(0))
    assert ep.support_x.min() >= 0.0 and ep.support_x.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shots": 0}, "shots"),
        ({"queries": 0}, "queries"),
        ({"shots": 2.5}, "shots"),
        ({"amplitude": (5.0, 0.1)}, "amplitude"),
        ({"phase": (1.0,)}, "phase"),
        ({"x_range": (1.0, 1.0)}, "x_range"),
        ({"x_range": (0.0, float("inf"))}, "x_range"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(MetakitError, match=match) as exc:
        SinusoidTasks(**kwargs)
    assert "\n" not in str(exc.value)


def test_registry_and_status() -> None:
    spec = get_dataset("sinusoid")
    tasks = spec.resolve("loader")(shots=3)
    assert isinstance(tasks, SinusoidTasks) and tasks.shots == 3
    assert spec.resolve("status")() == sinusoid_status() == "generated on the fly (no files)"
