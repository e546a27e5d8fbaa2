"""Metric and closed-form learners: Matching Networks, Relation Networks, R2D2 / MetaOptNet-RR,
Baseline / Baseline++ (with transductive fine-tuning) and Meta-Baseline.

Math checks run in float64 on tiny backbones; training checks run a few meta-steps on the
synthetic dataset of conftest.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_synthetic
from torch import nn

from metakit.backbones import build_backbone
from metakit.episodes import Episode, EpisodeSampler, sample_batch
from metakit.errors import MetakitError
from metakit.learners import TaskInfo, build_learner
from metakit.learners.finetune import CosineClassifier, chen_scale
from metakit.learners.metabaseline import split_ways
from metakit.learners.r2d2 import ridge_solution

TASK = TaskInfo("classification", (1, 12, 12), ways=5, num_classes=40)


def tiny(input_shape=(1, 12, 12), hidden: int = 8) -> nn.Module:
    return build_backbone("conv4", input_shape, hidden=hidden)


def episode(ways: int = 5, shots: int = 2, queries: int = 3, seed: int = 0, dtype=torch.float32) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(
        support_x=torch.randn(ways * shots, 1, 12, 12, generator=g, dtype=dtype),
        support_y=torch.arange(ways).repeat_interleave(shots),
        query_x=torch.randn(ways * queries, 1, 12, 12, generator=g, dtype=dtype),
        query_y=torch.arange(ways).repeat_interleave(queries),
        ways=ways, shots=shots, queries=queries, classes=torch.arange(ways),
    )


# -- Matching Networks ----------------------------------------------------------------------------


def test_matching_attention_rows_sum_to_one():
    learner = build_learner("matching", nn.Flatten(), TASK)
    attention = learner.attention(torch.randn(2, 7, 10), torch.randn(2, 4, 10))
    assert attention.shape == (2, 7, 4) and (attention >= 0).all()
    assert torch.allclose(attention.sum(-1), torch.ones(2, 7))


def test_matching_predicts_the_cosine_weighted_label_average():
    learner = build_learner("matching", nn.Flatten(), TASK).double()
    ep = episode(dtype=torch.float64)
    out = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    q, s = ep.query_x.flatten(1), ep.support_x.flatten(1)
    cos = F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).T
    expected = cos.softmax(-1) @ F.one_hot(ep.support_y, 5).double()
    assert out.shape == (15, 5)
    assert torch.allclose(out.exp(), expected, atol=1e-12)
    assert torch.allclose(learner.loss(out, ep.query_y), F.nll_loss(expected.log(), ep.query_y))


def test_matching_fce_runs_changes_output_and_gets_gradients():
    ep = episode()
    torch.manual_seed(0)
    plain = build_learner("matching", tiny(), TASK)
    torch.manual_seed(0)
    fce = build_learner("matching", tiny(), TASK, fce=True, fce_steps=3)
    fce.eval(), plain.eval()
    with torch.no_grad():
        a = plain.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
        b = fce.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert torch.equal(plain.backbone(ep.query_x), fce.backbone(ep.query_x))  # same embedding network
    assert b.shape == (15, 5) and torch.allclose(b.exp().sum(-1), torch.ones(15), atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-4)
    fce.train()
    loss, metrics = fce.meta_loss(sample_batch(EpisodeSampler(make_synthetic(), 5, 2, 2), 2, torch.Generator().manual_seed(0)))
    loss.backward()
    assert set(metrics) == {"loss", "accuracy"}
    for name in ("backbone.0.0.weight", "support_lstm.weight_hh_l0", "support_lstm.weight_hh_l0_reverse",
                 "query_cell.weight_ih", "query_cell.weight_hh"):
        grad = dict(fce.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_matching_batched_meta_loss_equals_per_task_loss():
    torch.manual_seed(0)
    learner = build_learner("matching", tiny(), TASK, fce=True).eval()
    batch = sample_batch(EpisodeSampler(make_synthetic(), 5, 2, 3), 3, torch.Generator().manual_seed(0))
    fast, _ = learner.meta_loss(batch)
    slow = torch.stack([learner.loss(learner.adapt(e.support_x, e.support_y, 5)(e.query_x), e.query_y) for e in batch.tasks()]).mean()
    assert torch.allclose(fast, slow, atol=1e-5)


# -- Relation Networks ----------------------------------------------------------------------------


def test_relation_scores_are_in_unit_interval_and_loss_is_mse_to_one_hot():
    torch.manual_seed(0)
    learner = build_learner("relation", tiny(), TASK)
    ep = episode()
    out = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert out.shape == (15, 5) and (out >= 0).all() and (out <= 1).all()
    expected = ((out - F.one_hot(ep.query_y, 5).float()) ** 2).mean()
    assert torch.allclose(learner.loss(out, ep.query_y), expected)
    loss, _ = learner.meta_loss(ep)
    loss.backward()
    assert learner.backbone[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("shape", "drop_pools", "maps"), [
    ((1, 28, 28), 0, (8, 1, 1)),  # Conv-4 pools to 1x1: the relation module skips its pooling
    ((1, 28, 28), 2, (8, 7, 7)),  # the paper's Omniglot embedding: no pooling in the last two blocks
    ((3, 84, 84), 0, (8, 5, 5)),
])
def test_relation_works_with_conv4_on_omniglot_and_miniimagenet_sizes(shape, drop_pools, maps):
    torch.manual_seed(0)
    task = TaskInfo("classification", shape, ways=3, num_classes=10)
    learner = build_learner("relation", build_backbone("conv4", shape, hidden=8), task, hidden=8, drop_pools=drop_pools)
    x = torch.randn(6, *shape)
    assert learner.feature_maps(x).shape == (6, *maps)
    assert learner.backbone.out_dim == maps[0] * maps[1] * maps[2]
    out = learner.adapt(x, torch.arange(3).repeat_interleave(2), 3)(torch.randn(4, *shape))
    assert out.shape == (4, 3) and ((out >= 0) & (out <= 1)).all()


def test_relation_takes_vector_backbones_and_checks_options():
    task = TaskInfo("classification", (4,), ways=3, num_classes=10)
    learner = build_learner("relation", build_backbone("mlp", (4,), hidden=[6]), task, hidden=4, aggregate="mean")
    out = learner.adapt(torch.randn(6, 4), torch.arange(3).repeat_interleave(2), 3)(torch.randn(5, 4))
    assert out.shape == (5, 3)
    with pytest.raises(MetakitError, match="aggregate"):
        build_learner("relation", tiny(), TASK, aggregate="max")
    with pytest.raises(MetakitError, match="max-pool"):
        build_learner("relation", tiny(), TASK, drop_pools=9)


def test_relation_sums_support_maps_per_class():
    learner = build_learner("relation", tiny(), TASK)
    maps = torch.randn(6, 2, 3, 3)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    out = learner.class_maps(maps, labels, 3)
    assert torch.allclose(out[0], maps[0] + maps[2]) and torch.allclose(out[2], maps[3] + maps[5])


# -- R2D2 / MetaOptNet-RR ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(10, 50), (10, 4)])
def test_ridge_woodbury_equals_primal_solution(n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 4, (3, n), generator=g), 4).double()
    lam = 0.7
    primal = torch.linalg.inv(x.transpose(-1, -2) @ x + lam * torch.eye(d, dtype=torch.float64)) @ x.transpose(-1, -2) @ y
    assert torch.allclose(ridge_solution(x, y, lam), primal, atol=1e-8, rtol=0)


def test_r2d2_gradients_reach_backbone_and_lambda_stays_positive():
    torch.manual_seed(0)
    learner = build_learner("r2d2", tiny(), TASK, lam=0.5).double()
    assert torch.allclose(learner.lam, torch.tensor(0.5, dtype=torch.float64))
    ep = episode(dtype=torch.float64)
    loss, _ = learner.meta_loss(ep)
    loss.backward()
    for name in ("backbone.0.0.weight", "log_lam", "scale", "bias"):
        grad = dict(learner.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    opt = torch.optim.SGD([learner.log_lam], lr=1.0)
    for _ in range(3):  # push lambda down as hard as possible: it only approaches zero
        opt.zero_grad()
        (learner.lam * 1e3).backward()
        opt.step()
        assert learner.lam > 0
    # The predictor's logits are alpha * X_q W + beta.
    with torch.no_grad():
        fs, fq = learner.backbone(ep.support_x), learner.backbone(ep.query_x)
        w = ridge_solution(fs, F.one_hot(ep.support_y, 5).double(), learner.lam)
        out = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert torch.allclose(out, learner.scale * fq @ w + learner.bias)


def test_metaoptnet_is_the_fixed_lambda_ridge_head():
    learner = build_learner("metaoptnet", tiny(), TASK)
    params = dict(learner.named_parameters())
    assert "log_lam" not in params and "scale" in params and learner.bias is None
    assert torch.isclose(learner.lam, torch.tensor(50.0))
    assert "log_lam" in learner.state_dict()


# -- Baseline / Baseline++ ----------------------------------------------------------------------------


def test_cosine_head_logits_are_bounded_by_scale():
    head = CosineClassifier(16, 7, scale=3.0)
    logits = head(100 * torch.randn(50, 16))
    assert logits.abs().max() <= 3.0 + 1e-5
    learner = build_learner("baselinepp", tiny(), TASK)
    assert isinstance(learner.classifier, CosineClassifier) and learner.classifier.scale == chen_scale(40) == 2.0
    assert chen_scale(1000) == 10.0
    ep = episode()
    learner.eval()
    with torch.no_grad():
        out = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert out.abs().max() <= 2.0 + 1e-5
    with pytest.raises(MetakitError, match="head"):
        build_learner("finetune", tiny(), TASK, head="mlp")


def test_transductive_finetuning_changes_predictions_and_fits_once():
    torch.manual_seed(0)
    inductive = build_learner("baselinepp", tiny(), TASK, head_steps=30).eval()
    transductive = build_learner("baselinepp", tiny(), TASK, head_steps=30, transductive=True).eval()
    transductive.load_state_dict(inductive.state_dict())
    ep = episode()
    with torch.no_grad():
        a = inductive.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
        predict = transductive.adapt(ep.support_x, ep.support_y, 5)
        b = predict(ep.query_x)
        again = predict(ep.query_x)
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.equal(b, again)  # the head is fitted on the first call only
    # Minimising query entropy makes the query predictions more confident.
    entropy = lambda logits: -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    assert entropy(b) < entropy(a)


def test_finetune_default_is_the_unchanged_linear_baseline():
    torch.manual_seed(0)
    learner = build_learner("finetune", tiny(), TASK, head_steps=20).eval()
    assert type(learner.classifier) is nn.Linear and not learner.transductive
    ep = episode()
    with torch.no_grad():
        out = learner.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
        features = F.normalize(learner.backbone(ep.support_x), dim=-1)
    # The original algorithm: zero-initialised linear head, full-batch Adam on the support set.
    head = nn.Linear(features.shape[-1], 5)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=0.001)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(head(features), ep.support_y).backward()
        opt.step()
    with torch.no_grad():
        expected = head(F.normalize(learner.backbone(ep.query_x), dim=-1))
    assert torch.equal(out, expected)


# -- Meta-Baseline ------------------------------------------------------------------------------------


def test_metabaseline_switches_stage_at_pretrain_steps_and_saves_its_counter():
    torch.manual_seed(0)
    learner = build_learner("metabaseline", tiny(), TASK, pretrain_steps=2, episode_ways=3)
    sampler = EpisodeSampler(make_synthetic(), 6, 1, 2)
    gen = torch.Generator().manual_seed(0)
    stages = []
    for _ in range(4):
        learner.zero_grad(set_to_none=True)
        stats = learner.meta_step(sample_batch(sampler, 1, gen))
        stages.append(stats["stage"])
        pretraining = stats["stage"] == 1
        # Stage 1 trains the global classifier; stage 2 the cosine temperature, not the classifier.
        assert (learner.classifier.weight.grad is not None) == pretraining
        assert (learner.scale.grad is not None) == (not pretraining)
    assert stages == [1.0, 1.0, 2.0, 2.0]
    assert int(learner.state_dict()["meta_steps"]) == 4
    fresh = build_learner("metabaseline", tiny(), TASK, pretrain_steps=2)
    assert fresh.stage == 1
    fresh.load_state_dict(learner.state_dict())
    assert fresh.stage == 2 and int(fresh.meta_steps) == 4


def test_metabaseline_splits_training_episodes_into_smaller_ones():
    batch = sample_batch(EpisodeSampler(make_synthetic(), 7, 2, 1), 2, torch.Generator().manual_seed(0))
    small = split_ways(batch, 3)
    assert small.num_tasks == 4 and small.ways == 3 and small.support_x.shape == (4, 6, 1, 12, 12)
    assert torch.equal(small.support_x[1], batch.support_x[0, 6:12])
    assert torch.equal(small.query_x[2], batch.query_x[1, 0:3])
    assert torch.equal(small.classes[3], batch.classes[1, 3:6])
    assert small.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]


def test_metabaseline_adapts_with_cosine_prototypes():
    backbone = build_backbone("mlp", (4,), hidden=[6])
    learner = build_learner("metabaseline", backbone, TaskInfo("classification", (4,), 3, num_classes=5))
    sx, sy, qx = torch.randn(6, 4), torch.arange(3).repeat_interleave(2), torch.randn(4, 4)
    out = learner.adapt(sx, sy, 3)(qx)
    fs, fq = backbone(sx), backbone(qx)
    protos = torch.stack([fs[sy == c].mean(0) for c in range(3)])
    assert torch.allclose(out, 10.0 * F.normalize(fq, dim=-1) @ F.normalize(protos, dim=-1).T, atol=1e-5)


# -- every new learner: learns, and trains end to end through the CLI ---------------------------------

# (name, options, ways, chance accuracy of the training metric): pretraining-style learners report
# the accuracy of their classifier over all 40 training classes.
LEARNERS = [
    ("matching", {}, 5, 1 / 5),
    ("matching", {"fce": True}, 5, 1 / 5),
    ("relation", {"drop_pools": 1}, 5, 1 / 5),
    ("r2d2", {}, 5, 1 / 5),
    ("metaoptnet", {}, 5, 1 / 5),
    ("finetune", {"transductive": True}, 20, 1 / 40),
    ("baselinepp", {}, 20, 1 / 40),
    ("metabaseline", {"pretrain_steps": 0}, 5, 1 / 5),
    ("metabaseline", {"pretrain_steps": 100}, 20, 1 / 40),
]


@pytest.mark.parametrize(("name", "options", "ways", "chance"), LEARNERS, ids=lambda v: str(v))
def test_new_learners_learn_on_synthetic_tasks(name, options, ways, chance):
    """A few meta-steps lower the loss on held-out training-split batches and beat chance clearly."""
    torch.manual_seed(0)
    data = make_synthetic(noise=0.05)
    learner = build_learner(name, tiny(), TASK, **options)
    sampler = EpisodeSampler(data, ways, 2, 2)
    gen = torch.Generator().manual_seed(0)
    held = sample_batch(sampler, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, start = learner.meta_loss(held)
    opt = torch.optim.Adam(learner.parameters(), 3e-3 if name == "relation" else 1e-2)
    for _ in range(20):
        opt.zero_grad()
        learner.meta_step(sample_batch(sampler, 2, gen))
        opt.step()
    with torch.no_grad():
        after, metrics = learner.meta_loss(held)
    assert after < before, (before.item(), after.item())
    # Accuracy, not loss, is the common yardstick: MetaOptNet's fixed lambda = 50 keeps its initial
    # logits tiny, so its loss moves slowly while its accuracy doubles.
    assert metrics["accuracy"] > max(2 * chance, start["accuracy"] + 0.2), (start["accuracy"], metrics["accuracy"])


@pytest.mark.parametrize(("name", "options"), [
    ("matching", {"fce": True, "fce_steps": 2}),
    ("relation", {"hidden": 4}),
    ("r2d2", {}),
    ("metaoptnet", {}),
    ("baselinepp", {"head_steps": 5, "transductive": True}),
    ("metabaseline", {"pretrain_steps": 1, "episode_ways": 2}),
], ids=lambda v: str(v))
def test_new_learners_train_end_to_end_through_the_cli(tmp_path, name, options):
    from metakit.cli import main

    cfg = {"dataset": {"name": "synthetic"}, "backbone": {"name": "conv4", "hidden": 4},
           "learner": {"name": name, **options},
           "episodes": {"ways": 4, "shots": 1, "queries": 2},
           "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 3, "val_episodes": 3},
           "train": {"steps": 2, "val_every": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--evaluate", "--no-progress"]) == 0


@pytest.mark.parametrize("method", ["matching", "relation", "r2d2", "metaoptnet", "baseline", "baselinepp", "metabaseline"])
def test_omniglot_configs_build_their_learner(method):
    from pathlib import Path

    from metakit.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"omniglot-{method}.yaml")
    shape = (1, 28, 28)  # Omniglot at image_size 28; ~640 classes in the 20 training alphabets
    task = TaskInfo("classification", shape, config.episodes.ways, num_classes=640, max_ways=20)
    backbone = build_backbone(config.backbone.name, shape, **config.backbone.options)
    build_learner(config.learner.name, backbone, task, **config.learner.options)
