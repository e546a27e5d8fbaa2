"""Meta-SGD (Li, Zhou, Chen & Li, 2017).

MAML whose inner learning rate is itself meta-learned, one rate per parameter entry (a tensor of
the parameter's shape), so the inner step learns both a direction and a size per weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metakit import inner
from metakit.learners.base import TaskInfo
from metakit.learners.gradient import GradientLearner
from metakit.learners.registry import register_learner


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


@register_learner("metasgd")
class MetaSGD(GradientLearner):
    """Meta-SGD: per-parameter learned inner learning rates, initialised at ``inner_lr``."""

    def __init__(self, backbone: nn.Module, task: TaskInfo, **options: Any) -> None:
        super().__init__(backbone, task, **options)
        own = dict(self.named_parameters())
        self.inner_lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(own[n], self.inner_lr)) for n in self.adapted}
        )

    def step_sizes(self, step: int) -> inner.StepSize:
        """The learned per-entry rates (the same at every step)."""
        return {n: self.inner_lrs[_key(n)] for n in self.adapted}
