"""PANet (Wang et al., ICCV 2019): prototype matching with masked average pooling and prototype alignment.

The encoder embeds support and query images; masked average pooling of the support features
gives one foreground and one background prototype; every query location is labelled by its
scaled cosine similarity to the two. During meta-training, PANet's prototype alignment
regularisation (PAR) runs the other way too: the query's *predicted* mask gives query
prototypes, which must segment the support images correctly. That makes the prototypes of a class
consistent between support and query, and adds no cost at test time.

``bg_prototypes > 1`` splits the background into several prototypes (k-means on the support's
background features, as multi-prototype methods such as PMMs do) and scores a location by its
best background match. One averaged background prototype is mostly clutter, so the *other*
characters in a scene end up closer to the foreground prototype than to it; with a few
background prototypes they get one of their own, and more shots bring more of them.
``fg_per_shot`` keeps one foreground prototype per support image (best match wins) instead of
their average: the shots show the class in different fonts, sizes and rotations, and an average
of them blurs what each one shows.

N-way episodes are PANet's own form: one foreground prototype (or one per shot) for each class,
background prototypes from every support image's background, and each query location takes the
best-matching class; the alignment loss segments each support image with the query's prototypes.

``aux_weight > 0`` adds a supervised term during meta-training: a 1x1-conv classifier on the
encoder features must name the episode's training class at its foreground locations (support
and query). Episodic cross-entropy alone mostly teaches "ink versus clutter"; naming the class
teaches features that tell one character from another, which is what matching needs (the
base-class learners of PFENet and BAM play this role). The classifier is unused at test time.
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
    """Prototype matching on ``backbone`` features (``learner: seg-panet``), 1-way or N-way.

    Args:
        backbone: a fully-convolutional encoder with ``channels`` (``seg-fcn``).
        task: a segmentation task.
        scale: the cosine similarities are multiplied by this before the softmax (PANet's 20).
        align_weight: the weight of the prototype alignment loss during meta-training (PANet's
            1.0); 0 turns it off.
        fg_weight: the weight of foreground pixels in the training loss (see
            :attr:`MaskLearner.fg_weight`); 1 is PANet's plain cross-entropy.
        bg_prototypes: background prototypes (k-means clusters of the support's background
            features); 1 is PANet's single one.
        kmeans_steps: Lloyd iterations of that clustering.
        fg_per_shot: one foreground prototype per support image instead of one for all of them.
        aux_weight: the weight of the supervised class term (0: off); needs ``task.num_classes``.
    """

    multiway = True

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, scale: float = 20.0, align_weight: float = 1.0, fg_weight: float = 1.0,
        bg_prototypes: int = 1, kmeans_steps: int = 5, fg_per_shot: bool = False, aux_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, task)
        if scale <= 0 or align_weight < 0 or fg_weight <= 0 or bg_prototypes < 1 or kmeans_steps < 0:
            raise MetakitError(
                f"seg-panet needs scale > 0, align_weight >= 0, fg_weight > 0, bg_prototypes >= 1 and kmeans_steps >= 0, "
                f"got {scale}, {align_weight}, {fg_weight}, {bg_prototypes} and {kmeans_steps}."
            )
        self.bg_prototypes, self.kmeans_steps, self.fg_per_shot = int(bg_prototypes), int(kmeans_steps), bool(fg_per_shot)
        if aux_weight < 0 or (aux_weight > 0 and not task.num_classes):
            raise MetakitError(f"seg-panet needs aux_weight >= 0, and training classes for aux_weight > 0; got {aux_weight}.")
        self.aux_weight = float(aux_weight)
        self.aux_head = nn.Conv2d(backbone.channels, task.num_classes, 1) if aux_weight > 0 else None
        #: Support and query features of the last training episode, reused by the alignment loss.
        self._episode_features: tuple[torch.Tensor, ...] | None = None
        self.fg_weight = float(fg_weight)
        if not hasattr(backbone, "channels"):
            raise MetakitError("seg-panet needs a fully-convolutional backbone such as seg-fcn.")
        self.scale, self.align_weight = float(scale), float(align_weight)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def _background(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``bg_prototypes`` prototypes ``[k, D]`` of the locations where ``weights`` ``[n, h, w]`` > 0.5.

        Deterministic k-means in cosine space: the first centre is the masked average, each next
        one the location least similar to the centres so far, then Lloyd steps. Assignments are
        constants; the prototypes are masked averages, so gradients reach the features as in PANet.
        """
        mean = masked_average(features, weights)[None]
        flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        points = flat[weights.reshape(-1) > 0.5]
        if self.bg_prototypes == 1 or len(points) <= self.bg_prototypes:
            return mean
        with torch.no_grad():
            unit = F.normalize(points, dim=1)
            centres = F.normalize(mean, dim=1)
            for _ in range(self.bg_prototypes - 1):
                nearest = (unit @ centres.T).max(1).values
                centres = torch.cat([centres, unit[nearest.argmin()][None]])
            for _ in range(self.kmeans_steps):
                assign = (unit @ centres.T).argmax(1)
                sums = torch.zeros_like(centres).index_add_(0, assign, unit)
                centres = torch.where(sums.norm(dim=1, keepdim=True) > 0, F.normalize(sums, dim=1), centres)
            assign = (unit @ centres.T).argmax(1)
        onehot = F.one_hot(assign, len(centres)).to(points.dtype)  # [m, k]
        counts = onehot.sum(0)
        protos = (onehot.T @ points) / counts.clamp_min(1)[:, None]
        return protos[counts > 0]

    def _prototypes(self, features: torch.Tensor, labels: torch.Tensor, ways: int) -> list[torch.Tensor]:
        """Prototypes ``[background [b, D], class 1 [a, D], ..., class ways]`` from features ``[n, D, h, w]`` and label maps ``[n, H, W]``."""
        small = [F.interpolate((labels == c).float()[:, None], size=features.shape[-2:], mode="bilinear",
                               align_corners=False)[:, 0] for c in range(1, ways + 1)]
        groups = [self._background(features, 1 - sum(small))]
        for weights in small:
            if self.fg_per_shot and len(features) > 1:
                shown = [i for i in range(len(features)) if weights[i].sum() > 0]
                groups.append(torch.stack([masked_average(features[i : i + 1], weights[i : i + 1]) for i in shown]))
            else:
                groups.append(masked_average(features, weights)[None])
        return groups

    def _match(self, features: torch.Tensor, groups: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Logits ``[n, len(groups), H, W]`` (background, then each class): scaled cosine similarity, upsampled.

        Each logit is the best match among that group's prototypes.
        """
        unit = F.normalize(features, dim=1, eps=1e-6)
        logits = [self.scale * torch.einsum("ndhw,kd->nkhw", unit, F.normalize(p, dim=1, eps=1e-6)).max(1).values
                  for p in groups]
        return F.interpolate(torch.stack(logits, dim=1), size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def _ways_of(labels: torch.Tensor) -> int:
        return max(1, int(labels.max().item()))

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> list[torch.Tensor]:
        """The support set's background prototypes, then each class's (``support_y``: binary masks or N-way label maps)."""
        return self._prototypes(self._features(support_x), support_y, self._ways_of(support_y))

    def decode(self, state: list[torch.Tensor], query_x: torch.Tensor) -> torch.Tensor:
        """Query logits from the prototypes ``state``."""
        return self._match(self._features(query_x), state, query_x.shape[-2:])

    def segment(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, ways: int = 1) -> torch.Tensor:
        """Query logits; in training, support and query share one encoder pass, kept for the alignment loss."""
        if not self.training:
            return super().segment(support_x, support_y, query_x, ways)
        # GroupNorm normalises each image on its own, so one batched pass equals two separate ones.
        features = self._features(torch.cat([support_x, query_x]))
        support_f, query_f = features[: len(support_x)], features[len(support_x):]
        self._episode_features = (support_x, query_x, support_f, query_f)
        return self._match(query_f, self._prototypes(support_f, support_y, ways), query_x.shape[-2:])

    def extra_loss(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_logits: torch.Tensor,
        classes: torch.Tensor | None = None, query_y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """PAR (prototypes from the query's predicted mask must segment the support images), plus the class term."""
        cached, self._episode_features = self._episode_features, None
        if cached is not None and cached[0] is support_x and cached[1] is query_x:
            support_f, query_f = cached[2:]
        else:
            support_f, query_f = self._features(support_x), self._features(query_x)
        loss = query_logits.new_zeros(())
        if self.aux_head is not None and classes is not None:
            features, masks = support_f, support_y
            if query_y is not None:
                features, masks = torch.cat([support_f, query_f]), torch.cat([support_y, query_y])
            loss = loss + self.aux_weight * self._class_loss(features, masks, classes.reshape(-1))
        if self.align_weight == 0:
            return loss
        # PANet uses the hard predicted mask; its gradient flows through the query features only.
        predicted = query_logits.argmax(1).float()
        if not predicted.any():
            return loss  # no predicted foreground: no query prototype to align
        protos = self._prototypes(query_f, predicted, query_logits.shape[1] - 1)
        support_logits = self._match(support_f, protos, support_x.shape[-2:])
        return loss + self.align_weight * self.pixel_loss(support_logits, support_y)

    def _class_loss(self, features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the class head at the labelled locations of ``labels`` (label ``i`` is training class ``classes[i - 1]``)."""
        scores = self.aux_head(features).permute(0, 2, 3, 1)  # type: ignore[misc]
        logits, targets = [], []
        for i, cls in enumerate(classes.tolist(), start=1):
            small = F.interpolate((labels == i).float()[:, None], size=features.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0]
            logits.append(scores[small > 0.5])
            targets.append(torch.full((len(logits[-1]),), int(cls), dtype=torch.long))
        logits = torch.cat(logits)
        if not len(logits):
            return features.new_zeros(())
        return F.cross_entropy(logits, torch.cat(targets))
