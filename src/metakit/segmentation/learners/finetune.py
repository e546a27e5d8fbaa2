"""The transfer baseline: a supervised encoder, then a new head fine-tuned on each support set (``seg-finetune``).

Meta-training is ordinary supervised segmentation over the training classes: a 1x1-conv head
labels every pixel with one of the training classes or background, and every labelled object of
a training scene counts (``train_labels = "all"``), not only the episode's class. At test time
that head is dropped: a fresh two-class cosine head on the frozen encoder features starts at the
support set's masked-average prototypes and takes ``steps`` Adam steps on the support pixels;
then, with ``encoder_steps``, the head and the encoder's last layer are fine-tuned together. This
is the "fine-tune a segmentation head on the support set" baseline: no episodic learning, only
transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metakit.episodes import MetaBatch
from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner, masked_average

__all__ = ["FineTuneHead"]


class FineTuneHead(MaskLearner):
    """Supervised encoder + per-task head fine-tuning (``learner: seg-finetune``).

    Args:
        backbone: a fully-convolutional encoder with ``channels`` (``seg-fcn``).
        task: a segmentation task; ``task.num_classes`` sizes the training head.
        steps: Adam steps on the support pixels at adaptation.
        lr: their learning rate.
        fg_weight: the weight of foreground pixels in both losses (see :attr:`MaskLearner.fg_weight`).
        scale: the new head is a cosine classifier (the features are L2-normalised per location, so
            one learning rate suits every encoder); its cosines are multiplied by this.
        support_fg_weight: the weight of foreground pixels in the support loss; ``None`` weighs
            the two classes 1:1 (inverse frequency: about 50 for a character on 2% of a scene).
        encoder_steps: Adam steps after ``steps`` that fine-tune the head and the encoder's last
            convolution (with the layers after it, such as its norm) together; 0 keeps the encoder frozen.
        encoder_lr: the learning rate of those encoder weights (the head keeps ``lr``).
    """

    train_labels = "all"

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, steps: int = 50, lr: float = 0.01, fg_weight: float = 5.0,
        scale: float = 20.0, support_fg_weight: float | None = None, encoder_steps: int = 0, encoder_lr: float = 1e-3,
    ) -> None:
        super().__init__(backbone, task)
        if steps < 0 or lr <= 0 or fg_weight <= 0 or scale <= 0 or encoder_steps < 0 or encoder_lr <= 0:
            raise MetakitError(
                f"seg-finetune needs steps >= 0, lr > 0, fg_weight > 0, scale > 0, encoder_steps >= 0 and encoder_lr > 0, "
                f"got {steps}, {lr}, {fg_weight}, {scale}, {encoder_steps} and {encoder_lr}."
            )
        self.scale = float(scale)
        self.fg_weight = float(fg_weight)
        if not hasattr(backbone, "channels") or not task.num_classes:
            raise MetakitError("seg-finetune needs a fully-convolutional backbone such as seg-fcn and a class count.")
        self.steps, self.lr = int(steps), float(lr)
        if support_fg_weight is not None and support_fg_weight <= 0:
            raise MetakitError(f"seg-finetune needs support_fg_weight > 0 (or null: balanced), got {support_fg_weight}.")
        self.support_fg_weight = None if support_fg_weight is None else float(support_fg_weight)
        self.encoder_steps, self.encoder_lr = int(encoder_steps), float(encoder_lr)
        self._tail = _last_layer(backbone)
        # Index 0 is background; training class c is c + 1.
        self.classifier = nn.Conv2d(backbone.channels, task.num_classes + 1, 1)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy over background + the training classes at every feature location of support and query images.

        The label maps mark every object with ``1 +`` its training class (``train_labels = "all"``):
        with only the episode's class marked, a character would be background in one episode
        and foreground in the next, and the encoder would learn to find characters, not to tell
        them apart (measured: its head then marked ~70% of the other characters' pixels).
        """
        images = torch.cat([torch.cat([ep.support_x, ep.query_x]) for ep in batch.tasks()])
        labels = torch.cat([torch.cat([ep.support_y, ep.query_y]) for ep in batch.tasks()])
        # One encoder pass for the whole batch, scored at the feature grid: a cell is the class's
        # where any of its pixels is (max-pooling keeps strokes a pixel wide), 4x cheaper than
        # upsampling logits over every training class.
        logits = self.classifier(self.backbone(images))
        target = F.adaptive_max_pool2d(labels[:, None], logits.shape[-2:])[:, 0].long()
        if target.max() >= logits.shape[1]:
            raise MetakitError("seg-finetune trains on label maps of training classes (segmentation episodes with labels='all').")
        weight = logits.new_full((logits.shape[1],), self.fg_weight)
        weight[0] = 1.0
        loss = F.cross_entropy(logits, target, weight=weight)
        with torch.no_grad():
            score = self.score(logits, target)  # every training class's cells, each labelled with its most probable class
        return loss, {"loss": loss.item(), self.metric: score}

    def _logits(self, features: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Cosine head: ``scale`` x cosine of every location to the two weight vectors, plus the biases, upsampled."""
        weight, bias = head
        cos = torch.einsum("ndhw,kd->nkhw", F.normalize(features, dim=1, eps=1e-6), F.normalize(weight, dim=1, eps=1e-6))
        return F.interpolate(self.scale * cos + bias[None, :, None, None], size=size, mode="bilinear", align_corners=False)

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The fine-tuned encoder weights (empty without ``encoder_steps``) and a two-class cosine head (weights ``[2, D]``, biases ``[2]``)."""
        with torch.no_grad():
            feats = self.backbone(support_x)
            small = F.interpolate(support_y[:, None], size=feats.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            # Start at the prototypes, so 0 steps is prototype matching (PANet's, without its training).
            weight = torch.stack([masked_average(feats, 1 - small), masked_average(feats, small)])
        weight, bias = weight.clone().requires_grad_(True), torch.zeros(2, requires_grad=True)
        # The loss is on the images' own pixels: strokes a pixel or two wide vanish from a downsampled mask.
        # A character covers a few percent of a scene, and a plain loss on so few pixels is
        # lowest with no foreground at all; weighted 1:1, the head marks every character instead.
        if self.support_fg_weight is None:
            fg = support_y.mean().clamp(1e-3, 1 - 1e-3)
            balance = torch.stack([0.5 / (1 - fg), 0.5 / fg])
        else:
            balance = torch.tensor([1.0, self.support_fg_weight])
        target = support_y.long()
        tuned: dict[str, torch.Tensor] = {}
        with torch.enable_grad():
            opt = torch.optim.Adam([weight, bias], lr=self.lr)
            for _ in range(self.steps):
                opt.zero_grad()
                F.cross_entropy(self._logits(feats, (weight, bias), support_x.shape[-2:]), target, weight=balance).backward()
                opt.step()
            if self.encoder_steps:
                # The head settles on the frozen features first, so the encoder's few steps fix what the head cannot.
                tuned = {n: p.detach().clone().requires_grad_(True) for n, p in self.backbone.named_parameters() if n in self._tail}
                opt = torch.optim.Adam([{"params": list(tuned.values()), "lr": self.encoder_lr},
                                        {"params": [weight, bias], "lr": self.lr}])
                for _ in range(self.encoder_steps):
                    opt.zero_grad()
                    logits = self._logits(self._encode(support_x, tuned), (weight, bias), support_x.shape[-2:])
                    F.cross_entropy(logits, target, weight=balance).backward()
                    opt.step()
        return {n: p.detach() for n, p in tuned.items()}, weight.detach(), bias.detach()

    def _encode(self, images: torch.Tensor, tuned: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's features with ``tuned`` in place of its own last-layer weights (the model's stay as trained)."""
        if not tuned:
            return self.backbone(images)
        frozen = {n: p.detach() for n, p in self.backbone.named_parameters()}
        return functional_call(self.backbone, {**frozen, **tuned}, (images,))

    def decode(self, state: tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], query_x: torch.Tensor) -> torch.Tensor:
        """Query logits from the fine-tuned head (and encoder weights), upsampled to the images."""
        tuned, weight, bias = state
        return self._logits(self._encode(query_x, tuned), (weight, bias), query_x.shape[-2:])


def _last_layer(backbone: nn.Module) -> set[str]:
    """Names of ``backbone``'s parameters from its last convolution on (the conv, then e.g. its norm).

    An encoder without convolutions gives the parameters of its last module that has any.
    """
    names = [n for n, _ in backbone.named_parameters()]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    owners = convs or [m for m in backbone.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        return set()
    first = next(n for n, p in backbone.named_parameters() if p is next(owners[-1].parameters(recurse=False)))
    return set(names[names.index(first):])
