"""metakit.inner, the inner loop shared by the MAML family, MeLU and MAML-RL, against hand-unrolled loops (float64)."""

from __future__ import annotations

import pytest
import torch

from metakit import inner
from metakit.backbones import build_backbone
from metakit.errors import MetakitError
from metakit.learners import LEARNERS, TaskInfo, build_learner
from metakit.learners.gradient import GradientLearner

STEPS, LR = 3, 0.2


def problem(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Meta-parameters of a tiny tanh network (leaves) and a regression set."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "w1": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "b1": torch.randn(4, generator=g, dtype=torch.float64),
        "w2": torch.randn(1, 4, generator=g, dtype=torch.float64),
    }
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return {n: p.requires_grad_(True) for n, p in params.items()}, x, y


def net(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ p["w1"].T + p["b1"]) @ p["w2"].T


def mse(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((net(p, x) - y) ** 2).mean()


def unrolled(params: dict, x: torch.Tensor, y: torch.Tensor, lr, second_order: bool) -> dict:  # noqa: ANN001
    """The inner loop written out: ``lr(name, step)`` per tensor and step."""
    phi = dict(params)
    for step in range(STEPS):
        grads = torch.autograd.grad(mse(phi, x, y), list(phi.values()), create_graph=second_order)
        phi = {n: p - lr(n, step) * (g if second_order else g.detach()) for (n, p), g in zip(phi.items(), grads)}
    return phi


def meta_grads(adapted: dict, params: dict, extra: list[torch.Tensor], qx: torch.Tensor, qy: torch.Tensor) -> tuple:
    return torch.autograd.grad(mse(adapted, qx, qy), [*params.values(), *extra])


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_through_the_steps_equals_the_unrolled_loop(first_order):
    params, x, y = problem()
    _, qx, qy = problem(1)
    got = inner.adapt(params, lambda p, _: mse(p, x, y), STEPS, LR, first_order=first_order)
    want = unrolled(params, x, y, lambda n, s: LR, second_order=not first_order)
    for n in params:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-12)
    for a, b in zip(meta_grads(got, params, [], qx, qy), meta_grads(want, params, [], qx, qy)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_first_order_detaches_the_inner_gradients():
    params, x, y = problem()
    _, qx, qy = problem(1)
    first = inner.adapt(params, lambda p, _: mse(p, x, y), STEPS, LR, first_order=True)
    # First order: the meta-gradient is the query gradient at the adapted parameters (identity Jacobian).
    at_adapted = {n: v.detach().requires_grad_(True) for n, v in first.items()}
    want = torch.autograd.grad(mse(at_adapted, qx, qy), list(at_adapted.values()))
    for a, b in zip(meta_grads(first, params, [], qx, qy), want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    second = inner.adapt(params, lambda p, _: mse(p, x, y), STEPS, LR, first_order=False)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(meta_grads(second, params, [], qx, qy), want))


def test_per_parameter_learned_rates_get_meta_gradients():
    params, x, y = problem()
    _, qx, qy = problem(1)
    g = torch.Generator().manual_seed(2)
    rates = {n: (0.1 + 0.2 * torch.rand(p.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
             for n, p in params.items()}
    got = inner.adapt(params, lambda p, _: mse(p, x, y), STEPS, rates)
    want = unrolled(params, x, y, lambda n, s: rates[n], second_order=True)
    extra = list(rates.values())
    got_grads = meta_grads(got, params, extra, qx, qy)
    for a, b in zip(got_grads, meta_grads(want, params, extra, qx, qy)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert all(r.abs().sum() > 0 for r in got_grads[len(params):])


def test_per_step_rates_and_the_trajectory():
    params, x, y = problem()
    per_step = {n: torch.tensor([0.3, 0.1, 0.05], dtype=torch.float64) for n in params}
    history = inner.trajectory(params, lambda p, _: mse(p, x, y), STEPS, lambda s: {n: r[s] for n, r in per_step.items()})
    assert len(history) == STEPS + 1 and history[0] is params
    want = unrolled(params, x, y, lambda n, s: per_step[n][s], second_order=True)
    for n in params:
        torch.testing.assert_close(history[-1][n], want[n], rtol=0, atol=1e-12)
    assert inner.adapt(params, lambda p, _: mse(p, x, y), 0, LR) is params


def test_maximize_ascends_and_unused_tensors_stay():
    params, x, y = problem()
    params["unused"] = torch.ones(2, dtype=torch.float64, requires_grad=True)
    up = inner.adapt(params, lambda p, _: mse(p, x, y), 1, LR, first_order=True, maximize=True)
    down = inner.adapt(params, lambda p, _: mse(p, x, y), 1, LR, first_order=True)
    assert mse(up, x, y) > mse(params, x, y) > mse(down, x, y)
    assert up["unused"] is params["unused"] and down["unused"] is params["unused"]


def test_detached_start_and_no_grad_callers():
    params, x, y = problem()
    detached = {n: p.detach() for n, p in params.items()}
    with torch.no_grad():
        got = inner.adapt(detached, lambda p, _: mse(p, x, y), STEPS, LR, first_order=True)
    want = unrolled(params, x, y, lambda n, s: LR, second_order=False)
    for n in params:
        torch.testing.assert_close(got[n], want[n].detach(), rtol=0, atol=1e-12)
    assert all(not p.requires_grad for p in detached.values())  # the caller's tensors are left alone


# -- options of the gradient base pass through every MAML-family learner -------------------------

FAMILY = ["maml", "fomaml", "anil", "metasgd", "mamlpp", "cavia", "reptile"]
TASK = TaskInfo("classification", (1, 8, 8), 3, num_classes=10, max_ways=3)


def build(name: str, **options):  # noqa: ANN201
    return build_learner(name, build_backbone("conv4", (1, 8, 8), hidden=4, layers=2), TASK, **options)


def test_family_covers_every_gradient_learner():
    assert {n for n, cls in LEARNERS.items() if issubclass(cls, GradientLearner)} == set(FAMILY)


@pytest.mark.parametrize("name", FAMILY)
def test_gradient_base_options_reach_every_learner(name):
    learner = build(name, inner_lr=0.25, inner_steps=2)
    assert learner.inner_lr == 0.25 and learner.inner_steps == 2
    if name not in ("fomaml", "reptile", "mamlpp"):  # these three set the order themselves
        assert build(name, first_order=True).first_order
    with pytest.raises(MetakitError) as err:
        build(name, inner_lrr=0.1)
    message = str(err.value)
    assert "\n" not in message and "unknown option 'inner_lrr'" in message and "Did you mean inner_lr" in message
    valid = set(message.split("Valid: ")[1].rstrip(".").split(", "))
    own = {"cavia": {"num_context", "film_at"}, "mamlpp": {"msl_steps", "first_order_until"}}.get(name, set())
    fixed = {"fomaml": {"first_order"}, "reptile": {"first_order", "head_init"}, "anil": {"adapt"},
             "cavia": {"adapt", "head_init"}, "mamlpp": {"eval_inner_steps", "first_order"}}.get(name, set())
    assert valid == ({"inner_lr", "inner_steps", "eval_inner_steps", "first_order", "adapt", "head_init", "head_scale"} - fixed) | own


@pytest.mark.parametrize(("name", "option"), [("fomaml", "first_order"), ("anil", "adapt"), ("mamlpp", "eval_inner_steps")])
def test_options_a_learner_sets_itself_are_unknown(name, option):
    with pytest.raises(MetakitError, match=f"unknown option '{option}' for learner '{name}'"):
        build(name, **{option: None})
