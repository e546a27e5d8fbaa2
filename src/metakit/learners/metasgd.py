"""Meta-SGD (Li, Zhou, Chen & Li, 2017).

MAML whose inner learning rate is itself meta-learned, one rate per parameter entry (a tensor of
the parameter's shape), so the inner step learns both a direction and a size per weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metakit.learners import register_learner
from metakit.learners.base import TaskInfo
from metakit.learners.gradient import GradientLearner


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


@register_learner("metasgd")
class MetaSGD(GradientLearner):
    """Meta-SGD: per-parameter learned inner learning rates, initialised at ``inner_lr``."""

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
        super().__init__(backbone, task, inner_lr, inner_steps, eval_inner_steps, first_order, adapt)
        own = dict(self.named_parameters())
        self.inner_lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(own[n], self.inner_lr)) for n in self.adapted}
        )

    def step_sizes(self, step: int) -> dict[str, torch.Tensor | float]:
        """The learned per-entry rates (the same at every step)."""
        return {n: self.inner_lrs[_key(n)] for n in self.adapted}
