"""Logistic regression on the support set: the no-meta-training linear baseline.

For each task a multinomial logistic regression is fitted on the support features alone, with an
L2 penalty, as in scikit-learn's ``LogisticRegression(C=...)`` (the "linear probe" baseline of
Tian et al., "Rethinking Few-Shot Image Classification", ECCV 2020). The objective is convex and
is minimised by L-BFGS in float64 from zero weights, so the fit is deterministic.
Nothing is meta-trained: on fixed features (``backbone: identity`` over frozen sentence
embeddings) it measures what a well-tuned linear classifier on the features alone gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo
from metakit.learners.registry import register_learner


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # The problem is tiny ([<=100, d] features): extra intra-op threads only add synchronisation,
    # which was measured to make each fit 10-50x slower on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, classes: int, C: float = 1.0, max_iter: int = 100, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[classes, d]`` and bias ``[classes]`` minimising scikit-learn's objective.

    ``0.5 * ||W||^2 + C * sum_i CE(x_i, y_i)`` (the bias is not penalised), divided by ``C * n``
    so the scale does not depend on the support size. L-BFGS with a strong-Wolfe line search on
    the closed-form gradient, until the largest gradient entry is below ``tol``.
    """
    x = features.detach().double()
    n, d = x.shape
    onehot = F.one_hot(labels.detach(), classes).double()
    w = torch.zeros(classes, d, dtype=torch.float64)
    b = torch.zeros(classes, dtype=torch.float64)
    lam = 1.0 / (C * n)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        # The gradient in closed form: (softmax - onehot)^T x / n + lam * W; no autograd graph.
        log_p = (x @ w.T + b).log_softmax(-1)
        g = (log_p.exp() - onehot) / n
        w.grad = g.T @ x + lam * w
        b.grad = g.sum(0)
        return -(onehot * log_p).sum() / n + 0.5 * lam * (w * w).sum()

    with torch.no_grad(), _one_thread():
        opt.step(closure)
    return w.to(features.dtype), b.to(features.dtype)


@register_learner("logreg")
class SupportLogisticRegression(Learner):
    """L2-regularised multinomial logistic regression fitted on each task's support features.

    Args:
        backbone: feature extractor, used as built and never trained (``identity`` for fixed
            embeddings).
        task: task description.
        C: inverse regularisation strength (scikit-learn's ``C``; larger = weaker penalty).
        max_iter: L-BFGS iterations per task.
        normalize: L2-normalise features first (all-MiniLM-L6-v2 embeddings already are).
    """

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, C: float = 1.0, max_iter: int = 100, normalize: bool = False
    ) -> None:
        super().__init__(backbone, task)
        if not C > 0 or max_iter < 1:
            raise MetakitError(f"logreg needs C > 0 and max_iter >= 1, got C={C}, max_iter={max_iter}.")
        self.C, self.max_iter, self.normalize = float(C), int(max_iter), normalize
        # No meta-training: the trainer sees no trainable parameter and only validates.
        self.backbone.requires_grad_(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return F.normalize(f, dim=-1) if self.normalize else f

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Fit the regression on the support features; the predictor returns its logits."""
        w, b = fit_logistic_regression(self._features(support_x), support_y, ways, self.C, self.max_iter)
        return lambda query_x: self._features(query_x) @ w.T + b
