"""Self-supervised pretraining: both objectives learn, are deterministic, fit the trainer's resume."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import small_config

import metakit.pretraining
from metakit.config import PretrainConfig, config_from_dict, merge
from metakit.errors import MetakitError
from metakit.experiment import build_experiment
from metakit.learners.base import NonFiniteLoss
from metakit.pretraining import augment_views, nt_xent, pretrain, rotate_batch, validate_pretrain_config
from metakit.runs import RunPaths
from metakit.training import train


def pretrain_config(objective: str, **pretrain: object) -> dict:
    settings = {"objective": objective, "steps": 40, "batch_size": 32, "lr": 3e-3, **pretrain}
    return merge(small_config(), {"pretrain": settings})


def backbone_weights(exp) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: v.detach().clone() for k, v in exp.learner.backbone.state_dict().items()}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical results need the same thread count every time
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("objective", ["rotation", "simclr"])
def test_objective_learns_and_updates_the_backbone(tmp_path, objective):
    exp = build_experiment(config_from_dict(pretrain_config(objective)))
    before = backbone_weights(exp)
    rng = torch.get_rng_state()
    record = pretrain(exp, tmp_path, progress=False)
    after = backbone_weights(exp)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed), "BatchNorm running statistics must be updated"
    assert torch.equal(torch.get_rng_state(), rng), "pretraining must leave the global RNG as it found it"
    curve = [point["loss"] for point in record["loss_curve"]]
    assert len(curve) == 40
    early, late = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert late < early - 0.05, (early, late)
    saved = json.loads((tmp_path / "pretraining.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["objective"] == objective and saved["steps"] == 40 and saved["seconds"] > 0
    state = torch.load(tmp_path / "checkpoints" / "pretrained_backbone.pt", weights_only=False)
    assert all(torch.equal(state["backbone"][k], after[k]) for k in after)
    assert not list(tmp_path.rglob("*.tmp"))
    assert exp.learner.backbone.training  # the mode it was in before


def test_same_seed_same_backbone(tmp_path):
    runs = []
    for name in ("a", "b"):
        exp = build_experiment(config_from_dict(pretrain_config("simclr", steps=5)))
        pretrain(exp, tmp_path / name, progress=False)
        runs.append(backbone_weights(exp))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = config_from_dict({**pretrain_config("simclr", steps=5), "seed": 4})
    exp = build_experiment(other)
    # Same initial weights, different pretraining seed: a different backbone.
    exp.learner.backbone.load_state_dict(build_experiment(config_from_dict(pretrain_config("simclr"))).learner.backbone.state_dict())
    pretrain(exp, tmp_path / "c", progress=False)
    assert not all(torch.equal(runs[0][k], v) for k, v in backbone_weights(exp).items())


def test_trainer_pretrains_once_and_resume_skips_it(tmp_path, monkeypatch):
    cfg = pretrain_config("rotation", steps=3)
    run = tmp_path / "run"
    calls = []
    original = metakit.pretraining.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise AssertionError("pretraining ran again on resume")
        return original(*args, **kwargs)

    monkeypatch.setattr(metakit.pretraining, "pretrain", counting)
    train(config_from_dict(merge(cfg, {"train": {"steps": 4, "val_every": 2}})), run, progress=False)
    record = json.loads((run / "pretraining.json").read_text())
    assert record["objective"] == "rotation" and record["steps"] == 3
    summary = train(config_from_dict(merge(cfg, {"train": {"steps": 6, "val_every": 2}})), run, resume=True, progress=False)
    assert summary["steps"] == 6 and len(calls) == 1
    assert torch.load(RunPaths(run).last, weights_only=False)["state"]["step"] == 6


def test_pretraining_then_meta_training_is_deterministic(tmp_path):
    cfg = config_from_dict(merge(pretrain_config("simclr", steps=3), {"train": {"steps": 3, "val_every": 3}}))
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert a["best_val_accuracy"] == b["best_val_accuracy"]
    wa = torch.load(RunPaths(tmp_path / "a").last, weights_only=False)["learner"]
    wb = torch.load(RunPaths(tmp_path / "b").last, weights_only=False)["learner"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"objective": "rotnet"}, r"unknown pretrain.objective 'rotnet'.*Valid: rotation, simclr"),
        ({"objective": "rotation", "steps": 0}, r"pretrain.steps must be >= 1"),
        ({"objective": "simclr", "batch_size": 1}, r"pretrain.batch_size must be >= 2 for simclr"),
        ({"objective": "simclr", "temperature": 0.0}, r"pretrain.temperature must be > 0"),
        ({"objective": "rotation", "lr": -1.0}, r"pretrain.lr must be > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, settings, message):
    cfg = config_from_dict(merge(small_config(), {"pretrain": settings}))
    with pytest.raises(MetakitError, match=message) as info:
        validate_pretrain_config(cfg)
    assert "\n" not in str(info.value)
    with pytest.raises(MetakitError, match=message):
        pretrain(build_experiment(cfg), tmp_path, progress=False)
    validate_pretrain_config(PretrainConfig())  # off is fine
    validate_pretrain_config(PretrainConfig(objective="rotation", batch_size=1))


def test_config_level_checks():
    with pytest.raises(MetakitError, match="pretraining needs an image dataset"):
        validate_pretrain_config(config_from_dict({"dataset": {"name": "sinusoid"}, "pretrain": {"objective": "simclr"}}))
    rotated = merge(small_config(), {"dataset": {"rotations": True}, "pretrain": {"objective": "rotation"}})
    with pytest.raises(MetakitError, match="dataset.rotations=true"):
        validate_pretrain_config(config_from_dict(rotated))


def test_regression_experiment_is_refused(tmp_path):
    cfg = config_from_dict({
        "dataset": {"name": "sinusoid"}, "backbone": {"name": "mlp"}, "learner": {"name": "maml"},
        "episodes": {"shots": 5, "queries": 5}, "eval": {"shots": [5]},
    })
    exp = build_experiment(cfg)
    exp.config.pretrain.objective = "rotation"
    with pytest.raises(MetakitError, match=r"^pretraining needs an image dataset"):
        pretrain(exp, tmp_path, progress=False)


def test_nan_loss_is_one_clear_error(tmp_path):
    exp = build_experiment(config_from_dict(pretrain_config("rotation", lr=1e30, steps=30)))
    with pytest.raises(NonFiniteLoss, match=r"pretraining \(rotation\) loss became (nan|inf).*lower pretrain.lr"):
        pretrain(exp, tmp_path, progress=False)
    assert not (tmp_path / "pretraining.json").exists()


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's Algorithm 1, written out with loops: l(i, j) summed over both orders of each pair."""
    z = torch.cat([z1, z2])
    n2 = len(z)
    sim = [[float(torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm())) for j in range(n2)] for i in range(n2)]

    def pair_loss(i: int, j: int) -> float:
        denominator = sum(torch.exp(torch.tensor(sim[i][k] / t, dtype=torch.float64)) for k in range(n2) if k != i)
        return float(-torch.log(torch.exp(torch.tensor(sim[i][j] / t, dtype=torch.float64)) / denominator))

    n = len(z1)
    return torch.tensor(sum(pair_loss(k, k + n) + pair_loss(k + n, k) for k in range(n)) / (2 * n), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_reference(temperature):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(nt_xent(z1, z2, temperature), naive_nt_xent(z1, z2, temperature), atol=1e-10)
    # Identical views with orthogonal images: the positive dominates as the temperature drops.
    eye = torch.eye(4, dtype=torch.float64)
    assert nt_xent(eye, eye, 0.05) < 1e-6


def test_rotations_and_views():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    inputs, labels = rotate_batch(x)
    assert inputs.shape == (8, 1, 3, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(inputs[2], torch.rot90(x[0], 1, dims=(-2, -1)))
    with pytest.raises(MetakitError, match="square images"):
        rotate_batch(torch.zeros(1, 1, 3, 4))
    images = torch.rand(16, 1, 12, 12)
    a = augment_views(images, torch.Generator().manual_seed(1))
    b = augment_views(images, torch.Generator().manual_seed(1))
    c = augment_views(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
