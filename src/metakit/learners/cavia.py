"""CAVIA — fast context adaptation (Zintgraf, Shiarlis, Kurin, Hofmann & Whiteson, ICML 2019).

The network is split into *global* parameters θ, shared by all tasks and learned only in the
outer loop, and *local* context parameters φ, a small vector reset to zero for every task and the
only thing the inner loop adapts. The context conditions the network through FiLM on the backbone
features: ``h' = h * (1 + γ(φ)) + β(φ)``, followed by the head. Adapting a handful of numbers
instead of the whole network makes the inner loop cheap and less prone to overfitting.
"""

from __future__ import annotations

import torch
from torch import nn

from metakit.errors import MetakitError
from metakit.learners import register_learner
from metakit.learners.base import Predictor, TaskInfo
from metakit.learners.gradient import GradientLearner


@register_learner("cavia")
class CAVIA(GradientLearner):
    """CAVIA: adapt a per-task context vector; the network weights are global.

    Args:
        num_context: size of the context vector φ.
        inner_lr: inner step size on φ (the paper uses 1.0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        num_context: int = 100,
        inner_lr: float = 1.0,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
    ) -> None:
        if num_context < 1:
            raise MetakitError(f"num_context must be >= 1, got {num_context}.")
        super().__init__(backbone, task, inner_lr, inner_steps, eval_inner_steps, first_order, adapt=[])
        # Not zero-initialised: with a zero FiLM map the context gets no gradient and never moves.
        self.film = nn.Linear(num_context, 2 * backbone.out_dim)
        self.num_context = num_context

    def conditioned(self, features: torch.Tensor, context: torch.Tensor, ways: int) -> torch.Tensor:
        """FiLM-modulate ``features`` with ``context`` and apply the head."""
        gamma, beta = self.film(context).chunk(2, dim=-1)
        return self.head_forward({}, features * (1 + gamma) + beta, ways)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Gradient steps on the zero-initialised context; the backbone runs once per set."""
        steps = self.inner_steps if self.training else self.eval_inner_steps
        create_graph = self.training and not self.first_order
        features = self.backbone(support_x)
        context = torch.zeros(self.num_context, device=features.device, dtype=features.dtype, requires_grad=True)
        with torch.enable_grad():
            for _ in range(steps):
                loss = self.loss(self.conditioned(features, context, ways), support_y)
                (grad,) = torch.autograd.grad(loss, context, create_graph=create_graph)
                context = context - self.inner_lr * (grad if create_graph else grad.detach())
        if not self.training:
            context = context.detach()
        return lambda query_x: self.conditioned(self.backbone(query_x), context, ways)
