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

**Falling back on tasks unlike the training intents** (``fallback: true``). Meta-training
specialises the adapters to the training domain: an encoder meta-trained on banking intents loses
1-5 points to the untouched pretrained encoder on HWU64's assistant intents (docs/benchmarks.md).
With ``fallback`` the learner keeps a small reference of the training domain, a few sentences of
every training intent embedded by the *pretrained* encoder, collected from the training episodes
as they pass (their ``classes``), and saved with the run. A new task is scored by how close its
support sentences come to the training intents (the mean over sentences of the largest cosine
similarity to a training intent's centroid). The threshold is what "a new intent of the same
domain" looks like: the ``fallback_quantile`` quantile of the same score for the reference's own
sentences with their own intent left out, the situation of held-out intents. A task below it is
handled by the pretrained encoder (adapters off); one above, by the meta-trained one. Only the
training data sets the threshold; nothing is tuned on the tasks it is used for.
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
        fallback: use the pretrained encoder (LoRA adapters off) for tasks unlike the training
            intents; see the module docstring. Needs LoRA adapters and the training split's size.
        fallback_quantile: the quantile of same-domain held-out scores below which a task falls back.
        reference_per_class: training sentences of each intent kept as the domain reference.
    """

    #: Whether the last :meth:`adapt` used the pretrained encoder (``fallback``), for reports.
    fell_back: bool = False

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
        fallback: bool = False,
        fallback_quantile: float = 0.05,
        reference_per_class: int = 16,
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
        self.fallback = bool(fallback)
        if self.fallback:
            self._init_reference(task, fallback_quantile, reference_per_class)

    # -- the training domain's reference (fallback) ---------------------------------------------

    def _init_reference(self, task: TaskInfo, quantile: float, per_class: int) -> None:
        if not self.adapter_off:
            raise MetakitError("setfit_style fallback switches LoRA adapters off; it needs backbone lora_r > 0 and train_layers > 0.")
        if not task.num_classes:
            raise MetakitError("setfit_style fallback keeps a reference of the training intents; it needs the training split's classes.")
        if not 0 < quantile < 1 or not isinstance(per_class, int) or per_class < 2:
            raise MetakitError(f"setfit_style needs 0 < fallback_quantile < 1 and reference_per_class >= 2, got {quantile}, {per_class}.")
        self.fallback_quantile = float(quantile)
        dim = self.backbone.out_dim
        # Saved with the run: the reference is what a later evaluate/predict compares new tasks with.
        self.register_buffer("reference", torch.zeros(task.num_classes, per_class, dim))
        self.register_buffer("reference_count", torch.zeros(task.num_classes, dtype=torch.long))
        self._threshold: tuple[int, torch.Tensor, float] | None = None

    @property
    def adapter_off(self) -> Params:
        """Zeros for the LoRA ``B`` matrices: the adapters' update vanishes, leaving the pretrained encoder.

        Made on each use, on the weights' device, so a learner moved to a GPU keeps working.
        """
        return {n: torch.zeros_like(p) for n, p in self.backbone.named_parameters() if "lora_B" in n}

    def pretrained_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``x`` by the pretrained encoder (LoRA adapters off), without gradients."""
        # fork_rng: the adapters' dropout draws random numbers even when their output is zeroed, and
        # collecting the reference must not change the meta-training run it rides along with.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return F.normalize(self.backbone(x, self.adapter_off), dim=-1)

    def remember(self, inputs: torch.Tensor, classes: torch.Tensor) -> None:
        """Add sentences of training intents ``classes`` (global ids) to the reference, up to its size per intent."""
        room = self.reference.shape[1] - self.reference_count[classes]
        keep = []
        taken: dict[int, int] = {}
        for i, c in enumerate(classes.tolist()):
            if taken.get(c, 0) < room[i]:
                taken[c] = taken.get(c, 0) + 1
                keep.append(i)
        if not keep:
            return
        emb = self.pretrained_embeddings(inputs[keep])
        for row, i in zip(emb, keep):
            c = int(classes[i])
            self.reference[c, self.reference_count[c]] = row
            self.reference_count[c] += 1

    def remember_split(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the reference from a training split (its first sentences of each intent).

        Meta-training fills it from its episodes; this serves a run trained before ``fallback``
        existed, since the reference depends on the training data and the pretrained encoder only.
        """
        per_class = self.reference.shape[1]
        rows = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(self.reference.shape[0])])
        self.remember(inputs[rows], labels[rows])

    def domain_score(self, embeddings: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Per sentence, the largest cosine similarity to a training intent's centroid."""
        return (embeddings @ centroids.T).max(-1).values

    def threshold(self) -> tuple[torch.Tensor, float]:
        """The training intents' centroids and the score below which a task falls back (cached)."""
        version = int(self.reference_count.sum())
        if self._threshold is None or self._threshold[0] != version:
            full = self.reference_count >= 2
            if int(full.sum()) < 3:
                raise MetakitError("setfit_style fallback has no reference of the training intents yet "
                                   "(meta-train with fallback: true, or call remember_split on the training split).")
            count = self.reference_count[full]
            mask = torch.arange(self.reference.shape[1])[None, :] < count[:, None]
            sums = (self.reference[full] * mask[..., None]).sum(1)
            centroids = F.normalize(sums / count[:, None], dim=-1)
            # Each reference sentence against the centroids of the other intents: a new intent of the same domain.
            sentences = self.reference[full][mask]
            own = torch.arange(len(count)).repeat_interleave(count)
            sims = sentences @ centroids.T
            sims[torch.arange(len(own)), own] = -2.0
            tau = float(torch.quantile(sims.max(-1).values, self.fallback_quantile))
            self._threshold = (version, centroids, tau)
        return self._threshold[1], self._threshold[2]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # A run trained without fallback has no reference: keep the empty one (remember_split fills it).
        if self.fallback:
            for name in ("reference", "reference_count"):
                state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- meta-training: episodic cosine ProtoNet on the trainable weights -------------------------

    def cosine_logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``scale * cos(query, prototype)`` for query embeddings ``[..., q, d]`` and prototypes ``[..., n, d]``."""
        return self.scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """ProtoNet's loss; every sentence of the meta-batch goes through the encoder in one call."""
        batch = as_batch(batch)
        if self.fallback and batch.classes is not None:
            self._remember_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        return self.query_loss(self.cosine_logits(fq, prototypes(fs, batch.support_y, batch.ways)), batch)

    def _remember_batch(self, batch: MetaBatch) -> None:
        """Collect reference sentences of the batch's intents while the reference has room for them."""
        if bool((self.reference_count >= self.reference.shape[1]).all()):
            return
        for i in range(batch.num_tasks):
            task_classes = batch.classes[i]
            xs = torch.cat([batch.support_x[i], batch.query_x[i]])
            ys = torch.cat([batch.support_y[i], batch.query_y[i]])
            self.remember(xs, task_classes[ys])

    # -- adaptation: fine-tune a copy on the support pairs, then fit the head ---------------------

    def fine_tune(self, support_x: torch.Tensor, support_y: torch.Tensor, start: Params | None = None) -> Params:
        """A task's copy of the trainable weights after ``steps`` AdamW steps on :func:`pair_loss`.

        ``start`` replaces some of the weights it starts from (the adapters switched off on fallback).
        """
        own = {**dict(self.backbone.named_parameters()), **(start or {})}
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
        """Fine-tune on the support pairs (``steps`` > 0), fit the head on the support embeddings.

        With ``fallback``, a task unlike the training intents starts from the pretrained encoder.
        """
        start = None
        self.fell_back = False
        if self.fallback:
            centroids, tau = self.threshold()
            score = self.domain_score(self.pretrained_embeddings(support_x), centroids).mean()
            self.fell_back = bool(score < tau)
            start = self.adapter_off if self.fell_back else None
        params = self.fine_tune(support_x, support_y, start) if self.steps else start
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
