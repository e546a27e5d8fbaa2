"""ANIL for segmentation (Raghu et al., 2020) on a small fully-convolutional network (``seg-anil``).

The encoder is meta-learned and not adapted per task; a two-class 1x1-conv head (background,
foreground) is adapted on each support set by a few gradient steps through metakit's one inner
loop (:func:`metakit.inner.adapt`). Meta-training differentiates through those steps (second
order unless ``first_order``), so both the encoder and the head's starting point are learned for
fast adaptation.

``head_init: prototypes`` starts the head at the support itself, as Proto-MAML (Triantafillou et
al., 2020) does for classification: the weights are the foreground and background prototypes
(masked average pooling) times a meta-learned scale, on L2-normalised features, so before any
step the head is PANet's cosine matching, and the steps refine it. A learned starting point
is one head for every class, and on glyph scenes it settles on "ink against clutter": with it,
ten inner steps score what no step does, and five shots what one does. Prototypes carry the
support's class into the head, and five shots give better prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit import inner
from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner, masked_average

__all__ = ["SegANIL"]

Params = dict[str, torch.Tensor]


class SegANIL(MaskLearner):
    """A meta-learned encoder and head initialisation; the head adapts on the support pixels.

    Args:
        backbone: a fully-convolutional encoder with ``channels`` (``seg-fcn``).
        task: a segmentation task.
        inner_steps: gradient steps on the support set during meta-training.
        inner_lr: their step size.
        eval_inner_steps: steps at evaluation (default: ``inner_steps``).
        first_order: treat the inner gradients as constants during meta-training.
        fg_weight: the weight of foreground pixels in the inner and outer losses
            (see :attr:`MaskLearner.fg_weight`).
        head_init: ``learned`` (ANIL: a meta-learned starting head) or ``prototypes`` (the support's
            prototypes times a meta-learned scale, on normalised features).
        scale: the prototype head's starting scale (PANet's 20).
    """

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, inner_steps: int = 5, inner_lr: float = 0.5,
        eval_inner_steps: int | None = None, first_order: bool = False, fg_weight: float = 5.0,
        head_init: str = "learned", scale: float = 20.0,
    ) -> None:
        super().__init__(backbone, task)
        if inner_steps < 0 or inner_lr <= 0 or fg_weight <= 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise MetakitError(
                f"seg-anil needs inner_steps >= 0, eval_inner_steps >= 0, inner_lr > 0 and fg_weight > 0, got "
                f"{inner_steps}, {eval_inner_steps}, {inner_lr} and {fg_weight}."
            )
        if not hasattr(backbone, "channels"):
            raise MetakitError("seg-anil needs a fully-convolutional backbone such as seg-fcn.")
        self.inner_steps, self.inner_lr, self.first_order = int(inner_steps), float(inner_lr), bool(first_order)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else int(eval_inner_steps)
        self.fg_weight = float(fg_weight)
        if head_init not in ("learned", "prototypes") or scale <= 0:
            raise MetakitError(f"seg-anil needs head_init 'learned' or 'prototypes' and scale > 0, got {head_init!r} and {scale}.")
        self.head_init = head_init
        if head_init == "learned":
            self.head = nn.Conv2d(backbone.channels, 2, 1)
        else:
            self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return F.normalize(features, dim=1, eps=1e-6) if self.head_init == "prototypes" else features

    def _start(self, features: torch.Tensor, support_y: torch.Tensor) -> Params:
        """The head before the inner steps: the learned one, or the support's prototypes times the scale."""
        if self.head_init == "learned":
            return {"weight": self.head.weight, "bias": self.head.bias}
        small = F.interpolate(support_y[:, None], size=features.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        protos = torch.stack([masked_average(features, 1 - small), masked_average(features, small)])
        weight = self.log_scale.exp() * F.normalize(protos, dim=1, eps=1e-6)
        return {"weight": weight[:, :, None, None], "bias": features.new_zeros(2)}

    @staticmethod
    def _logits(features: torch.Tensor, params: Params, size: torch.Size) -> torch.Tensor:
        return F.interpolate(F.conv2d(features, params["weight"], params["bias"]), size=size, mode="bilinear",
                             align_corners=False)

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        """The head's parameters after the inner steps on the support pixels."""
        features = self._features(support_x)
        size = support_x.shape[-2:]
        # At evaluation (no meta-gradient wanted) the inner gradients are constants.
        first_order = self.first_order or not torch.is_grad_enabled()
        steps = self.inner_steps if self.training else self.eval_inner_steps
        start = self._start(features, support_y)
        return inner.adapt(start, lambda p, _step: self.pixel_loss(self._logits(features, p, size), support_y), steps,
                           self.inner_lr, first_order=first_order)

    def decode(self, state: Params, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits from the adapted head on the encoder's features."""
        return self._logits(self._features(query_x), state, query_x.shape[-2:])
