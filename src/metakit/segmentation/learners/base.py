"""The mask-aware learner interface: ``adapt(images, masks) -> predict(images) -> probabilities``.

It is metakit's :class:`~metakit.learners.Learner` for ``segmentation`` tasks, so the trainer and
:func:`~metakit.evaluation.evaluate_learner` run it unchanged: an episode's ``support_y`` /
``query_y`` are binary masks ``[n, H, W]`` (:mod:`metakit.segmentation.episodes`), and a predictor
returns the foreground probability of every pixel ``[n, H, W]``. Classification learners do not
change. The validation metric is the Jaccard distance (1 - foreground IoU, over an episode's
queries), a lower-is-better score as the trainer's checkpoint choice expects for every metric
but accuracy; evaluation reports mIoU, FB-IoU and AP50 (:mod:`metakit.segmentation.metrics`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch
from metakit.errors import MetakitError
from metakit.learners import Learner, Predictor, TaskInfo

__all__ = ["MaskLearner", "as_images", "as_masks", "masked_average"]

#: The name of the validation metric of every segmentation learner.
METRIC = "jaccard_distance"


def as_images(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Float images ``[n, C, H, W]`` in [0, 1] from uint8 or float ``[n, C, H, W]`` / ``[n, H, W]``."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4 or images.shape[1] != channels:
        raise MetakitError(f"images must be [n, {channels}, H, W] (or [n, H, W] for 1 channel), got {list(images.shape)}.")
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def as_masks(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Float 0/1 masks ``[n, H, W]`` matching ``images``; anything else is one clear error."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != (images.shape[0], *images.shape[-2:]):
        raise MetakitError(f"masks must be [n, H, W] = {[images.shape[0], *images.shape[-2:]]}, got {list(masks.shape)}.")
    values = set(masks.unique().tolist())
    if not values <= {0, 1} and not values <= {0, 255}:
        raise MetakitError("masks must be binary (0/1 or 0/255); threshold soft masks first.")
    if not (masks > 0).any():
        raise MetakitError("the support masks are all empty; every support image needs some foreground.")
    return (masks > 0).float()


def masked_average(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling: ``[n, D, h, w]`` features and ``[n, h, w]`` weights -> one ``[D]`` prototype.

    Pools over all ``n`` images together (the K-shot prototype), weighting each location by its mask.
    """
    weights = masks[:, None]
    return (features * weights).sum((0, 2, 3)) / weights.sum().clamp_min(1e-5)


class MaskLearner(Learner):
    """Base of the segmentation learners.

    Subclasses implement :meth:`prepare` (all the work that depends on the support set only:
    prototypes, fitted statistics, fine-tuned weights) and :meth:`decode` (two-class logits
    ``[n, 2, H, W]``, background then foreground, for query images). Keeping them apart makes the
    measured adaptation time the real one. Everything else (the predictor, the loss, the score,
    ``fit``/``predict``) is here.
    """

    task_types: ClassVar[tuple[str, ...]] = ("segmentation",)

    #: Weight of foreground pixels in the meta-training cross-entropy (1: PANet's plain loss). Small
    #: objects cover a few percent of an image, and with equal weights a learner can lower the
    #: loss by predicting background almost everywhere; a subclass option sets it higher.
    fg_weight: float = 1.0

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        if task.ways != 1:
            raise MetakitError(f"segmentation learners take 1-way episodes (one class and background), got ways={task.ways}.")

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Any:
        """What the learner keeps from support images ``[K, C, H, W]`` and masks ``[K, H, W]``."""
        raise NotImplementedError

    def decode(self, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, 2, H, W]`` (background, foreground) for ``query_x`` from :meth:`prepare`'s ``state``."""
        raise NotImplementedError

    def segment(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, 2, H, W]`` for ``query_x`` given the support set."""
        return self.decode(self.prepare(support_x, support_y), query_x)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int = 1) -> Predictor:
        """Adapt to support images ``[K, C, H, W]`` with masks ``[K, H, W]``; the predictor gives ``[n, H, W]`` probabilities."""
        if ways != 1:
            raise MetakitError(f"segmentation episodes are 1-way, got ways={ways}.")
        state = self.prepare(support_x, support_y)
        return lambda query_x: self.decode(state, query_x).softmax(1)[:, 1]

    @property
    def metric(self) -> str:
        """``jaccard_distance``: 1 - foreground IoU over an episode's queries (lower is better)."""
        return METRIC

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of foreground probabilities ``outputs`` against masks ``targets``."""
        return F.binary_cross_entropy(outputs.clamp(1e-6, 1 - 1e-6), targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Jaccard distance of ``outputs >= 0.5`` to ``targets``, intersections and unions summed over the queries."""
        pred, truth = outputs >= 0.5, targets > 0.5
        union = float((pred | truth).sum())
        return 1.0 - (float((pred & truth).sum()) / union if union else 1.0)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over tasks of the query pixels' cross-entropy (plus :meth:`extra_loss`), and the Jaccard distance."""
        losses, scores = [], []
        for ep in batch.tasks():
            logits = self.segment(ep.support_x, ep.support_y, ep.query_x)
            extra = self.extra_loss(ep.support_x, ep.support_y, ep.query_x, logits, classes=ep.classes, query_y=ep.query_y)
            loss = self.pixel_loss(logits, ep.query_y) + extra
            losses.append(loss)
            scores.append(self.score(logits.detach().softmax(1)[:, 1], ep.query_y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), self.metric: sum(scores) / len(scores)}

    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of two-class ``logits`` ``[n, 2, H, W]`` against ``masks``, foreground weighted by :attr:`fg_weight`."""
        weight = logits.new_tensor([1.0, self.fg_weight])
        return F.cross_entropy(logits, masks.long(), weight=weight)

    def extra_loss(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_logits: torch.Tensor,
        classes: torch.Tensor | None = None, query_y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A learner's own regulariser during meta-training (PANet's alignment loss); 0 by default.

        ``classes`` is the episode's class index among the training classes and ``query_y`` the
        query masks, when the caller has them.
        """
        return query_logits.new_zeros(())

    # -- Python use: model.fit(images, masks), then model.predict(images) ----------------------

    def fit(self, images: torch.Tensor, masks: torch.Tensor) -> MaskLearner:
        """Adapt to support ``images`` (uint8 or float, ``[K, C, H, W]``) and binary ``masks`` ``[K, H, W]``."""
        channels = int(self.task.input_shape[0])
        x = as_images(images, channels)
        y = as_masks(masks, x)
        self.eval()
        with torch.no_grad():
            predictor = self.adapt(x, y)
        self._predictor = predictor
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities ``[n, H, W]`` of ``images`` for the support set given to :meth:`fit`."""
        if self._predictor is None:
            raise MetakitError("call fit(images, masks) with the support set before predict(images).")
        x = as_images(images, int(self.task.input_shape[0]))
        with torch.no_grad():
            return self._predictor(x)
