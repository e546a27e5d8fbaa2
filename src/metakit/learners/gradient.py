"""Shared pieces of the gradient-based learners (MAML and its family).

Parameters are handled functionally, as in TorchOpt/optax: the network is called with
``torch.func.functional_call`` on a dict of tensors, and an inner step returns a *new* dict. No
layer is rewritten and no ``.fast`` attribute is attached, so any ``nn.Module`` backbone works
unmodified and ``torch.distributed`` sees ordinary parameters.

BatchNorm follows MAML's transductive convention: every forward pass normalises with the batch's
own statistics (support batch in the inner loop, query batch when predicting), in training and at
test time alike; running statistics are not kept. Each task runs in its own forward passes (a
per-task loop), which keeps second-order meta-gradients exact with BatchNorm in the model —
``torch.func.vmap`` over tasks does not (its batch-norm second derivatives are wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo

Params = dict[str, torch.Tensor]


def use_batch_statistics(module: nn.Module) -> None:
    """Make every BatchNorm layer in ``module`` normalise with batch statistics, always."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


def select_parameters(module: nn.Module, prefixes: Sequence[str] | None) -> list[str]:
    """Names of ``module``'s parameters that start with one of ``prefixes`` (all when ``None``).

    A prefix that matches nothing is a config error: it names the parameters that exist.
    """
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if prefixes is None:
        return names
    chosen = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.rsplit(".", 1)[0] for n in names})
            raise MetakitError(
                f"no parameter named {prefix!r} in the model; adaptable parameter groups are: {', '.join(tops)}."
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


class GradientLearner(Learner):
    """A backbone plus a linear head whose (selected) parameters adapt by gradient descent.

    Args:
        backbone: feature extractor.
        task: task description (sizes the head).
        inner_lr: inner-loop step size (> 0).
        inner_steps: inner-loop steps during meta-training (>= 0).
        eval_inner_steps: inner-loop steps at evaluation (default: ``inner_steps``).
        first_order: drop second-order terms (first-order MAML).
        adapt: parameter-name prefixes adapted in the inner loop (default: all), e.g. ``["head"]``.
    """

    task_types = ("classification", "regression")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: Sequence[str] | None = None,
    ) -> None:
        super().__init__(backbone, task)
        if not isinstance(inner_lr, (int, float)) or inner_lr <= 0:
            raise MetakitError(f"inner_lr must be > 0, got {inner_lr!r}.")
        for label, steps in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if steps is not None and (not isinstance(steps, int) or steps < 0):
                raise MetakitError(f"{label} must be an integer >= 0, got {steps!r}.")
        outputs = (task.max_ways or task.ways) if task.task_type == "classification" else task.output_dim
        self.head = nn.Linear(backbone.out_dim, outputs)
        use_batch_statistics(self.backbone)
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.adapted = select_parameters(self, adapt)

    # -- functional forward -------------------------------------------------------------------

    def parameters_dict(self) -> Params:
        """The adapted parameters as a name -> tensor dict (the inner loop's starting point)."""
        own = dict(self.named_parameters())
        return {n: own[n] for n in self.adapted}

    def forward_with(self, params: Params, x: torch.Tensor, ways: int | None = None) -> torch.Tensor:
        """Outputs of the network with ``params`` replacing the parameters of the same name."""
        backbone = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        features = functional_call(self.backbone, backbone, (x,), strict=False) if backbone else self.backbone(x)
        return self.head_forward(params, features, ways)

    def head_forward(self, params: Params, features: torch.Tensor, ways: int | None) -> torch.Tensor:
        """The linear head with (possibly adapted) ``params``, restricted to the first ``ways`` classes."""
        weight = params.get("head.weight", self.head.weight)
        bias = params.get("head.bias", self.head.bias)
        if ways is not None and self.task.task_type == "classification":
            if ways > weight.shape[0]:
                raise MetakitError(f"{ways}-way episodes but the head has {weight.shape[0]} outputs; set eval/training ways consistently.")
            weight, bias = weight[:ways], bias[:ways]
        return nn.functional.linear(features, weight, bias)

    # -- the inner loop -----------------------------------------------------------------------

    def step_sizes(self, step: int) -> dict[str, torch.Tensor | float]:
        """Per-parameter inner learning rates for inner step ``step`` (MAML: one scalar)."""
        return dict.fromkeys(self.adapted, self.inner_lr)

    def inner_update(self, params: Params, loss: torch.Tensor, step: int, create_graph: bool) -> Params:
        """One gradient step on ``loss``; keeps the graph for second-order meta-gradients."""
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        lrs = self.step_sizes(step)
        new = {}
        for (name, p), g in zip(params.items(), grads):
            if g is None:
                new[name] = p
                continue
            if not create_graph:
                g = g.detach()
            new[name] = p - lrs[name] * g
        return new

    def inner_loop(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int, steps: int) -> list[Params]:
        """Adapt from the meta-parameters; returns the parameters after each step (index 0 = start)."""
        create_graph = self.training and not self.first_order
        params = self.parameters_dict()
        history = [params]
        with torch.enable_grad():
            for step in range(steps):
                loss = self.loss(self.forward_with(params, support_x, ways), support_y)
                params = self.inner_update(params, loss, step, create_graph)
                history.append(params)
        return history

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Run the inner loop on the support set; predict with the adapted parameters."""
        steps = self.inner_steps if self.training else self.eval_inner_steps
        params = self.inner_loop(support_x, support_y, ways, steps)[-1]
        if not self.training:
            params = {k: v.detach() for k, v in params.items()}
        return lambda query_x: self.forward_with(params, query_x, ways)
