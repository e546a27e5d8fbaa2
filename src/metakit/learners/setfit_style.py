"""SetFit-style per-task fine-tuning of the sentence encoder, optionally from a meta-trained encoder.

SetFit (Tunstall et al., "Efficient Few-Shot Learning Without Prompts", 2022) adapts a sentence
encoder to each task: it fine-tunes the encoder contrastively on pairs of the task's labelled
sentences, then fits a logistic regression on the fine-tuned embeddings. This learner does the
same inside metakit, on ``backbone: transformer`` (:mod:`metakit.text.encoder`), for every task:

1. copy the weights the backbone trains (LoRA adapters or whole top layers, its ``adaptable``);
2. fine-tune the copy on **every pair of support sentences**: target cosine similarity 1 for two
   sentences of one intent and 0 otherwise, squared error (SetFit's ``CosineSimilarityLoss``),
   positive and negative pairs weighted equally (SetFit oversamples the rarer kind to balance
   them). A support set holds at most a few dozen sentences, so all its pairs come from one
   forward pass and each step is one full-batch AdamW step; SetFit instead streams sampled pairs
   in mini-batches of 16 through the whole encoder, which costs minutes per task on a CPU.
   Fine-tuning is deterministic (no dropout, full batches), so evaluation is reproducible;
3. embed support and queries with the fine-tuned copy and fit the head on the support set:
   L2 logistic regression (SetFit's head; :func:`~metakit.learners.logreg.fit_logistic_regression`)
   or scaled-cosine prototypes.

**Meta-training** (``meta_train: true``, the default) shapes the same weights beforehand with
episodic Prototypical Networks (scaled cosine similarity with a learned temperature, as
``protonet`` with ``distance: cosine``) on the training intents, so each task's fine-tuning
starts from an encoder already trained for few-shot intent tasks: pretrain, meta-train,
fine-tune (Hu et al., "Pushing the Limits of Simple Pipelines for Few-Shot Learning", CVPR 2022).
With ``meta_train: false`` nothing is meta-trained and every task starts from the pretrained
encoder, as SetFit does. ``steps: 0`` skips per-task fine-tuning: the head alone on the
(meta-trained) encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks, prototypes
from metakit.learners.logreg import fit_logistic_regression
from metakit.learners.registry import register_learner

Params = dict[str, torch.Tensor]


def pair_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of ``embeddings``, positives and negatives balanced.

    ``sum_pairs w_ij (cos(z_i, z_j) - [y_i == y_j])^2`` with weights summing to 1/2 over the
    positive pairs and 1/2 over the negative ones (all of it on one kind when the other is absent,
    e.g. the negatives of a 1-shot task).
    """
    n = embeddings.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    z = F.normalize(embeddings, dim=-1)
    cos = (z[i] * z[j]).sum(-1)
    target = (labels[i] == labels[j]).to(cos.dtype)
    positives, negatives = target.sum(), (1 - target).sum()
    kinds = (positives > 0).to(cos.dtype) + (negatives > 0).to(cos.dtype)
    weight = target / positives.clamp_min(1) + (1 - target) / negatives.clamp_min(1)
    return (weight * (cos - target) ** 2).sum() / kinds.clamp_min(1)


@register_learner("setfit_style")
class SetFitStyle(Learner):
    """Per-task contrastive fine-tuning of the encoder's trainable weights, then a head.

    Args:
        backbone: ``transformer`` (a sentence encoder whose ``adaptable`` weights can be copied).
        task: task description.
        steps: full-batch fine-tuning steps per task on the support pairs (0: none).
        lr: AdamW learning rate of the per-task fine-tuning.
        weight_decay: AdamW weight decay of the per-task fine-tuning.
        head: ``"logreg"`` (logistic regression, SetFit's head) or ``"prototype"`` (cosine prototypes).
        C: inverse L2 strength of the logistic-regression head (scikit-learn's ``C``).
        meta_train: meta-train the encoder's trainable weights with episodic cosine ProtoNet;
            ``False`` leaves the pretrained encoder as it is (nothing to meta-train).
        scale: initial temperature of the cosine ProtoNet logits (learned when meta-training).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        steps: int = 10,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        head: str = "logreg",
        C: float = 10.0,
        meta_train: bool = True,
        scale: float = 10.0,
    ) -> None:
        super().__init__(backbone, task)
        names = getattr(backbone, "adaptable", None)
        if names is None:
            raise MetakitError(
                "setfit_style fine-tunes the sentence encoder itself; use backbone: transformer with dataset.inputs: tokens."
            )
        if not isinstance(steps, int) or steps < 0:
            raise MetakitError(f"setfit_style steps must be an integer >= 0, got {steps!r}.")
        if steps and not names:
            raise MetakitError("setfit_style: the backbone trains no weights (train_layers: 0); set train_layers >= 1 or steps: 0.")
        if not lr > 0 or weight_decay < 0 or not C > 0:
            raise MetakitError(f"setfit_style needs lr > 0, weight_decay >= 0 and C > 0, got {lr}, {weight_decay}, {C}.")
        if head not in ("logreg", "prototype"):
            raise MetakitError(f"setfit_style head must be 'logreg' or 'prototype', got {head!r}.")
        self.names = list(names)
        self.steps, self.lr, self.weight_decay = steps, float(lr), float(weight_decay)
        self.head, self.C, self.meta_train = head, float(C), bool(meta_train)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=self.meta_train)
        if not self.meta_train:
            # Nothing is meta-trained: the trainer sees no trainable parameter and only validates.
            self.backbone.requires_grad_(False)

    # -- meta-training: episodic cosine ProtoNet on the trainable weights -------------------------

    def cosine_logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``scale * cos(query, prototype)`` for query embeddings ``[..., q, d]`` and prototypes ``[..., n, d]``."""
        return self.scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """ProtoNet's loss; every sentence of the meta-batch goes through the encoder in one call."""
        batch = as_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        return self.query_loss(self.cosine_logits(fq, prototypes(fs, batch.support_y, batch.ways)), batch)

    # -- adaptation: fine-tune a copy on the support pairs, then fit the head ---------------------

    def fine_tune(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        """A task's copy of the trainable weights after ``steps`` AdamW steps on :func:`pair_loss`."""
        own = dict(self.backbone.named_parameters())
        params = {n: own[n].detach().clone().requires_grad_(True) for n in self.names}
        opt = torch.optim.AdamW(params.values(), lr=self.lr, weight_decay=self.weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = pair_loss(self.backbone(support_x, params), support_y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return {n: p.detach() for n, p in params.items()}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Fine-tune on the support pairs (``steps`` > 0), fit the head on the support embeddings."""
        params = self.fine_tune(support_x, support_y) if self.steps else None
        with torch.no_grad():
            fs = self.backbone(support_x, params)
            if self.head == "logreg":
                w, b = fit_logistic_regression(fs, support_y, ways, self.C)
            else:
                protos = prototypes(fs, support_y, ways)

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            fq = self.backbone(query_x, params)
            return fq @ w.T + b if self.head == "logreg" else self.cosine_logits(fq, protos)

        return predict
