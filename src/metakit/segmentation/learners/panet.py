"""PANet (Wang et al., ICCV 2019): prototype matching with masked average pooling and prototype alignment.

The encoder embeds support and query images; masked average pooling of the support features
gives one foreground and one background prototype; every query location is labelled by its
scaled cosine similarity to the two. During meta-training, PANet's prototype alignment
regularisation (PAR) runs the other way too: the query's *predicted* mask gives query
prototypes, which must segment the support images correctly. That makes the prototypes of a class
consistent between support and query, and adds no cost at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner, masked_average

__all__ = ["PANet"]


class PANet(MaskLearner):
    """Prototype matching on ``backbone`` features (``learner: seg-panet``).

    Args:
        backbone: a fully-convolutional encoder with ``channels`` (``seg-fcn``).
        task: a 1-way segmentation task.
        scale: the cosine similarities are multiplied by this before the softmax (PANet's 20).
        align_weight: the weight of the prototype alignment loss during meta-training (PANet's
            1.0); 0 turns it off.
        fg_weight: the weight of foreground pixels in the training loss (see
            :attr:`MaskLearner.fg_weight`); 1 is PANet's plain cross-entropy.
    """

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, scale: float = 20.0, align_weight: float = 1.0, fg_weight: float = 1.0
    ) -> None:
        super().__init__(backbone, task)
        if scale <= 0 or align_weight < 0 or fg_weight <= 0:
            raise MetakitError(
                f"seg-panet needs scale > 0, align_weight >= 0 and fg_weight > 0, got {scale}, {align_weight} and {fg_weight}."
            )
        self.fg_weight = float(fg_weight)
        if not hasattr(backbone, "channels"):
            raise MetakitError("seg-panet needs a fully-convolutional backbone such as seg-fcn.")
        self.scale, self.align_weight = float(scale), float(align_weight)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def _prototypes(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Background and foreground prototypes ``[2, D]`` from features ``[n, D, h, w]`` and image masks ``[n, H, W]``."""
        small = F.interpolate(masks[:, None], size=features.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return torch.stack([masked_average(features, 1 - small), masked_average(features, small)])

    def _match(self, features: torch.Tensor, protos: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Logits ``[n, 2, H, W]``: scaled cosine similarity of every location to each prototype, upsampled."""
        sim = F.cosine_similarity(features[:, None], protos[None, :, :, None, None], dim=2, eps=1e-6)
        return F.interpolate(self.scale * sim, size=size, mode="bilinear", align_corners=False)

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """The support set's background and foreground prototypes ``[2, D]``."""
        return self._prototypes(self._features(support_x), support_y)

    def decode(self, state: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits from the prototypes ``state``."""
        return self._match(self._features(query_x), state, query_x.shape[-2:])

    def extra_loss(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_logits: torch.Tensor
    ) -> torch.Tensor:
        """PAR: prototypes from the query's predicted mask must segment the support images."""
        if self.align_weight == 0:
            return query_logits.new_zeros(())
        # PANet uses the hard predicted mask; its gradient flows through the query features only.
        predicted = (query_logits.argmax(1) == 1).float()
        if not predicted.any():
            return query_logits.new_zeros(())  # no predicted foreground: no query prototype to align
        protos = self._prototypes(self._features(query_x), predicted)
        support_logits = self._match(self._features(support_x), protos, support_x.shape[-2:])
        return self.align_weight * self.pixel_loss(support_logits, support_y)
