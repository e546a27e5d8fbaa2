"""ANIL — Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML where only the head adapts in the inner loop; the backbone is meta-learned in the outer
loop only. Since the backbone does not change during adaptation, support and query features are
computed once per task and the inner loop runs on the head alone, which makes ANIL much cheaper
than MAML with the same outer meta-gradient structure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metakit.learners.base import Predictor, TaskInfo
from metakit.learners.gradient import GradientLearner
from metakit.learners.registry import register_learner


@register_learner("anil")
class ANIL(GradientLearner):
    """ANIL: adapt the linear head on backbone features; the backbone is shared across tasks."""

    fixed_options = ("adapt",)

    def __init__(self, backbone: nn.Module, task: TaskInfo, **options: Any) -> None:
        super().__init__(backbone, task, adapt=["head"], **options)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Inner loop on the head over support features computed once."""
        features = self.backbone(support_x)
        params = self.run_inner(
            self.start_params(support_x, support_y, ways, features), lambda head, _step: self.loss(self.head_forward(head, features, ways), support_y)
        )
        return lambda query_x: self.head_forward(params, self.backbone(query_x), ways)
