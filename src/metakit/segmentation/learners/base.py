"""The mask-aware learner interface: ``adapt(images, masks) -> predict(images) -> probabilities``.

It is metakit's :class:`~metakit.learners.Learner` for ``segmentation`` tasks, so the trainer and
:func:`~metakit.evaluation.evaluate_learner` run it unchanged: an episode's ``support_y`` /
``query_y`` are label maps ``[n, H, W]`` (:mod:`metakit.segmentation.episodes`; at 1 way, binary
masks). At 1 way a predictor returns the foreground probability of every pixel ``[n, H, W]``; at
N ways the probabilities ``[n, N + 1, H, W]`` of background and each class. Classification
learners do not change. The validation metric is the Jaccard distance (1 - foreground IoU, over
an episode's queries and classes), a lower-is-better score as the trainer's checkpoint choice
expects for every metric but accuracy; evaluation reports mIoU, FB-IoU and AP50
(:mod:`metakit.segmentation.metrics`).

A learner written for one class (:meth:`MaskLearner.prepare` on a binary mask, two logits out)
takes N-way episodes without a line of its own: it adapts once per class and the classes are
combined as independent one-vs-background decisions (:meth:`MaskLearner.decode_ways`). A learner
that handles all classes at once (PANet's N foreground prototypes) sets ``multiway``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch
from metakit.errors import MetakitError
from metakit.learners import Learner, Predictor, TaskInfo

__all__ = ["MaskLearner", "as_images", "as_labels", "as_masks", "masked_average"]

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


def as_labels(masks: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Float label maps ``[n, H, W]`` matching ``images`` and their number of classes.

    Binary masks (0/1 or 0/255) are one class. Otherwise the values must be 0 (background) and
    the classes ``1..N``, each of them labelled somewhere: N-way support masks.
    """
    masks = torch.as_tensor(masks)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    values = set(masks.unique().tolist())
    if values <= {0, 1} or values <= {0, 255}:
        return as_masks(masks, images), 1
    if tuple(masks.shape) != (images.shape[0], *images.shape[-2:]):
        raise MetakitError(f"masks must be [n, H, W] = {[images.shape[0], *images.shape[-2:]]}, got {list(masks.shape)}.")
    ways = int(max(values))
    if any(v != int(v) or v < 0 for v in values) or set(range(1, ways + 1)) - values:
        raise MetakitError(
            f"masks must be binary or label maps with 0 for background and every class 1..N present; got the values "
            f"{sorted(values)[:8]}."
        )
    return masks.float(), ways


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
    measured adaptation time the real one. Everything else (the predictor, N ways, the loss, the
    score, ``fit``/``predict``) is here.
    """

    task_types: ClassVar[tuple[str, ...]] = ("segmentation",)

    #: ``True`` when :meth:`prepare` takes N-way label maps and :meth:`decode` gives ``N + 1``
    #: logits itself; otherwise N-way episodes adapt once per class (:meth:`prepare_ways`).
    multiway: ClassVar[bool] = False

    #: What the meta-training label maps mark: ``"episode"``, the episode's classes (the few-shot
    #: task itself), or ``"all"``, every object with ``1 +`` its training class (supervised
    #: training; see :class:`~metakit.segmentation.episodes.SegmentationEpisodes`).
    train_labels: ClassVar[str] = "episode"

    #: Weight of foreground pixels in the meta-training cross-entropy (1: PANet's plain loss). Small
    #: objects cover a few percent of an image, and with equal weights a learner can lower the
    #: loss by predicting background almost everywhere; a subclass option sets it higher.
    fg_weight: float = 1.0

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        self._ways = 1

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Any:
        """What the learner keeps from support images ``[K, C, H, W]`` and masks ``[K, H, W]``.

        The masks are binary, or N-way label maps when the learner is :attr:`multiway`.
        """
        raise NotImplementedError

    def decode(self, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, 2, H, W]`` (background, foreground) for ``query_x`` from :meth:`prepare`'s ``state``.

        ``[n, N + 1, H, W]`` (background, then each class) for an N-way state of a :attr:`multiway` learner.
        """
        raise NotImplementedError

    def prepare_ways(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Any:
        """:meth:`prepare` for label maps ``support_y`` (0 background, ``1..ways`` the classes).

        A learner that is not :attr:`multiway` prepares once per class, on the support images
        that show it, with that class's binary masks.
        """
        if ways == 1 or self.multiway:
            return self.prepare(support_x, support_y)
        states = []
        for i in range(1, ways + 1):
            shows = (support_y == i).flatten(1).any(1)
            if not shows.any():
                raise MetakitError(f"class {i} of the {ways}-way support set has no labelled pixel; every class needs a mask.")
            states.append(self.prepare(support_x[shows], (support_y[shows] == i).float()))
        return states

    def decode_ways(self, state: Any, query_x: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``[n, ways + 1, H, W]`` for ``query_x`` from :meth:`prepare_ways`'s ``state``.

        One-class decoders are combined as independent decisions: P(only class i) is proportional
        to p_i times the product of (1 - p_j) over the other classes, and P(background) to the
        product of all (1 - p_j). Divided by that product, the logits are 0 for background and
        each class's own log-odds, so 1 way is exactly the two-class decoder.
        """
        if ways == 1 or self.multiway:
            return self.decode(state, query_x)
        odds = [logits[:, 1] - logits[:, 0] for logits in (self.decode(s, query_x) for s in state)]
        return torch.stack([torch.zeros_like(odds[0]), *odds], dim=1)

    def segment(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, ways: int = 1) -> torch.Tensor:
        """Logits ``[n, ways + 1, H, W]`` for ``query_x`` given the support set (label maps ``support_y``)."""
        return self.decode_ways(self.prepare_ways(support_x, support_y, ways), query_x, ways)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int = 1) -> Predictor:
        """Adapt to support images ``[K, C, H, W]`` with label maps ``[K, H, W]``.

        At 1 way the predictor gives foreground probabilities ``[n, H, W]``; at N ways the
        probabilities ``[n, N + 1, H, W]`` of background and each class.
        """
        state = self.prepare_ways(support_x, support_y, ways)
        if ways == 1:
            return lambda query_x: self.decode(state, query_x).softmax(1)[:, 1]
        return lambda query_x: self.decode_ways(state, query_x, ways).softmax(1)

    @property
    def metric(self) -> str:
        """``jaccard_distance``: 1 - foreground IoU over an episode's queries (lower is better)."""
        return METRIC

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of a predictor's probabilities ``outputs`` against label maps ``targets``."""
        if outputs.dim() == 4:
            return F.nll_loss(outputs.clamp_min(1e-6).log(), targets.long())
        return F.binary_cross_entropy(outputs.clamp(1e-6, 1 - 1e-6), targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Jaccard distance of the predicted labels to ``targets``, intersections and unions summed over queries and classes.

        The predicted label is ``outputs >= 0.5`` at 1 way and the most probable class at N ways.
        """
        if outputs.dim() == 4:
            pred, truth = outputs.argmax(1), targets.long()
            classes = range(1, outputs.shape[1])
            inter = sum(float(((pred == c) & (truth == c)).sum()) for c in classes)
            union = sum(float(((pred == c) | (truth == c)).sum()) for c in classes)
        else:
            pred, truth = outputs >= 0.5, targets > 0.5
            inter, union = float((pred & truth).sum()), float((pred | truth).sum())
        return 1.0 - (inter / union if union else 1.0)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over tasks of the query pixels' cross-entropy (plus :meth:`extra_loss`), and the Jaccard distance."""
        losses, scores = [], []
        for ep in batch.tasks():
            logits = self.segment(ep.support_x, ep.support_y, ep.query_x, ep.ways)
            extra = self.extra_loss(ep.support_x, ep.support_y, ep.query_x, logits, classes=ep.classes, query_y=ep.query_y)
            loss = self.pixel_loss(logits, ep.query_y) + extra
            losses.append(loss)
            probs = logits.detach().softmax(1)
            scores.append(self.score(probs[:, 1] if ep.ways == 1 else probs, ep.query_y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), self.metric: sum(scores) / len(scores)}

    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` ``[n, N + 1, H, W]`` against label maps ``masks``, classes weighted by :attr:`fg_weight`."""
        weight = logits.new_full((logits.shape[1],), self.fg_weight)
        weight[0] = 1.0
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
        """Adapt to support ``images`` (uint8 or float, ``[K, C, H, W]``) and ``masks`` ``[K, H, W]``.

        Binary masks (0/1 or 0/255) are one class; label maps with values ``0..N`` (0 background)
        are N classes, each labelled on the images that show it.
        """
        channels = int(self.task.input_shape[0])
        x = as_images(images, channels)
        y, ways = as_labels(masks, x)
        self.eval()
        with torch.no_grad():
            predictor = self.adapt(x, y, ways)
        self._predictor, self._ways = predictor, ways
        return self

    @property
    def ways(self) -> int:
        """The number of classes of the support set given to :meth:`fit` (1 before it)."""
        return self._ways

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities of ``images`` for the support set given to :meth:`fit`.

        Foreground probabilities ``[n, H, W]`` for one class; ``[n, N + 1, H, W]`` (background,
        then the classes) for N.
        """
        if self._predictor is None:
            raise MetakitError("call fit(images, masks) with the support set before predict(images).")
        x = as_images(images, int(self.task.input_shape[0]))
        with torch.no_grad():
            return self._predictor(x)
