"""Fine-tuning baselines: Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look
at Few-shot Classification", ICLR 2019), with optional transductive fine-tuning (Dhillon,
Chaudhari, Ravichandran & Soatto, "A Baseline for Few-Shot Image Classification", ICLR 2020).

Meta-training is ordinary supervised pretraining: a classifier over *all* training classes on top
of the backbone, fed with the images of each meta-batch under their split-level labels.
Adapting to a new task freezes the backbone and trains a fresh head on the support features. It
is the "no meta-learning" reference every meta-learner should beat.

- ``head="linear"`` (Baseline, learner ``finetune``): linear classifiers; the new head starts at
  zero.
- ``head="cosine"`` (Baseline++, learner ``baselinepp``): both classifiers score
  ``scale * cos(feature, w_c)``, which Chen et al. found reduces intra-class variation. The scale
  is fixed, by default their rule: 2 for heads of at most 200 classes, 10 above. The new head is
  initialised at the normalised class means of the support features (weight imprinting), which
  keeps adaptation deterministic (a zero cosine weight has no direction) and starts from the
  cosine nearest-prototype classifier.
- ``transductive=True`` (Dhillon et al.): while fitting the head, the mean entropy of its
  predictions on the task's *query* inputs is added to the support cross-entropy (weight
  ``entropy_weight``), pushing the decision boundaries away from the queries. The head needs the
  queries, which :meth:`~metakit.learners.base.Learner.adapt` does not receive, so the predictor
  fits the head lazily on its first call, with that call's query batch, and reuses the fitted
  head for later calls. Unlike Dhillon et al., who fine-tune the whole network, only the head is
  fitted (the backbone stays frozen, as in the inductive baselines).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, prototypes
from metakit.learners.registry import register_learner


def global_batch(batch: MetaBatch, learner: str = "finetune") -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a classification meta-batch with its split-level class label.

    Pretraining-style learners train a classifier over all training classes on these; ``learner``
    names the caller in the error raised when the episodes have no class indices.
    """
    if batch.classes is None:
        raise MetakitError(f"{learner} needs classification episodes with class indices.")
    batch = as_batch(batch)
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    y = torch.cat([batch.classes.gather(1, batch.support_y).flatten(), batch.classes.gather(1, batch.query_y).flatten()])
    return x, y


def chen_scale(classes: int) -> float:
    """Baseline++'s fixed cosine scale: 2 for at most 200 classes, 10 for more (Chen et al.'s code)."""
    return 2.0 if classes <= 200 else 10.0


class CosineClassifier(nn.Module):
    """Baseline++ head: ``logits = scale * cos(features, w_c)``, bounded by ``scale`` in absolute value.

    Args:
        in_dim: feature size.
        classes: number of outputs.
        scale: fixed multiplier of the cosine similarities.
    """

    def __init__(self, in_dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities of ``features`` ``[n, d]`` to each class weight: ``[n, classes]``."""
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T


@register_learner("finetune")
class FineTune(Learner):
    """Pretrain a global classifier; adapt by training a new head on frozen support features.

    Args:
        backbone: feature extractor.
        task: task description (``num_classes`` sizes the pretraining classifier).
        head_steps: full-batch optimisation steps for the new head.
        head_lr: Adam learning rate for the new head.
        head_weight_decay: L2 penalty on the new head's weights.
        normalize: L2-normalise features before the head (stabilises 1-shot heads).
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++), for both the pretraining
            classifier and the new head.
        scale: cosine head scale; ``None`` = Chen et al.'s rule by head size (:func:`chen_scale`).
        transductive: fit the new head with the query-entropy regulariser (Dhillon et al.).
        entropy_weight: weight of the query entropy in the transductive objective.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        head_steps: int = 100,
        head_lr: float = 0.01,
        head_weight_decay: float = 0.001,
        normalize: bool = True,
        head: str = "linear",
        scale: float | None = None,
        transductive: bool = False,
        entropy_weight: float = 1.0,
    ) -> None:
        super().__init__(backbone, task)
        name = getattr(type(self), "registry_name", "finetune")
        if not task.num_classes:
            raise MetakitError(f"{name} needs the number of training classes to pretrain its classifier.")
        if head_steps < 1 or head_lr <= 0:
            raise MetakitError(f"{name} needs head_steps >= 1 and head_lr > 0, got {head_steps}, {head_lr}.")
        if head not in ("linear", "cosine"):
            raise MetakitError(f"{name} head must be 'linear' or 'cosine', got {head!r}.")
        if scale is not None and scale <= 0:
            raise MetakitError(f"{name} needs scale > 0, got {scale}.")
        if entropy_weight < 0:
            raise MetakitError(f"{name} needs entropy_weight >= 0, got {entropy_weight}.")
        self.head_type, self.scale = head, scale
        self.transductive, self.entropy_weight = transductive, entropy_weight
        self.classifier = self._make_head(backbone.out_dim, task.num_classes)
        self.head_steps, self.head_lr = head_steps, head_lr
        self.head_weight_decay, self.normalize = head_weight_decay, normalize

    def _make_head(self, in_dim: int, classes: int) -> nn.Module:
        if self.head_type == "cosine":
            return CosineClassifier(in_dim, classes, self.scale or chen_scale(classes))
        return nn.Linear(in_dim, classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return F.normalize(f, dim=-1) if self.normalize else f

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the global classifier on every image of the meta-batch."""
        x, y = global_batch(batch, getattr(type(self), "registry_name", "finetune"))
        logits = self.classifier(self._features(x))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "accuracy": self.score(logits.detach(), y)}

    def new_head(self, features: torch.Tensor, support_y: torch.Tensor, ways: int) -> nn.Module:
        """A deterministic initial head: zero linear, or cosine at the normalised class means."""
        head = self._make_head(features.shape[-1], ways).to(features)
        with torch.no_grad():
            if isinstance(head, CosineClassifier):
                head.weight.copy_(prototypes(F.normalize(features, dim=-1), support_y, ways))
            else:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        return head

    def fit_head(
        self, head: nn.Module, features: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor | None = None
    ) -> None:
        """Full-batch Adam on the support cross-entropy (+ the query entropy when ``query`` is given)."""
        opt = torch.optim.Adam(head.parameters(), lr=self.head_lr, weight_decay=self.head_weight_decay)
        with torch.enable_grad():
            for _ in range(self.head_steps):
                opt.zero_grad()
                loss = F.cross_entropy(head(features), support_y)
                if query is not None:
                    log_p = head(query).log_softmax(-1)
                    loss = loss - self.entropy_weight * (log_p.exp() * log_p).sum(-1).mean()
                loss.backward()
                opt.step()
        head.requires_grad_(False)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Train a new head (deterministic) on frozen support features.

        Transductive: the head is fitted on the predictor's first call, with its query batch.
        """
        with torch.no_grad():
            features = self._features(support_x)
        head = self.new_head(features, support_y, ways)
        if not self.transductive:
            self.fit_head(head, features, support_y)
            return lambda query_x: head(self._features(query_x))
        fitted = False

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            nonlocal fitted
            query = self._features(query_x)
            if not fitted:
                self.fit_head(head, features, support_y, query.detach())
                fitted = True
            return head(query)

        return predict


@register_learner("baselinepp")
class BaselinePlusPlus(FineTune):
    """Baseline++: :class:`FineTune` with cosine classifiers by default (same options)."""

    def __init__(self, backbone: nn.Module, task: TaskInfo, head: str = "cosine", **options: Any) -> None:
        super().__init__(backbone, task, head=head, **options)
