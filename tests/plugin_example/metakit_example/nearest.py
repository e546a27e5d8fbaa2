"""A new learner in one file: soft nearest neighbour, published as the ``nearest_neighbour`` learner.

Configs use it like a built-in one (``learner: {name: nearest_neighbour, temperature: 0.5}``); the
constructor's keyword arguments after ``backbone`` and ``task`` are its options, checked by metakit.
The entry point (``nearest = "metakit_example.nearest:plugin"``) is all the registration there is.
"""

from __future__ import annotations

import torch
from torch import nn

from metakit.learners.base import Learner, Predictor, TaskInfo
from metakit.registry import Plugin


class NearestNeighbour(Learner):
    """Each query takes the labels of its support neighbours, weighted by a softmax over distances.

    Args:
        backbone: feature extractor, meta-trained through the softmax.
        task: task description (classification only).
        temperature: divides the squared distances before the softmax; lower is closer to 1-NN.
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo, temperature: float = 1.0) -> None:
        super().__init__(backbone, task)
        self.temperature = temperature

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Keep the support features; a query's class scores are its neighbours' weighted votes."""
        features = self.backbone(support_x)
        votes = nn.functional.one_hot(support_y, ways).float()

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            weights = (-torch.cdist(self.backbone(query_x), features).pow(2) / self.temperature).softmax(-1)
            # Log-probabilities, so the learner's cross-entropy loss sees a normalised distribution.
            return (weights @ votes).clamp_min(1e-8).log()

        return predict


plugin = Plugin(
    name="nearest",
    summary="soft nearest-neighbour learner (an example of a learner added from outside metakit)",
    learners={"nearest_neighbour": "metakit_example.nearest:NearestNeighbour"},
)
