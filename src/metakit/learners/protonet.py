"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support examples (its prototype); a query
is classified by a softmax over negative squared Euclidean distances to the prototypes. Nothing
is optimised at adaptation time, so adapting is one forward pass of the support set.
"""

from __future__ import annotations

import torch
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks, prototypes
from metakit.learners.registry import register_learner


@register_learner("protonet")
class ProtoNet(Learner):
    """Prototypical Networks.

    Args:
        backbone: embedding network.
        task: task description.
        distance: ``"euclidean"`` (squared, as in the paper) or ``"cosine"`` (scaled cosine
            similarity with a learned temperature, as in Meta-Baseline).
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo, distance: str = "euclidean") -> None:
        super().__init__(backbone, task)
        if distance not in ("euclidean", "cosine"):
            raise MetakitError(f"protonet distance must be 'euclidean' or 'cosine', got {distance!r}.")
        self.distance = distance
        if distance == "cosine":
            self.scale = nn.Parameter(torch.tensor(10.0))

    def logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """Class scores of query embeddings ``[..., q, d]`` against prototypes ``[..., n, d]``."""
        if self.distance == "cosine":
            q = nn.functional.normalize(query, dim=-1)
            p = nn.functional.normalize(protos, dim=-1)
            return self.scale * q @ p.transpose(-1, -2)
        # ||q - p||^2 expanded: one matmul instead of a [q, n, d] difference tensor.
        sq = (query**2).sum(-1, keepdim=True) - 2 * query @ protos.transpose(-1, -2)
        return -(sq + (protos**2).sum(-1).unsqueeze(-2))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Compute the prototypes; the predictor embeds queries and scores them."""
        protos = prototypes(self.backbone(support_x), support_y, ways)
        return lambda query_x: self.logits(self.backbone(query_x), protos)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """All tasks of the meta-batch go through the backbone in one forward pass."""
        batch = as_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        return self.query_loss(self.logits(fq, prototypes(fs, batch.support_y, batch.ways)), batch)
