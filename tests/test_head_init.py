"""GradientLearner's ``head_init``: where each task's head starts (learned, zero, Proto-MAML prototypes)."""

from __future__ import annotations

import pytest
import torch

from metakit.backbones import build_backbone
from metakit.episodes import Episode, collate
from metakit.errors import MetakitError
from metakit.learners import TaskInfo, build_learner

WAYS, SHOTS, QUERIES = 3, 2, 4
TASK = TaskInfo("classification", (6,), WAYS, num_classes=10, max_ways=5)


def build(name: str, **options):  # noqa: ANN201
    torch.manual_seed(0)
    backbone = build_backbone("mlp", (6,), hidden=[8, 4])
    return build_learner(name, backbone, TASK, **options).double()


def task(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(WAYS, 6, generator=g, dtype=torch.float64) * 2
    sy = torch.arange(WAYS).repeat_interleave(SHOTS)
    sx = centres[sy] + 0.3 * torch.randn(len(sy), 6, generator=g, dtype=torch.float64)
    qx = centres.repeat_interleave(QUERIES, 0) + 0.3 * torch.randn(WAYS * QUERIES, 6, generator=g, dtype=torch.float64)
    return sx, sy, qx


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd"])
def test_prototype_start_is_the_protonet_classifier(name):
    """With no inner step the prototype head scores a query by -|x - p_c|^2 (up to a per-query constant)."""
    learner = build(name, head_init="prototypes", inner_steps=0, eval_inner_steps=0).eval()
    sx, sy, qx = task()
    logits = learner.adapt(sx, sy, WAYS)(qx)
    with torch.no_grad():
        fs, fq = learner.backbone(sx), learner.backbone(qx)
        protos = torch.stack([fs[sy == c].mean(0) for c in range(WAYS)])
        expected = -torch.cdist(fq, protos) ** 2
    torch.testing.assert_close((logits - expected).detach(), (logits - expected).detach()[:, :1].expand(-1, WAYS))
    assert logits.shape == (WAYS * QUERIES, WAYS)


@pytest.mark.parametrize(("name", "head_init"), [("maml", "zero"), ("maml", "prototypes"), ("anil", "prototypes"),
                                                ("mamlpp", "prototypes"), ("metasgd", "zero")])
def test_per_task_starts_make_predictions_follow_the_labels(name, head_init):
    """Relabelling the support classes relabels the predictions: no class index carries meaning.

    The meta-learned start has no such property (that is the defect these starts remove), which the
    last assertion shows, so the test can tell the two apart.
    """
    sx, sy, qx = task()
    perm = torch.tensor([2, 0, 1])

    def probs(learner, labels):  # noqa: ANN001, ANN202
        return learner.adapt(sx, labels, WAYS)(qx).softmax(-1).detach()

    steps = {"inner_steps": 3} if name == "mamlpp" else {"inner_steps": 2, "eval_inner_steps": 3}
    learner = build(name, head_init=head_init, inner_lr=0.5, **steps).eval()
    torch.testing.assert_close(probs(learner, perm[sy])[:, perm], probs(learner, sy))
    learned = build(name, inner_lr=0.5, **steps).eval()
    assert not torch.allclose(probs(learned, perm[sy])[:, perm], probs(learned, sy))


def test_meta_gradient_reaches_the_backbone_through_the_prototypes():
    """ANIL adapts only the head, so its backbone learns from the query loss through the prototypes too."""
    learner = build("anil", head_init="prototypes", inner_steps=1, inner_lr=0.1).train()
    sx, sy, qx = task()
    batch = collate([Episode(sx, sy, qx, torch.arange(WAYS).repeat_interleave(QUERIES), WAYS, SHOTS, QUERIES)])
    learner.meta_step(batch)
    grads = [p.grad for p in learner.backbone.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert learner.head.weight.grad is None  # the learned head is not used: it gets no gradient


def test_grouped_batching_falls_back_for_per_task_heads():
    learner = build("maml", head_init="zero")
    learner.task_batching = "grouped"
    sx, sy, qx = task()
    single = Episode(sx, sy, qx, torch.arange(WAYS).repeat_interleave(QUERIES), WAYS, SHOTS, QUERIES)
    assert learner.task_mode(collate([single, single])) == "loop"
    learner.head_init = "learned"
    assert learner.task_mode(collate([single, single])) == "grouped"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("maml", {"head_init": "proto"}, "head_init must be one of learned, zero, prototypes, got 'proto'"),
        ("maml", {"head_init": "zero", "adapt": ["backbone"]}, "the head must adapt"),
        ("reptile", {"head_init": "zero"}, "unknown option 'head_init' for learner 'reptile'"),
    ],
)
def test_bad_head_init_is_one_clear_line(name, options, message):
    with pytest.raises(MetakitError, match=message) as err:
        build(name, **options)
    assert "\n" not in str(err.value)


def test_regression_keeps_the_learned_head():
    with pytest.raises(MetakitError, match="head_init=prototypes is for classification"):
        build_learner("maml", build_backbone("mlp", (1,), hidden=[8]), TaskInfo("regression", (1,), 1), head_init="prototypes")


def test_head_scale_scales_the_prototype_start_and_is_meta_learned():
    """``head_scale`` multiplies the Proto-MAML start (same argmax, sharper softmax), trains in the outer loop only."""
    sx, sy, qx = task()
    plain = build("maml", head_init="prototypes", inner_steps=0, eval_inner_steps=0).eval()
    scaled = build("maml", head_init="prototypes", inner_steps=0, eval_inner_steps=0, head_scale=4.0).eval()
    torch.testing.assert_close(scaled.adapt(sx, sy, WAYS)(qx), 4.0 * plain.adapt(sx, sy, WAYS)(qx))
    assert "head_log_scale" not in scaled.adapted  # never moved by the inner loop
    learner = build("maml", head_init="prototypes", inner_steps=2, head_scale=2.0).train()
    qy = torch.arange(WAYS).repeat_interleave(QUERIES)
    batch = collate([Episode(sx, sy, qx, qy, WAYS, SHOTS, QUERIES)])
    learner.zero_grad()
    learner.meta_step(batch)
    assert learner.head_log_scale.grad is not None and learner.head_log_scale.grad.abs() > 0
    with pytest.raises(MetakitError, match="needs head_init=prototypes"):
        build("maml", head_scale=2.0)
    with pytest.raises(MetakitError, match="head_scale must be a number > 0"):
        build("maml", head_init="prototypes", head_scale=0)
