"""The transfer baseline: a supervised encoder, then a new head fine-tuned on each support set (``seg-finetune``).

Meta-training is ordinary supervised segmentation over the training classes: a 1x1-conv head
labels every pixel with one of the training classes or background (each episode's masks give the
pixels of its class; everything else counts as background). At test time that head is dropped:
a fresh two-class 1x1-conv head on the frozen encoder features starts at the support set's
masked-average prototypes and takes ``steps`` Adam steps on the support pixels. This is the
"fine-tune a segmentation head on the support set" baseline: no episodic learning, only transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch
from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner, masked_average

__all__ = ["FineTuneHead"]


class FineTuneHead(MaskLearner):
    """Supervised encoder + per-task head fine-tuning (``learner: seg-finetune``).

    Args:
        backbone: a fully-convolutional encoder with ``channels`` (``seg-fcn``).
        task: a 1-way segmentation task; ``task.num_classes`` sizes the training head.
        steps: Adam steps on the support pixels at adaptation.
        lr: their learning rate.
        fg_weight: the weight of foreground pixels in both losses (see :attr:`MaskLearner.fg_weight`).
    """

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, steps: int = 50, lr: float = 0.05, fg_weight: float = 5.0
    ) -> None:
        super().__init__(backbone, task)
        if steps < 0 or lr <= 0 or fg_weight <= 0:
            raise MetakitError(f"seg-finetune needs steps >= 0, lr > 0 and fg_weight > 0, got {steps}, {lr} and {fg_weight}.")
        self.fg_weight = float(fg_weight)
        if not hasattr(backbone, "channels") or not task.num_classes:
            raise MetakitError("seg-finetune needs a fully-convolutional backbone such as seg-fcn and a class count.")
        self.steps, self.lr = int(steps), float(lr)
        # Index 0 is background; training class c is c + 1.
        self.classifier = nn.Conv2d(backbone.channels, task.num_classes + 1, 1)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Pixel cross-entropy over background + the training classes, on support and query images."""
        if batch.classes is None:
            raise MetakitError("seg-finetune trains on episodes that record their class (metakit's segmentation episodes).")
        losses, scores = [], []
        for ep in batch.tasks():
            images = torch.cat([ep.support_x, ep.query_x])
            masks = torch.cat([ep.support_y, ep.query_y])
            logits = F.interpolate(self.classifier(self.backbone(images)), size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
            target = masks.long() * (int(ep.classes.reshape(-1)[0]) + 1)
            weight = logits.new_full((logits.shape[1],), self.fg_weight)
            weight[0] = 1.0
            losses.append(F.cross_entropy(logits, target, weight=weight))
            with torch.no_grad():
                fg = logits.softmax(1).gather(1, target.clamp_min(1)[:, None])[:, 0]  # probability of this class
                scores.append(self.score(fg[len(ep.support_x):], ep.query_y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), self.metric: sum(scores) / len(scores)}

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> nn.Conv2d:
        """A two-class head fitted to the support pixels on the frozen encoder's features."""
        with torch.no_grad():
            feats = self.backbone(support_x)
        small = F.interpolate(support_y[:, None], size=feats.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        head = nn.Conv2d(feats.shape[1], 2, 1).to(feats.device)
        with torch.no_grad():
            # Start at the prototypes (cosine-like), so 0 steps is already prototype matching.
            protos = torch.stack([masked_average(feats, 1 - small), masked_average(feats, small)])
            head.weight.copy_(F.normalize(protos, dim=1)[:, :, None, None] * 10)
            head.bias.zero_()
        target = (small > 0.5).long()
        with torch.enable_grad():
            opt = torch.optim.Adam(head.parameters(), lr=self.lr)
            for _ in range(self.steps):
                opt.zero_grad()
                self.pixel_loss(head(feats), target).backward()
                opt.step()
        head.requires_grad_(False)
        return head

    def decode(self, state: nn.Conv2d, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits from the fine-tuned head on the encoder's features, upsampled to the images."""
        return F.interpolate(state(self.backbone(query_x)), size=query_x.shape[-2:], mode="bilinear", align_corners=False)
