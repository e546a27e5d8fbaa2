"""ANIL — Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML where only the head adapts in the inner loop; the backbone is meta-learned in the outer
loop only. Since the backbone does not change during adaptation, support and query features are
computed once per task and the inner loop runs on the head alone, which makes ANIL much cheaper
than MAML with the same outer meta-gradient structure.
"""

from __future__ import annotations

import torch
from torch import nn

from metakit.learners import register_learner
from metakit.learners.base import Predictor, TaskInfo
from metakit.learners.gradient import GradientLearner


@register_learner("anil")
class ANIL(GradientLearner):
    """ANIL: adapt the linear head on backbone features; the backbone is shared across tasks."""

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
    ) -> None:
        super().__init__(backbone, task, inner_lr, inner_steps, eval_inner_steps, first_order, adapt=["head"])

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Inner loop on the head over support features computed once."""
        steps = self.inner_steps if self.training else self.eval_inner_steps
        create_graph = self.training and not self.first_order
        features = self.backbone(support_x)
        params = self.parameters_dict()
        with torch.enable_grad():
            for step in range(steps):
                loss = self.loss(self.head_forward(params, features, ways), support_y)
                params = self.inner_update(params, loss, step, create_graph)
        if not self.training:
            params = {k: v.detach() for k, v in params.items()}
        return lambda query_x: self.head_forward(params, self.backbone(query_x), ways)
