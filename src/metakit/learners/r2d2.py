"""Differentiable closed-form ridge-regression heads: R2D2 and MetaOptNet-RR.

- **R2D2** (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form
  solvers", ICLR 2019): adapting to a task solves ridge regression from the support features
  ``X`` ``[n, d]`` to one-hot targets ``Y`` ``[n, N]``; the solution is differentiable, so the
  backbone is meta-trained through it. The outputs are rescaled by a learned ``alpha`` and shifted
  by a learned ``beta`` (``alpha * X_q W + beta``) before the cross-entropy, and the regulariser
  ``lambda`` is learned too.
- **MetaOptNet-RR** (Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable Convex
  Optimization", CVPR 2019), the ridge-regression variant of MetaOptNet's heads: the same solver
  with a fixed ``lambda = 50`` and a learned scale on the logits, no bias.

Few-shot support sets have far fewer examples than feature dimensions (``n = N*K`` vs ``d`` in
the thousands), so both solve in the ``n x n`` space with the Woodbury identity:

    W = (X^T X + lambda I_d)^-1 X^T Y = X^T (X X^T + lambda I_n)^-1 Y,

one ``n x n`` linear system per task. ``lambda`` is parametrised by its logarithm so that
gradient steps can never make it non-positive (the system would become singular).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks
from metakit.learners.registry import register_learner


def ridge_solution(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Ridge-regression weights ``(X^T X + lam I)^-1 X^T Y`` via Woodbury, in the ``n x n`` space.

    Args:
        x: features ``[..., n, d]``.
        y: targets ``[..., n, c]``.
        lam: regulariser (> 0), a float or a scalar tensor.

    Returns:
        weights ``[..., d, c]``; differentiable w.r.t. all three inputs.
    """
    n = x.shape[-2]
    gram = x @ x.transpose(-1, -2)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    return x.transpose(-1, -2) @ torch.linalg.solve(gram + lam * eye, y)


@register_learner("r2d2")
class R2D2(Learner):
    """R2D2: a closed-form ridge-regression head on backbone features.

    Args:
        backbone: feature extractor.
        task: task description.
        lam: initial (or fixed) ridge regulariser ``lambda`` (> 0).
        learn_lambda: meta-learn ``lambda`` (through ``log lambda``).
        scale: initial (or fixed) output scale ``alpha``.
        learn_scale: meta-learn ``alpha``.
        bias: add a learned output bias ``beta`` (initialised at 0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        lam: float = 1.0,
        learn_lambda: bool = True,
        scale: float = 1.0,
        learn_scale: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__(backbone, task)
        if lam <= 0:
            raise MetakitError(f"{type(self).__name__.lower()} needs lam > 0, got {lam}.")
        log_lam = torch.tensor(math.log(lam))
        if learn_lambda:
            self.log_lam = nn.Parameter(log_lam)
        else:
            self.register_buffer("log_lam", log_lam)
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.zeros(())) if bias else None

    @property
    def lam(self) -> torch.Tensor:
        """The ridge regulariser ``lambda = exp(log_lambda)``, always positive."""
        return self.log_lam.exp()

    def head(self, support: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
        """Ridge weights ``[..., d, ways]`` from support features ``[..., n, d]`` and labels ``[..., n]``."""
        targets = F.one_hot(support_y, ways).to(support.dtype)
        return ridge_solution(support, targets, self.lam)

    def logits(self, query: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``alpha * X_q W (+ beta)`` for query features ``[..., q, d]``."""
        out = self.scale * (query @ weights)
        return out + self.bias if self.bias is not None else out

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Solve the ridge regression on the support features; the predictor applies it."""
        weights = self.head(self.backbone(support_x), support_y, ways)
        return lambda query_x: self.logits(self.backbone(query_x), weights)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """One backbone pass for the whole meta-batch, one batched linear solve for its tasks."""
        batch = as_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        return self.query_loss(self.logits(fq, self.head(fs, batch.support_y, batch.ways)), batch)


@register_learner("metaoptnet")
class MetaOptNetRR(R2D2):
    """MetaOptNet-RR: the ridge-regression head with MetaOptNet's defaults.

    Same options as :class:`R2D2`; the defaults are MetaOptNet's: fixed ``lambda = 50``, a learned
    scale on the logits (initialised at 1), no bias.
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo, lam: float = 50.0, learn_lambda: bool = False,
                 bias: bool = False, **options: Any) -> None:
        super().__init__(backbone, task, lam=lam, learn_lambda=learn_lambda, bias=bias, **options)
