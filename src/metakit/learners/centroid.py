"""Nearest centroid: the no-meta-training baseline of metric learners.

Each class is the mean of its support features; a query goes to the closest mean (squared
Euclidean distance, or cosine similarity). It is ProtoNet without meta-training: nothing is
learned, so on a fixed feature space (``backbone: identity`` over frozen sentence embeddings) it
measures what the features alone give, the number a meta-trained learner has to beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, prototypes
from metakit.learners.registry import register_learner


@register_learner("centroid")
class NearestCentroid(Learner):
    """Nearest class mean of support features; nothing is meta-trained (the backbone is frozen).

    Args:
        backbone: feature extractor, used as built and never trained (``identity`` for fixed
            embeddings).
        task: task description.
        distance: ``"euclidean"`` (squared) or ``"cosine"``.
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo, distance: str = "euclidean") -> None:
        super().__init__(backbone, task)
        if distance not in ("euclidean", "cosine"):
            raise MetakitError(f"centroid distance must be 'euclidean' or 'cosine', got {distance!r}.")
        self.distance = distance
        # No meta-training: the trainer sees no trainable parameter and only validates.
        self.backbone.requires_grad_(False)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Class means of the support features; the predictor scores queries against them."""
        features = self.backbone(support_x)
        if self.distance == "cosine":
            features = F.normalize(features, dim=-1)
        means = prototypes(features, support_y, ways)

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            q = self.backbone(query_x)
            if self.distance == "cosine":
                # Cosine similarities lie in [-1, 1]; x10 makes the softmax a usable probability.
                return 10.0 * F.normalize(q, dim=-1) @ F.normalize(means, dim=-1).T
            return -torch.cdist(q, means).pow(2)

        return predict
