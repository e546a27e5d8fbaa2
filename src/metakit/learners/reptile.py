"""Reptile (Nichol, Achiam & Schulman, 2018).

For each task, run plain SGD on its support set from the current initialisation θ to get φ;
move θ towards the tasks' solutions: θ ← θ + ε · mean_i(φ_i − θ). The update is not the gradient
of a loss, so :meth:`Reptile.meta_step` writes ``θ − mean(φ)`` into ``.grad``: an outer SGD
optimiser with learning rate ε (``train.optimizer: sgd``, ``train.momentum: 0``) then performs
exactly the Reptile update; Adam on the same pseudo-gradient is the common variant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metakit.episodes import MetaBatch
from metakit.learners.base import TaskInfo, check_finite
from metakit.learners.gradient import GradientLearner
from metakit.learners.registry import register_learner


@register_learner("reptile")
class Reptile(GradientLearner):
    """Reptile with an SGD inner loop of ``inner_steps`` full-batch steps on the support set."""

    #: The meta-update uses the adapted weights only, never gradients through the inner loop, and
    #: moves the meta-parameters toward them, so the head must start at the meta-learned one.
    fixed_options = ("first_order", "head_init")

    def __init__(self, backbone: nn.Module, task: TaskInfo, inner_lr: float = 0.1, inner_steps: int = 5,
                 **options: Any) -> None:
        super().__init__(backbone, task, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True, **options)

    def meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """Pseudo-gradient ``θ − mean_i φ_i`` into ``.grad``; metrics are the adapted query scores."""
        theta = self.parameters_dict()
        delta = {n: torch.zeros_like(p) for n, p in theta.items()}
        losses, scores = [], []
        for episode in batch.tasks():
            phi = self.inner_loop(episode.support_x, episode.support_y, episode.ways, self.inner_steps)[-1]
            with torch.no_grad():
                out = self.forward_with(phi, episode.query_x, episode.ways)
                losses.append(self.loss(out, episode.query_y))
                scores.append(self.score(out, episode.query_y))
                for n in theta:
                    delta[n] += theta[n].detach() - phi[n].detach()
        loss = torch.stack(losses).mean()
        check_finite(loss)
        for n, p in theta.items():
            p.grad = delta[n] / batch.num_tasks
        return {"loss": loss.item(), self.metric: sum(scores) / len(scores)}
