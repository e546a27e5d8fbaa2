"""The inner loop of every meta-learner that differentiates through its own adaptation.

MAML and its family (:mod:`metakit.learners.gradient`), MeLU (:mod:`metakit.recsys.melu`) and
MAML-RL (:mod:`metakit.rl.maml_rl`) all adapt the same way: a few gradient steps on a dict of
tensors, kept in the autograd graph so that the outer loop can differentiate through them. This
module is that loop, in small pieces in the style of TorchOpt and optax:

- :func:`gradients`: a loss's gradients with respect to a dict of tensors;
- :func:`sgd`: one update of a dict of tensors from their gradients;
- :func:`step`: both, on a loss already computed;
- :func:`adapt` and :func:`trajectory`: ``steps`` steps on a loss function, returning the final
  parameters or all of them.

Parameters are never written into a module: each step returns a *new* dict, so any network that
can be called on a dict of tensors (``torch.func.functional_call``,
:func:`metakit.learners.fastpath.forward`, a hand-written functional forward) works, and the
module's own parameters stay the meta-parameters. How the tasks of a meta-batch are batched is
the caller's choice: one task at a time (in a loop or in worker threads), or all tasks at once
with a leading task dimension on every tensor and the *sum* of per-task losses (each task's
gradient then depends on its own slice only).

Step sizes (:data:`StepSize`) are one number for every tensor (MAML), one entry per tensor
(a mapping: per-tensor or, with tensors of the parameters' shapes, per-element rates as in
Meta-SGD), or a function of the step (per-step rates as in MAML++'s LSLR). Learned rates are
ordinary tensors in the graph, so they get meta-gradients like any parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

Params = dict[str, torch.Tensor]
#: One step size for every tensor, or one per tensor name (a number, or a tensor that broadcasts
#: against the parameter, e.g. a per-element rate of the parameter's shape).
StepSize = float | torch.Tensor | Mapping[str, float | torch.Tensor]
#: A step size, or a function from the step index (0-based) to the step size of that step.
Schedule = StepSize | Callable[[int], StepSize]
#: ``loss_fn(params, step)``: the inner loss at ``step`` (0-based) with parameters ``params``.
#: The step index lets the loss change from step to step (fresh data per step in MAML-RL,
#: per-step BatchNorm weights in MAML++); most losses ignore it.
LossFn = Callable[[Params, int], torch.Tensor]


def gradients(loss: torch.Tensor, params: Params, create_graph: bool) -> dict[str, torch.Tensor | None]:
    """The gradient of ``loss`` with respect to each tensor of ``params`` (``None``: it does not depend on it).

    ``create_graph`` keeps the gradients in the graph, for second-order meta-gradients; without it
    they are constants.
    """
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    if not create_graph:
        grads = tuple(None if g is None else g.detach() for g in grads)
    return dict(zip(params, grads))


def sgd(params: Params, grads: Mapping[str, torch.Tensor | None], lr: StepSize, maximize: bool = False) -> Params:
    """``p - lr * g`` for every tensor (``p + lr * g`` when ``maximize``), as a new dict.

    A tensor without a gradient (absent or ``None``) is kept as it is.
    """
    per_name = isinstance(lr, Mapping)
    new = {}
    for name, p in params.items():
        g = grads.get(name)
        if g is None:
            new[name] = p
            continue
        rate = lr[name] if per_name else lr
        new[name] = p + rate * g if maximize else p - rate * g
    return new


def step(params: Params, loss: torch.Tensor, lr: StepSize, first_order: bool = False, maximize: bool = False) -> Params:
    """One gradient step of ``params`` on ``loss``.

    With ``first_order`` the gradient is a constant: the result's derivative with respect to
    ``params`` is the identity (first-order MAML); otherwise the step stays differentiable
    (second order, and through learned step sizes).
    """
    return sgd(params, gradients(loss, params, create_graph=not first_order), lr, maximize)


def adapt(params: Params, loss_fn: LossFn, steps: int, lr: Schedule, first_order: bool = False, maximize: bool = False,
          on_step: Callable[[int, Params], None] | None = None) -> Params:
    """``steps`` gradient steps on ``loss_fn`` from ``params``; returns the adapted parameters.

    Args:
        params: the starting point (the meta-parameters, or views of them). A tensor that does
            not require gradients (a detached copy) enters as a fresh leaf that does.
        loss_fn: ``loss_fn(params, step)``, the inner loss (see :data:`LossFn`).
        steps: number of steps (0 returns ``params`` unchanged).
        lr: step sizes (see :data:`Schedule`); a function is called with each step's index.
        first_order: the inner gradients are constants (first-order MAML, or evaluation, where no
            meta-gradient is taken); otherwise second order.
        maximize: gradient ascent (a reward to maximise instead of a loss).
        on_step: called as ``on_step(step, params)`` with the parameters after each step.

    Gradients are enabled for the loop whatever the caller's mode, so adaptation also runs at
    evaluation under ``torch.no_grad()``.
    """
    if steps == 0:
        return params
    scheduled = callable(lr) and not isinstance(lr, (torch.Tensor, nn.Module))
    with torch.enable_grad():
        params = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in params.items()}
        for i in range(steps):
            params = step(params, loss_fn(params, i), lr(i) if scheduled else lr, first_order, maximize)
            if on_step is not None:
                on_step(i, params)
    return params


def trajectory(params: Params, loss_fn: LossFn, steps: int, lr: Schedule, first_order: bool = False,
               maximize: bool = False) -> list[Params]:
    """The parameters before and after every step of :func:`adapt` (index 0: ``params``, index ``steps``: the result)."""
    history = [params]
    adapt(params, loss_fn, steps, lr, first_order, maximize, on_step=lambda _, p: history.append(p))
    return history
