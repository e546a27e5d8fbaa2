"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

MAML with the paper's fixes for unstable, expensive training:

- **Multi-step loss (MSL)**: the meta-loss is a weighted sum of the query losses after *every*
  inner step; the weights start uniform and anneal towards the last step over ``msl_steps``
  meta-steps, so early training gets gradient signal from every step.
- **Per-layer per-step learning rates (LSLR)**: one learned inner learning rate per parameter
  tensor and inner step.
- **Per-step BatchNorm weights and biases (BNWB)**: each inner step has its own BatchNorm affine
  parameters, meta-learned in the outer loop and not adapted in the inner loop. Normalisation
  uses each step's own batch statistics (the transductive setting MAML++'s reference code also
  normalises with), so statistics are per step as well.
- **Derivative-order annealing (DA)**: first-order meta-gradients for the first
  ``first_order_until`` meta-steps, second-order afterwards.

The meta-step counter is a buffer, saved in checkpoints, so annealing resumes exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metakit import inner
from metakit.episodes import MetaBatch
from metakit.errors import MetakitError
from metakit.learners.base import Predictor, TaskInfo
from metakit.learners.gradient import GradientLearner, Params
from metakit.learners.registry import register_learner


def _key(name: str) -> str:
    return name.replace(".", "__")


@register_learner("mamlpp")
class MAMLPlusPlus(GradientLearner):
    """MAML++ with MSL, LSLR, per-step BatchNorm weights and derivative-order annealing.

    Args:
        inner_lr: initial value of every learned inner learning rate.
        inner_steps: inner steps (the paper uses 5); the same number is used at evaluation.
        msl_steps: meta-steps over which the multi-step loss anneals to the last step (0 = off).
        first_order_until: meta-steps trained first-order before switching to second order.
    """

    #: One step count (the per-step weights exist for these steps only); the order is annealed.
    fixed_options = ("eval_inner_steps", "first_order")

    def __init__(self, backbone: nn.Module, task: TaskInfo, inner_lr: float = 0.1, inner_steps: int = 5,
                 msl_steps: int = 1000, first_order_until: int = 0, **options: Any) -> None:
        if inner_steps < 1:
            raise MetakitError(f"mamlpp needs inner_steps >= 1, got {inner_steps}.")
        super().__init__(backbone, task, inner_lr=inner_lr, inner_steps=inner_steps, **options)
        self.msl_steps, self.first_order_until = msl_steps, first_order_until
        norms = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        self.bn_names = [
            f"backbone.{mod_name}.{p}"
            for mod_name, m in self.backbone.named_modules() if m in norms for p in ("weight", "bias")
        ]
        own = dict(self.named_parameters())
        # BNWB: step s uses bn_per_step[s]; these are outer-loop parameters only.
        self.bn_per_step = nn.ModuleList(
            nn.ParameterDict({_key(n): nn.Parameter(own[n].detach().clone()) for n in self.bn_names})
            for _ in range(inner_steps + 1)
        )
        for n in self.bn_names:
            own[n].requires_grad_(False)  # replaced by the per-step copies
        self.adapted = [n for n in self.adapted if n not in self.bn_names]
        # LSLR: one learned rate per parameter tensor and step.
        self.inner_lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full((inner_steps,), self.inner_lr)) for n in self.adapted}
        )
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))

    def step_sizes(self, step: int) -> inner.StepSize:
        """The learned rate of each parameter tensor at inner step ``step``."""
        return {n: self.inner_lrs[_key(n)][step] for n in self.adapted}

    def with_step_norms(self, params: Params, step: int) -> Params:
        """``params`` plus the BatchNorm weights and biases of inner step ``step``."""
        norms = self.bn_per_step[step]
        return {**params, **{n: norms[_key(n)] for n in self.bn_names}}

    def loss_weights(self) -> torch.Tensor:
        """Multi-step loss weights for the current meta-step (uniform -> last step only)."""
        n = self.inner_steps
        if self.msl_steps <= 0 or n == 1:
            return torch.eye(n)[-1]
        decay = 1.0 / n / self.msl_steps
        floor = 0.03 / n
        progress = float(self.meta_steps)
        weights = torch.full((n,), max(1.0 / n - progress * decay, floor))
        weights[-1] = min(1.0 / n + progress * (n - 1) * decay, 1.0 - (n - 1) * floor)
        return weights

    def second_order(self) -> bool:
        """Whether this meta-step differentiates through the inner gradients."""
        return self.training and int(self.meta_steps) >= self.first_order_until

    def trajectory(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> list[Params]:
        """Adapted parameters after each inner step, with their step's BatchNorm weights (``bn_per_step[s]`` after ``s`` steps)."""
        support_loss = self.support_loss(support_x, support_y, ways)
        history = inner.trajectory(
            self.start_params(support_x, support_y, ways), lambda params, step: support_loss(self.with_step_norms(params, step), step),
            self.inner_steps, self.step_sizes, first_order=not self.second_order(),
        )
        return [self.with_step_norms(params, step) for step, params in enumerate(history) if step > 0]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """All inner steps; predict with the final parameters."""
        params = self.trajectory(support_x, support_y, ways)[-1]
        if not self.training:
            params = {k: v.detach() for k, v in params.items()}
        return lambda query_x: self.forward_with(params, query_x, ways)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted query losses after every inner step, averaged over tasks."""
        weights = self.loss_weights()
        losses, scores = [], []
        for episode in batch.tasks():
            steps = self.trajectory(episode.support_x, episode.support_y, episode.ways)
            outs = [self.forward_with(p, episode.query_x, episode.ways) for p in steps]
            losses.append(sum(w * self.loss(o, episode.query_y) for w, o in zip(weights, outs)))
            scores.append(self.score(outs[-1].detach(), episode.query_y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), self.metric: sum(scores) / len(scores)}

    def meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """The MSL meta-gradient (one backward through :meth:`meta_loss`); advances the annealing counter."""
        metrics = super().meta_step(batch)
        self.meta_steps += 1
        return metrics
