"""The learner interface every method implements.

A learner *adapts* to a support set and returns a predictor for query inputs (easyfsl's
``process_support_set`` then ``forward(query)``, also available under those names). Meta-training
calls :meth:`Learner.meta_step` on a meta-batch; the default computes :meth:`Learner.meta_loss`
(adapt, predict, loss, averaged over tasks) and back-propagates it. A learner whose outer update is
not the gradient of a loss (Reptile) overrides ``meta_step`` to write its update into ``.grad``.
The trainer and the evaluator only ever call these methods, so adding a learner never touches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch
from metakit.errors import MetakitError

#: Maps query inputs to outputs: class logits ``[n, ways]`` or regression outputs ``[n, d]``.
Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaskInfo:
    """What a learner needs to know about the tasks it will see.

    Attributes:
        task_type: ``"classification"`` or ``"regression"``.
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        ways: classes per training episode (1 for regression).
        num_classes: classes in the training split (for learners that pretrain a global classifier).
        output_dim: regression output size.
        max_ways: the most classes any episode (training or evaluation) will have; learners with
            a fixed-size classification head size it by this.
    """

    task_type: str
    input_shape: tuple[int, ...]
    ways: int
    num_classes: int | None = None
    output_dim: int = 1
    max_ways: int | None = None


class NonFiniteLoss(MetakitError):
    """The meta-training loss became NaN or infinite."""


class Learner(nn.Module):
    """Base class: adapt on a support set, predict on a query set, meta-train on meta-batches.

    Subclasses implement :meth:`adapt`; most override nothing else. ``adapt`` may be called under
    ``torch.no_grad()`` at evaluation time; a learner whose adaptation needs gradients (an inner
    optimisation loop) enables them itself with ``torch.enable_grad()``.
    """

    #: Task types the learner supports.
    task_types: ClassVar[tuple[str, ...]] = ("classification",)

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__()
        if task.task_type not in self.task_types:
            raise MetakitError(
                f"learner {type(self).__name__} does not handle {task.task_type} tasks; "
                f"it supports {', '.join(self.task_types)}."
            )
        self.backbone = backbone
        self.task = task
        self._predictor: Predictor | None = None

    # -- the two methods a learner is about -------------------------------------------------

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Adapt to one task's support set and return a predictor for its query inputs."""
        raise NotImplementedError

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Meta-training loss of a meta-batch (mean over tasks) and its metrics."""
        losses, outputs = [], []
        for episode in batch.tasks():
            predict = self.adapt(episode.support_x, episode.support_y, episode.ways)
            out = predict(episode.query_x)
            losses.append(self.loss(out, episode.query_y))
            outputs.append(self.score(out.detach(), episode.query_y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), self.metric: sum(outputs) / len(outputs)}

    # -- what the trainer calls ---------------------------------------------------------------

    def meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """Write this meta-batch's meta-gradient into ``.grad`` and return its metrics."""
        loss, metrics = self.meta_loss(batch)
        check_finite(loss)
        loss.backward()
        return metrics

    # -- shared pieces ------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """Name of the evaluation metric: ``accuracy`` (classification) or ``mse`` (regression)."""
        return "accuracy" if self.task.task_type == "classification" else "mse"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for classification, mean squared error for regression."""
        if self.task.task_type == "classification":
            return F.cross_entropy(outputs, targets)
        return F.mse_loss(outputs, targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Accuracy (classification) or mean squared error (regression) of ``outputs``."""
        if self.task.task_type == "classification":
            return (outputs.argmax(-1) == targets).float().mean().item()
        return F.mse_loss(outputs, targets).item()

    def query_loss(self, outputs: torch.Tensor, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and metrics of classification ``outputs`` ``[tasks, queries, ways]`` on ``batch``'s query labels."""
        outputs, qy = outputs.flatten(0, 1), batch.query_y.flatten()
        loss = self.loss(outputs, qy)
        return loss, {"loss": loss.item(), "accuracy": self.score(outputs.detach(), qy)}

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities from classification ``outputs`` (softmax of logits by default).

        Learners whose outputs are not logits (relation scores, attention distributions)
        override this so calibration metrics compare like with like.
        """
        return outputs.softmax(-1)

    # -- easyfsl-style stateful use -----------------------------------------------------------

    def process_support_set(self, support_x: torch.Tensor, support_y: torch.Tensor) -> None:
        """Adapt to a support set; later ``learner(query_x)`` calls predict with it."""
        ways = int(support_y.max().item()) + 1 if self.task.task_type == "classification" else 1
        self._predictor = self.adapt(support_x, support_y, ways)

    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        """Predict query inputs with the support set given to :meth:`process_support_set`."""
        if self._predictor is None:
            raise MetakitError("call process_support_set(support_x, support_y) before predicting.")
        return self._predictor(query_x)


def check_finite(loss: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLoss` if ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(
            f"meta-training loss became {loss.item()}; lower train.lr, set train.grad_clip, "
            f"or check the data for NaN values."
        )


def embed_tasks(embed: Callable[[torch.Tensor], torch.Tensor], batch: MetaBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``embed`` of every support and query input of ``batch`` in one call, split back by task.

    One call instead of one per task keeps a meta-batch to one backbone pass. Returns the support
    and query embeddings, ``[tasks, support, ...]`` and ``[tasks, queries, ...]``.
    """
    t, ns, nq = batch.num_tasks, batch.support_x.shape[1], batch.query_x.shape[1]
    out = embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    return out[: t * ns].unflatten(0, (t, ns)), out[t * ns :].unflatten(0, (t, nq))


def prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of ``features`` ``[..., n, d]`` by ``labels`` ``[..., n]`` -> ``[..., ways, d]``."""
    onehot = F.one_hot(labels, ways).to(features.dtype)  # [..., n, ways]
    sums = onehot.transpose(-1, -2) @ features
    return sums / onehot.sum(-2).unsqueeze(-1).clamp_min(1)
