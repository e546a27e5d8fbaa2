"""Fine-tuning baseline ("Baseline", Chen et al., ICLR 2019).

Meta-training is ordinary supervised pretraining: a linear classifier over *all* training classes
on top of the backbone, fed with the images of each meta-batch under their split-level labels.
Adapting to a new task freezes the backbone and trains a fresh linear head on the support
features. It is the "no meta-learning" reference every meta-learner should beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import Episode, as_batch
from metakit.errors import MetakitError
from metakit.learners import register_learner
from metakit.learners.base import Learner, Predictor, TaskInfo


@register_learner("finetune")
class FineTune(Learner):
    """Pretrain a global classifier; adapt by training a linear head on frozen support features.

    Args:
        backbone: feature extractor.
        task: task description (``num_classes`` sizes the pretraining classifier).
        head_steps: full-batch optimisation steps for the new head.
        head_lr: Adam learning rate for the new head.
        head_weight_decay: L2 penalty on the new head's weights.
        normalize: L2-normalise features before the head (stabilises 1-shot heads).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        head_steps: int = 100,
        head_lr: float = 0.01,
        head_weight_decay: float = 0.001,
        normalize: bool = True,
    ) -> None:
        super().__init__(backbone, task)
        if not task.num_classes:
            raise MetakitError("finetune needs the number of training classes to pretrain its classifier.")
        if head_steps < 1 or head_lr <= 0:
            raise MetakitError(f"finetune needs head_steps >= 1 and head_lr > 0, got {head_steps}, {head_lr}.")
        self.classifier = nn.Linear(backbone.out_dim, task.num_classes)
        self.head_steps, self.head_lr = head_steps, head_lr
        self.head_weight_decay, self.normalize = head_weight_decay, normalize

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return F.normalize(f, dim=-1) if self.normalize else f

    def meta_loss(self, batch: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the global classifier on every image of the meta-batch."""
        if batch.classes is None:
            raise MetakitError("finetune needs classification episodes with class indices.")
        batch = as_batch(batch)
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        y = torch.cat([batch.classes.gather(1, batch.support_y).flatten(), batch.classes.gather(1, batch.query_y).flatten()])
        logits = self.classifier(self._features(x))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "accuracy": self.score(logits.detach(), y)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Train a zero-initialised linear head (deterministic) on frozen support features."""
        with torch.no_grad():
            features = self._features(support_x)
        head = nn.Linear(features.shape[-1], ways).to(features)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        opt = torch.optim.Adam(head.parameters(), lr=self.head_lr, weight_decay=self.head_weight_decay)
        with torch.enable_grad():
            for _ in range(self.head_steps):
                opt.zero_grad()
                F.cross_entropy(head(features), support_y).backward()
                opt.step()
        head.requires_grad_(False)
        return lambda query_x: head(self._features(query_x))
