"""MAML (Finn, Abbeel & Levine, ICML 2017) and first-order MAML.

Learn an initialisation from which a few gradient steps on a task's support set give a good model
for that task's query set. The meta-gradient differentiates through the inner steps (second
order); first-order MAML drops those second derivatives and uses the query gradient at the adapted
parameters. All the machinery is in :mod:`metakit.learners.gradient`: this file only names it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metakit.learners.base import TaskInfo
from metakit.learners.gradient import GradientLearner
from metakit.learners.registry import register_learner


@register_learner("maml")
class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning; ``first_order=True`` gives first-order MAML."""


@register_learner("fomaml")
class FOMAML(GradientLearner):
    """First-order MAML: the same inner loop, no second-order terms in the meta-gradient."""

    fixed_options = ("first_order",)

    def __init__(self, backbone: nn.Module, task: TaskInfo, **options: Any) -> None:
        super().__init__(backbone, task, first_order=True, **options)
