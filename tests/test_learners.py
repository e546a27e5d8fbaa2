"""Learners and backbones: ProtoNet's definition, the fine-tuning baseline, the shared interface."""

from __future__ import annotations

import pytest
import torch
from conftest import make_synthetic
from torch import nn

from metakit.backbones import build_backbone, count_parameters
from metakit.episodes import EpisodeSampler, FixedEpisodes, sample_batch
from metakit.errors import MetakitError
from metakit.evaluation import evaluate_learner, mean_ci95
from metakit.learners import LEARNERS, Learner, TaskInfo, build_learner, register_learner
from metakit.learners.base import prototypes

TASK = TaskInfo("classification", (1, 12, 12), ways=5, num_classes=20)


def test_backbone_shapes():
    assert build_backbone("conv4", (1, 28, 28)).out_dim == 64
    assert build_backbone("conv4", (3, 84, 84)).out_dim == 64 * 5 * 5
    assert build_backbone("conv4", (1, 12, 12), hidden=8).out_dim == 8  # pools stop at 1x1
    assert build_backbone("resnet12", (3, 32, 32), channels=[8, 16, 32, 64]).out_dim == 64
    assert build_backbone("mlp", (1,)).out_dim == 40
    conv4 = build_backbone("conv4", (1, 28, 28))
    assert count_parameters(conv4) == 111_936  # 4 x [conv 3x3, BN] at 64 channels, as in the papers
    with pytest.raises(MetakitError, match="image inputs"):
        build_backbone("conv4", (1,))


def test_prototypes_are_class_means():
    feats = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    protos = prototypes(feats, labels, 3)
    for c in range(3):
        assert torch.allclose(protos[c], feats[labels == c].mean(0))


def test_protonet_logits_are_negative_squared_distances():
    learner = build_learner("protonet", nn.Flatten(), TASK)
    sx = torch.randn(10, 1, 12, 12)
    sy = torch.arange(5).repeat_interleave(2)
    qx = torch.randn(7, 1, 12, 12)
    logits = learner.adapt(sx, sy, 5)(qx)
    protos = torch.stack([sx[sy == c].flatten(1).mean(0) for c in range(5)])
    expected = -torch.cdist(qx.flatten(1), protos) ** 2
    assert torch.allclose(logits, expected, atol=1e-3)


def test_protonet_batched_meta_loss_equals_per_task_loss():
    torch.manual_seed(0)
    learner = build_learner("protonet", build_backbone("conv4", (1, 12, 12), hidden=8), TASK)
    learner.eval()  # batch statistics would couple the tasks
    batch = sample_batch(EpisodeSampler(make_synthetic(), 5, 2, 3), 3, torch.Generator().manual_seed(0))
    fast, _ = learner.meta_loss(batch)
    slow, _ = Learner.meta_loss(learner, batch)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_easyfsl_style_interface():
    learner = build_learner("protonet", nn.Flatten(), TASK)
    sx, sy = torch.randn(10, 1, 12, 12), torch.arange(5).repeat_interleave(2)
    with pytest.raises(MetakitError, match="process_support_set"):
        learner(sx)
    learner.process_support_set(sx, sy)
    assert learner(sx).argmax(-1).tolist() == learner.adapt(sx, sy, 5)(sx).argmax(-1).tolist()


def test_finetune_pretrains_on_global_labels_and_adapts_a_head():
    torch.manual_seed(0)
    data = make_synthetic(classes=20, noise=0.05)
    learner = build_learner("finetune", build_backbone("conv4", (1, 12, 12), hidden=16), TASK, head_steps=50)
    opt = torch.optim.Adam(learner.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(0)
    sampler = EpisodeSampler(data, 20, 2, 2)
    for _ in range(40):
        opt.zero_grad()
        stats = learner.meta_step(sample_batch(sampler, 1, gen))
        opt.step()
    assert stats["accuracy"] > 0.5  # the global 20-class classifier learns
    result = evaluate_learner(learner, FixedEpisodes(EpisodeSampler(data, 5, 1, 3), 30, 0))
    assert result.mean > 0.5  # the adapted head beats chance (0.2) by far
    # Adaptation is deterministic (zero-initialised head, full-batch optimisation).
    ep = FixedEpisodes(EpisodeSampler(data, 5, 1, 3), 1, 0)[0]
    learner.eval()
    with torch.no_grad():
        a = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
        b = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert torch.equal(a, b)


def test_a_new_learner_needs_no_trainer_change(tmp_path):
    """A learner registered outside metakit trains and evaluates through the same CLI path."""

    @register_learner("nearest_neighbour_test")
    class NearestNeighbour(Learner):
        def __init__(self, backbone: nn.Module, task: TaskInfo, scale: float = 1.0) -> None:
            super().__init__(backbone, task)
            self.scale = nn.Parameter(torch.tensor(scale))

        def adapt(self, support_x, support_y, ways):
            feats = self.backbone(support_x)
            onehot = nn.functional.one_hot(support_y, ways).float()
            return lambda q: self.scale * (-torch.cdist(self.backbone(q), feats) ** 2).softmax(-1) @ onehot

    try:
        from metakit.cli import main

        import yaml

        cfg = {"dataset": {"name": "synthetic"}, "backbone": {"name": "conv4", "hidden": 4},
               "learner": {"name": "nearest_neighbour_test", "scale": 2.0},
               "episodes": {"ways": 3, "shots": 1, "queries": 2},
               "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 5, "val_episodes": 5},
               "train": {"steps": 2, "val_every": 1}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--evaluate", "--no-progress"]) == 0
    finally:
        LEARNERS.pop("nearest_neighbour_test")


def test_learner_refuses_unsupported_task_type():
    with pytest.raises(MetakitError, match="does not handle regression"):
        build_learner("protonet", nn.Flatten(), TaskInfo("regression", (1,), 1))


def test_mean_ci95():
    mean, ci, std = mean_ci95([0.0, 1.0] * 50)
    assert mean == 0.5 and abs(std - 0.50252) < 1e-4 and abs(ci - 1.96 * std / 10) < 1e-12
