"""Meta-Baseline (Chen, Liu, Xu, Darrell & Wang, "Meta-Baseline: Exploring Simple Meta-Learning
for Few-Shot Learning", ICCV 2021).

Two stages in one learner:

1. **Classifier-Baseline**: for the first ``pretrain_steps`` meta-steps, a linear classifier over
   all training classes is trained on every image of each meta-batch under its split-level label
   (``batch.classes``), exactly like the fine-tuning baseline's pretraining.
2. **Meta-Baseline**: afterwards the classifier is dropped and the backbone is meta-trained as a
   cosine Prototypical Network: logits are ``tau * cos(query, prototype)`` with a learned
   temperature ``tau`` (initialised at 10, as in the paper's code).

Adaptation is cosine prototypes in both stages (the paper evaluates the Classifier-Baseline
that way too). The stage is decided by a meta-step counter kept as a buffer, so it is saved in
checkpoints and a resumed run switches at exactly the same step; the trainer knows nothing about
stages.

Pretraining wants many classes per batch while meta-training uses N-way episodes, but the trainer
samples one episode spec. ``episode_ways`` bridges the two: in stage 2 each training episode is
cut into episodes of ``episode_ways`` classes (its classes are already in random order), e.g. one
64-way episode gives 12 5-way episodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import TaskInfo, check_finite
from metakit.learners.finetune import global_batch
from metakit.learners.protonet import ProtoNet
from metakit.learners.registry import register_learner


def split_ways(batch: MetaBatch, ways: int) -> MetaBatch:
    """Cut each task of a meta-batch into tasks of ``ways`` classes (leftover classes are dropped).

    Relies on the episode layout :class:`~metakit.episodes.EpisodeSampler` produces: support and
    query items ordered class by class with labels ``0..N-1``.
    """
    batch = as_batch(batch)
    n, k, q, t = batch.ways, batch.shots, batch.queries, batch.num_tasks
    if ways >= n:
        return batch
    expected_s = torch.arange(n, device=batch.support_y.device).repeat_interleave(k)
    expected_q = torch.arange(n, device=batch.query_y.device).repeat_interleave(q)
    if not (torch.equal(batch.support_y, expected_s.expand_as(batch.support_y))
            and torch.equal(batch.query_y, expected_q.expand_as(batch.query_y))):
        raise MetakitError("metabaseline episode_ways needs episodes ordered class by class with labels 0..N-1.")
    groups = n // ways

    def cut(x: torch.Tensor, per_class: int) -> torch.Tensor:
        x = x.reshape(t, n, per_class, *x.shape[2:])[:, : groups * ways]
        return x.reshape(t * groups, ways * per_class, *x.shape[3:])

    labels = torch.arange(ways, device=batch.support_y.device)
    return MetaBatch(
        support_x=cut(batch.support_x, k),
        support_y=labels.repeat_interleave(k).repeat(t * groups, 1),
        query_x=cut(batch.query_x, q),
        query_y=labels.repeat_interleave(q).repeat(t * groups, 1),
        ways=ways,
        shots=k,
        queries=q,
        classes=None if batch.classes is None else batch.classes[:, : groups * ways].reshape(t * groups, ways),
    )


@register_learner("metabaseline")
class MetaBaseline(ProtoNet):
    """Classifier pretraining, then cosine-ProtoNet meta-training; cosine prototypes at adaptation.

    Args:
        backbone: feature extractor.
        task: task description (``num_classes`` sizes the stage-1 classifier).
        pretrain_steps: meta-steps of stage 1 (classifier pretraining); 0 = meta-train only.
        temperature: initial value of the learned temperature ``tau`` of the cosine logits.
        episode_ways: in stage 2, cut each training episode into episodes of this many classes
            (``None`` = use the training episodes as they are).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        pretrain_steps: int = 1000,
        temperature: float = 10.0,
        episode_ways: int | None = None,
    ) -> None:
        super().__init__(backbone, task, distance="cosine")
        if not task.num_classes:
            raise MetakitError("metabaseline needs the number of training classes to pretrain its classifier.")
        if pretrain_steps < 0 or temperature <= 0 or (episode_ways is not None and episode_ways < 2):
            raise MetakitError(
                f"metabaseline needs pretrain_steps >= 0, temperature > 0 and episode_ways >= 2; "
                f"got {pretrain_steps}, {temperature}, {episode_ways}."
            )
        with torch.no_grad():
            self.scale.fill_(temperature)
        self.pretrain_steps, self.episode_ways = pretrain_steps, episode_ways
        self.classifier = nn.Linear(backbone.out_dim, task.num_classes)
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))

    @property
    def stage(self) -> int:
        """1 while pretraining the classifier, 2 once meta-training the cosine ProtoNet."""
        return 1 if int(self.meta_steps) < self.pretrain_steps else 2

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage 1: global-label cross-entropy; stage 2: the cosine ProtoNet's episodic loss."""
        stage = self.stage
        if stage == 1:
            x, y = global_batch(batch, "metabaseline")
            logits = self.classifier(self.backbone(x))
            loss = F.cross_entropy(logits, y)
            metrics = {"loss": loss.item(), "accuracy": self.score(logits.detach(), y)}
        else:
            if self.episode_ways is not None:
                batch = split_ways(batch, self.episode_ways)
            loss, metrics = super().meta_loss(batch)
        return loss, {**metrics, "stage": float(stage)}

    def meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """This stage's gradient; advances the meta-step counter that decides the stage."""
        loss, metrics = self.meta_loss(batch)
        check_finite(loss)
        loss.backward()
        self.meta_steps += 1
        return metrics
