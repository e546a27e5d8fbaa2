"""The MAML family's CPU fast path (metakit.learners.fastpath) computes what the plain path does.

The plain path is ``Learner.meta_step`` with ``torch.func.functional_call`` on the backbone's own
modules (the learner's behaviour before the fast path existed); the fast path is
``GradientLearner.meta_step``: tasks in worker threads, a functional forward in channels-last
layout, and the reordered image layer (pooling before normalising). Everything in float64 with BatchNorm in the model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.backbones import build_backbone
from metakit.episodes import Episode, collate
from metakit.learners import TaskInfo, build_learner, fastpath
from metakit.learners.base import Learner
from metakit.learners.gradient import use_batch_statistics

WAYS, SHOTS, QUERIES, TASKS, STEPS, LR = 3, 2, 3, 4, 2, 0.3
SHAPE = (1, 10, 10)
TASK = TaskInfo("classification", SHAPE, WAYS, num_classes=10, max_ways=WAYS)


def make_batch(seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
        x[:, :, :4] = 1.0  # a constant background, as in Omniglot: exact ties in max-pooling windows
        return x

    return collate([
        Episode(images(WAYS * SHOTS), torch.arange(WAYS).repeat_interleave(SHOTS),
                images(WAYS * QUERIES), torch.arange(WAYS).repeat_interleave(QUERIES), WAYS, SHOTS, QUERIES)
        for _ in range(TASKS)
    ])


def make(name: str, **options) -> Learner:
    torch.manual_seed(0)
    learner = build_learner(name, build_backbone("conv4", SHAPE, hidden=6, layers=3), TASK, **options).double()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters, some of them negative
        for n, p in learner.named_parameters():
            if ".1." in n:
                p.copy_(torch.randn_like(p))
    return learner


def plain_grads(learner: Learner, batch: Episode) -> dict[str, torch.Tensor]:
    """The reference: ``functional_call`` on the modules, one backward through the meta-batch."""
    learner.__dict__["_plan"] = None
    learner.train()
    learner.zero_grad()
    Learner.meta_step(learner, batch)
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def fast_grads(learner: Learner, batch: Episode) -> dict[str, torch.Tensor]:
    learner.train()
    learner.zero_grad()
    learner.meta_step(batch)
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def assert_same(got: dict, want: dict, atol: float = 1e-10) -> None:
    assert got.keys() == want.keys()
    for n in want:
        assert torch.allclose(got[n], want[n], atol=atol, rtol=0), (n, (got[n] - want[n]).abs().max().item())


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("maml", {}),
        ("fomaml", {}),
        ("metasgd", {}),
        ("metasgd", {"first_order": True}),
        ("maml", {"adapt": ["backbone.1", "head"]}),
    ],
)
def test_fast_meta_gradient_equals_plain_path(name, options):
    batch = make_batch()
    fast = make(name, inner_lr=LR, inner_steps=STEPS, **options)
    assert fast._layers() is not None and fast._own_task_code()  # the fast path is really taken
    assert_same(fast_grads(fast, batch), plain_grads(make(name, inner_lr=LR, inner_steps=STEPS, **options), batch))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("maml", {}),
        ("fomaml", {}),
        ("metasgd", {}),
        ("maml", {"adapt": ["backbone.1", "head"]}),
    ],
)
@pytest.mark.parametrize("chunk", [None, 3])
def test_grouped_tasks_meta_gradient_equals_plain_path(name, options, chunk):
    """All tasks in one network (grouped convolutions, the GPU mode): the same meta-gradient."""
    batch = make_batch()
    grouped = make(name, inner_lr=LR, inner_steps=STEPS, **options)
    grouped.task_batching, grouped.task_chunk = "grouped", chunk
    assert grouped.task_mode(batch) == "grouped"
    assert_same(fast_grads(grouped, batch), plain_grads(make(name, inner_lr=LR, inner_steps=STEPS, **options), batch))


def test_grouped_tasks_metrics_and_regression():
    """Grouped mode's loss/accuracy equal the plain path's, and an MLP regression model works too."""
    batch = make_batch()
    grouped, plain = make("maml", inner_lr=LR, inner_steps=STEPS), make("maml", inner_lr=LR, inner_steps=STEPS)
    grouped.task_batching = "grouped"
    grouped.train(), plain.train()
    a = grouped.meta_step(batch)
    plain.__dict__["_plan"] = None
    b = Learner.meta_step(plain, batch)
    assert abs(a["loss"] - b["loss"]) < 1e-12 and abs(a["accuracy"] - b["accuracy"]) < 1e-6  # a float32 mean

    task = TaskInfo("regression", (1,), 1, output_dim=1)
    g = torch.Generator().manual_seed(0)
    reg = collate([Episode(torch.randn(5, 1, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64),
                           torch.randn(7, 1, generator=g, dtype=torch.float64), torch.randn(7, 1, generator=g, dtype=torch.float64), 1, 5, 7)
                   for _ in range(3)])

    def mlp() -> Learner:
        torch.manual_seed(0)
        return build_learner("maml", build_backbone("mlp", (1,), hidden=[8, 8]), task, inner_lr=0.01, inner_steps=2).double()

    grouped, plain = mlp(), mlp()
    grouped.task_batching = "grouped"
    assert grouped.task_mode(reg) == "grouped"
    assert_same(fast_grads(grouped, reg), plain_grads(plain, reg))


def test_task_mode_choice():
    batch = make_batch()
    learner = make("maml")
    assert learner.task_mode(batch) == "threads"  # CPU: measured fastest there
    assert learner.task_mode(batch[0]) == "threads"
    learner.task_batching = "grouped"
    assert learner.task_mode(batch[0]) == "loop"  # one task: nothing to group
    assert make("anil").task_mode(batch) == "loop"  # its own adapt(): per task, in order
    learner.task_batching = "fastest"
    with pytest.raises(Exception, match="task_batching must be"):
        learner.task_mode(batch)


def test_metrics_equal_plain_path():
    batch = make_batch()
    fast, plain = make("maml", inner_lr=LR, inner_steps=STEPS), make("maml", inner_lr=LR, inner_steps=STEPS)
    fast.train(), plain.train()
    a = fast.meta_step(batch)
    plain.__dict__["_plan"] = None
    b = Learner.meta_step(plain, batch)
    assert a.keys() == b.keys() and abs(a["loss"] - b["loss"]) < 1e-12 and abs(a["accuracy"] - b["accuracy"]) < 1e-12


def test_result_does_not_depend_on_thread_count():
    batch = make_batch(1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fast_grads(make("maml", inner_lr=LR, inner_steps=STEPS), batch)
        torch.set_num_threads(3)
        three = fast_grads(make("maml", inner_lr=LR, inner_steps=STEPS), batch)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[n], three[n]) for n in one)
    assert torch.get_num_threads() == threads


def test_per_task_accumulation_for_learners_with_their_own_adapt():
    """ANIL and CAVIA keep their adapt(); meta_step still equals one backward through the batch."""
    batch = make_batch()
    for name, options in (("anil", {"inner_lr": LR, "inner_steps": STEPS}), ("cavia", {"num_context": 4})):
        learner = make(name, **options)
        assert not learner._own_task_code()
        assert_same(fast_grads(learner, batch), plain_grads(make(name, **options), batch))


def test_meta_step_adds_to_existing_grads():
    batch = make_batch()
    learner = make("maml", inner_lr=LR, inner_steps=1)
    once = fast_grads(learner, batch)
    learner.meta_step(batch)  # no zero_grad: accumulates like loss.backward() would
    assert all(torch.allclose(p.grad, 2 * once[n], atol=1e-12) for n, p in learner.named_parameters() if n in once)


@pytest.mark.parametrize("size", [28, 9, 8, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reordered_image_layer_equals_the_layers(size, dtype):
    """Values, gradients and (float64) second derivatives of the reordered image block."""
    torch.manual_seed(size)
    x = torch.rand(5, 1, size, size, dtype=dtype)
    x[:, :, : size // 2] = 1.0  # exact ties in the pooling windows
    conv = nn.Conv2d(1, 4, 3, padding=1).to(dtype)
    w, b = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    gamma = torch.tensor([1.0, -0.5, 0.3, -2.0], dtype=dtype, requires_grad=True)
    beta = torch.randn(4, dtype=dtype, requires_grad=True)
    up = torch.randn(5, 4, size // 2, size // 2, dtype=dtype)
    params = [w, b, gamma, beta]
    fused = fastpath.conv_bn_relu_pool(x, conv, w, b, gamma, beta, 1e-5)
    plain = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w, b, padding=1), None, None, gamma, beta, True, 0.0, 1e-5)), 2)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert fused.shape == plain.shape and torch.allclose(fused, plain, atol=tol)
    got = torch.autograd.grad((fused * up).sum() ** 2, params, create_graph=True)
    want = torch.autograd.grad((plain * up).sum() ** 2, params, create_graph=True)
    scale = max(1.0, *(r.abs().max().item() for r in want))  # the unfused conv-bias gradient is rounding noise
    for g, r in zip(got, want):
        assert torch.allclose(g, r, atol=tol * scale), (g - r).abs().max()
    assert torch.equal(got[1], torch.zeros_like(got[1]))  # BatchNorm cancels the conv bias exactly
    if dtype == torch.float64:  # second order: a Hessian-vector product
        v = [torch.randn_like(p) for p in params]
        hv_got = torch.autograd.grad(got, params, v, allow_unused=True)
        hv_want = torch.autograd.grad(want, params, v, allow_unused=True)
        scale = max(1.0, *(r.abs().max().item() for r in hv_want))
        for g, r in zip(hv_got, hv_want):
            assert torch.allclose(torch.zeros_like(r) if g is None else g, r, atol=1e-10 * scale)


@pytest.mark.parametrize("backbone", ["conv4", "mlp"])
def test_functional_forward_equals_module_forward(backbone):
    shape = SHAPE if backbone == "conv4" else (7,)
    module = build_backbone(backbone, shape).double()
    use_batch_statistics(module)
    layers = fastpath.plan(module)
    assert layers is not None
    x = torch.rand(6, *shape, dtype=torch.float64)
    params = dict(module.named_parameters())
    assert torch.allclose(fastpath.forward(layers, params, x), module(x), atol=1e-12)


def test_unsupported_backbones_keep_functional_call():
    resnet = build_backbone("resnet12", (3, 16, 16), channels=(4, 4, 4, 4))
    assert fastpath.plan(resnet) is None
    tracked = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())  # running statistics
    assert fastpath.plan(tracked) is None

    class Custom(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    assert fastpath.plan(nn.Sequential(Custom())) is None
    # A learner on an unsupported backbone still meta-trains (sequentially, via functional_call).
    task = TaskInfo("classification", (3, 16, 16), WAYS, max_ways=WAYS)
    learner = build_learner("maml", build_backbone("resnet12", (3, 16, 16), channels=(4, 4, 4, 4)), task, inner_steps=1)
    g = torch.Generator().manual_seed(0)
    batch = collate([
        Episode(torch.rand(WAYS, 3, 16, 16, generator=g), torch.arange(WAYS), torch.rand(WAYS, 3, 16, 16, generator=g),
                torch.arange(WAYS), WAYS, 1, 1)
        for _ in range(2)
    ])
    learner.train()
    stats = learner.meta_step(batch)
    assert learner._layers() is None and stats["loss"] > 0
    assert all(p.grad is not None for p in learner.parameters())
