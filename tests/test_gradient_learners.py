"""Gradient-based learners are exact: meta-gradients equal a naive autograd reference (float64).

The reference is written independently of metakit's functional machinery: an explicit conv net
built from ``F.conv2d``/``F.batch_norm`` calls on a dict of leaf tensors, with the inner loop
unrolled by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metakit.backbones import build_backbone
from metakit.episodes import Episode, collate
from metakit.errors import MetakitError
from metakit.learners import TaskInfo, build_learner

WAYS, SHOTS, QUERIES, TASKS, STEPS, LR = 3, 2, 2, 3, 2, 0.3
TASK = TaskInfo("classification", (1, 8, 8), WAYS, num_classes=10, max_ways=WAYS)


def make_batch(seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(TASKS):
        episodes.append(Episode(
            support_x=torch.randn(WAYS * SHOTS, 1, 8, 8, generator=g, dtype=torch.float64),
            support_y=torch.arange(WAYS).repeat_interleave(SHOTS),
            query_x=torch.randn(WAYS * QUERIES, 1, 8, 8, generator=g, dtype=torch.float64),
            query_y=torch.arange(WAYS).repeat_interleave(QUERIES),
            ways=WAYS, shots=SHOTS, queries=QUERIES, classes=torch.arange(WAYS),
        ))
    return collate(episodes)


def make(name: str, **options):
    torch.manual_seed(0)
    backbone = build_backbone("conv4", (1, 8, 8), hidden=4, layers=2)
    learner = build_learner(name, backbone, TASK, **options).double()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for n, p in learner.named_parameters():
            if ".1." in n:
                p.add_(0.1 * torch.randn_like(p))
    return learner


def ref_net(P: dict, x: torch.Tensor, bn: dict | None = None) -> torch.Tensor:
    bn = bn or P
    for i in range(2):
        x = F.conv2d(x, P[f"backbone.{i}.0.weight"], P[f"backbone.{i}.0.bias"], padding=1)
        x = F.batch_norm(x, None, None, bn[f"backbone.{i}.1.weight"], bn[f"backbone.{i}.1.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), P["head.weight"], P["head.bias"])


def leaves(learner) -> dict:
    return {n: p.detach().clone().requires_grad_(True) for n, p in learner.named_parameters() if p.requires_grad}


def learner_grads(learner, batch) -> dict:
    learner.train()
    learner.zero_grad()
    learner.meta_step(batch)
    return {n: p.grad for n, p in learner.named_parameters() if p.requires_grad}


def assert_close(got: dict, want: dict, names) -> None:
    for n in names:
        assert got[n] is not None, n
        assert torch.allclose(got[n], want[n], atol=1e-10, rtol=0), (n, (got[n] - want[n]).abs().max().item())


def reference_maml(P: dict, batch: Episode, adapted, lrs, second_order: bool) -> torch.Tensor:
    losses = []
    for ep in batch.tasks():
        phi = dict(P)
        for step in range(STEPS):
            loss = F.cross_entropy(ref_net(phi, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(loss, [phi[n] for n in adapted], create_graph=second_order)
            for n, g in zip(adapted, grads):
                phi[n] = phi[n] - lrs(n, step) * (g if second_order else g.detach())
        losses.append(F.cross_entropy(ref_net(phi, ep.query_x), ep.query_y))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_maml_meta_gradient_matches_reference(name):
    learner = make(name, inner_lr=LR, inner_steps=STEPS)
    batch = make_batch()
    P = leaves(learner)
    ref = reference_maml(P, batch, list(P), lambda n, s: LR, second_order=name == "maml")
    want = dict(zip(P, torch.autograd.grad(ref, list(P.values()))))
    assert_close(learner_grads(learner, batch), want, P)


def test_first_and_second_order_differ():
    batch = make_batch()
    a = learner_grads(make("maml", inner_lr=LR, inner_steps=STEPS), batch)
    b = learner_grads(make("maml", inner_lr=LR, inner_steps=STEPS, first_order=True), batch)
    assert any((a[n] - b[n]).abs().max() > 1e-6 for n in a)


def test_metasgd_meta_gradient_matches_reference():
    learner = make("metasgd", inner_lr=LR, inner_steps=STEPS)
    with torch.no_grad():
        for p in learner.inner_lrs.values():
            p.mul_(1 + 0.5 * torch.rand_like(p))  # different rates per entry
    batch = make_batch()
    P = {n: v for n, v in leaves(learner).items() if not n.startswith("inner_lrs.")}
    R = {n: learner.inner_lrs[n.replace(".", "__")].detach().clone().requires_grad_(True) for n in P}
    ref = reference_maml(P, batch, list(P), lambda n, s: R[n], second_order=True)
    flat = list(P.values()) + list(R.values())
    grads = torch.autograd.grad(ref, flat)
    want = dict(zip(list(P) + [f"inner_lrs.{n.replace('.', '__')}" for n in R], grads))
    assert_close(learner_grads(learner, batch), want, want)


def test_anil_meta_gradient_matches_reference():
    learner = make("anil", inner_lr=LR, inner_steps=STEPS)
    batch = make_batch()
    P = leaves(learner)
    ref = reference_maml(P, batch, ["head.weight", "head.bias"], lambda n, s: LR, second_order=True)
    want = dict(zip(P, torch.autograd.grad(ref, list(P.values()))))
    got = learner_grads(learner, batch)
    assert_close(got, want, P)
    assert got["backbone.0.0.weight"].abs().sum() > 0  # the backbone learns in the outer loop


def test_reptile_update_equals_its_definition():
    eps = 0.5
    learner = make("reptile", inner_lr=LR, inner_steps=STEPS)
    batch = make_batch()
    theta = leaves(learner)
    expected = {n: torch.zeros_like(p) for n, p in theta.items()}
    for ep in batch.tasks():
        phi = {n: p.detach().clone().requires_grad_(True) for n, p in theta.items()}
        for _ in range(STEPS):
            loss = F.cross_entropy(ref_net(phi, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {n: (p - LR * g).detach().requires_grad_(True) for (n, p), g in zip(phi.items(), grads)}
        for n in theta:
            expected[n] += (phi[n] - theta[n]).detach() / TASKS
    opt = torch.optim.SGD(learner.parameters(), lr=eps)
    learner_grads(learner, batch)
    opt.step()
    for n, p in learner.named_parameters():
        want = theta[n].detach() + eps * expected[n]
        assert torch.allclose(p.detach(), want, atol=1e-12), n


def test_mamlpp_multi_step_loss_equals_its_definition():
    learner = make("mamlpp", inner_lr=LR, inner_steps=STEPS, msl_steps=10)
    with torch.no_grad():
        for p in learner.inner_lrs.values():
            p.mul_(1 + torch.rand_like(p))
        for d in learner.bn_per_step:
            for p in d.values():
                p.add_(0.1 * torch.randn_like(p))
    learner.meta_steps.fill_(3)
    weights = learner.loss_weights()
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    assert weights[-1] > weights[0]  # annealing towards the last step has begun
    batch = make_batch()
    params = {n: p for n, p in learner.named_parameters()}
    P = {n: params[n] for n in learner.adapted}
    bn = lambda s: {n: learner.bn_per_step[s][n.replace(".", "__")] for n in learner.bn_names}  # noqa: E731
    total = []
    for ep in batch.tasks():
        phi, per_step = dict(P), []
        for s in range(STEPS):
            loss = F.cross_entropy(ref_net(phi, ep.support_x, bn(s)), ep.support_y)
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = {n: p - learner.inner_lrs[n.replace(".", "__")][s] * g for (n, p), g in zip(phi.items(), grads)}
            per_step.append(F.cross_entropy(ref_net(phi, ep.query_x, bn(s + 1)), ep.query_y))
        total.append(sum(w * l for w, l in zip(weights, per_step)))
    ref = torch.stack(total).mean()
    learner.train()
    loss, _ = learner.meta_loss(batch)
    assert abs(loss.item() - ref.item()) < 1e-10
    names = [n for n, p in learner.named_parameters() if p.requires_grad]
    want = torch.autograd.grad(ref, [params[n] for n in names], allow_unused=True)
    got = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    for n, a, b in zip(names, got, want):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10), n


def test_mamlpp_anneals_weights_and_derivative_order():
    learner = make("mamlpp", inner_steps=3, msl_steps=100, first_order_until=5)
    learner.train()
    assert torch.allclose(learner.loss_weights(), torch.full((3,), 1 / 3, dtype=torch.float32))
    assert not learner.second_order()
    learner.meta_steps.fill_(1000)
    w = learner.loss_weights()
    assert learner.second_order() and w[-1] > 0.9 and torch.allclose(w[:2], torch.full((2,), 0.01))
    learner.meta_step(make_batch())
    assert int(learner.meta_steps) == 1001 and "meta_steps" in learner.state_dict()


def test_cavia_adapts_only_the_context():
    learner = make("cavia", num_context=5, inner_lr=1.0)
    batch = make_batch()
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    learner.train()
    ep = batch[0]
    predict = learner.adapt(ep.support_x, ep.support_y, WAYS)
    out = predict(ep.query_x)
    assert out.shape == (WAYS * QUERIES, WAYS)
    # Adaptation changed the prediction (the context moved) but not one global parameter.
    with torch.no_grad():
        zero = learner.conditioned(learner.backbone(ep.query_x), torch.zeros(5, dtype=torch.float64), WAYS)
    assert not torch.allclose(out.detach(), zero)
    assert all(torch.equal(before[n], p) for n, p in learner.named_parameters())
    grads = learner_grads(learner, batch)
    assert grads["film.weight"].abs().sum() > 0  # the context's effect is meta-learned


def test_cavia_films_inside_the_backbone():
    default, inner = make("cavia", num_context=5), make("cavia", num_context=5, film_at=1)
    # The split shares the backbone's modules: same parameter names, FiLM sized to the block's channels.
    assert default.state_dict().keys() == inner.state_dict().keys()
    assert inner.film.out_features == 2 * inner.backbone[1][0].out_channels
    batch = make_batch()
    before = {n: p.detach().clone() for n, p in inner.named_parameters()}
    inner.train()
    ep = batch[0]
    out = inner.adapt(ep.support_x, ep.support_y, WAYS)(ep.query_x)
    with torch.no_grad():
        zero = inner.conditioned(inner.split[0](ep.query_x), torch.zeros(5, dtype=torch.float64), WAYS)
    assert not torch.allclose(out.detach(), zero)
    assert all(torch.equal(before[n], p) for n, p in inner.named_parameters())
    grads = learner_grads(inner, batch)
    assert grads["film.weight"].abs().sum() > 0 and grads["backbone.0.0.weight"].abs().sum() > 0
    with pytest.raises(MetakitError, match="film_at=9"):
        make("cavia", film_at=9)


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd", "mamlpp", "cavia", "reptile", "fomaml"])
def test_regression_on_sinusoid_shapes(name):
    from metakit.datasets.sinusoid import SinusoidTasks

    task = TaskInfo("regression", (1,), 1, output_dim=1)
    learner = build_learner(name, build_backbone("mlp", (1,)), task)
    batch = collate([SinusoidTasks(shots=5, queries=5).sample(torch.Generator().manual_seed(i)) for i in range(2)])
    stats = learner.meta_step(batch)
    assert stats["mse"] >= 0 and learner.metric == "mse"


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("maml", {"inner_lr": 0}, "inner_lr must be > 0"),
        ("maml", {"inner_lr": -0.1}, "inner_lr must be > 0"),
        ("maml", {"inner_steps": -1}, "inner_steps must be an integer >= 0"),
        ("maml", {"adapt": ["classifier"]}, "no parameter named 'classifier'.*backbone.0.0"),
        ("reptile", {"first_order": True}, "unknown option 'first_order' for learner 'reptile'"),
        ("protonet", {"first_order": True}, "unknown option 'first_order' for learner 'protonet'"),
        ("mamlpp", {"inner_steps": 0}, "inner_steps >= 1"),
    ],
)
def test_bad_options(name, options, needle):
    with pytest.raises(MetakitError, match=needle):
        make(name, **options)


def test_maml_evaluation_adapts_with_gradients_under_no_grad():
    learner = make("maml", inner_lr=LR, inner_steps=1, eval_inner_steps=3)
    learner.eval()
    ep = make_batch()[0]
    with torch.no_grad():
        adapted = learner.adapt(ep.support_x, ep.support_y, WAYS)(ep.query_x)
        plain = learner.forward_with({}, ep.query_x, WAYS)
    assert not torch.allclose(adapted, plain)
