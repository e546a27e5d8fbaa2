"""P>M>F: Pre-train, Meta-train, Fine-tune (Hu, Li, Stühmer, Kim & Hospedales, CVPR 2022).

* **P**: start from a pretrained backbone (``backbone: pretrained``, ``timm``, ``torchvision`` or
  ``open_clip`` with ``freeze: false`` or ``freeze: N``; any image backbone works).
* **M**: meta-train ProtoNet on it with the paper's cosine classifier: logits are
  ``scale * (cos(query, prototype) + bias)``, with ``scale`` (initially 10) and ``bias`` (0) learned.
* **F**: at test time, for each episode, fine-tune a copy of the backbone on its support set
  (Algorithm 1 of the paper): each step is a pseudo-episode whose support set is the support set
  itself (prototypes recomputed with the current weights) and whose queries are an augmented copy
  of it (DiffAugment-style random flips, brightness, saturation, contrast and translation, applied
  with probability ``augment_prob``), trained with the ProtoNet loss and Adam for
  ``finetune_steps`` steps (50 in the paper). Only the backbone's trainable parameters move
  (``freeze: N`` fine-tunes the last N blocks). Queries are then classified against prototypes
  computed with the fine-tuned copy; the meta-trained weights are never changed.

The fine-tuning learning rate is chosen once, after meta-training, as in the paper: every value of
``lr_grid`` (0 = no fine-tuning, i.e. plain P>M) is scored on the first ``select_episodes`` fixed
validation episodes and the best is kept (ties go to the smaller rate). The trainer calls
:meth:`PMF.after_training` on the best checkpoint; the choice is stored in the checkpoint (buffer
``chosen_lr``) and recorded in ``training.json`` (``pmf_finetune_lr`` and the validation accuracy
of every rate). Validation during meta-training uses no fine-tuning, so it stays as cheap as
ProtoNet's. ``finetune_lr`` fixes the rate instead (also at evaluation time, as an override).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks, prototypes
from metakit.learners.registry import register_learner

if TYPE_CHECKING:
    from metakit.experiment import Experiment

AUGMENTATIONS = ("flip", "color", "translation")


def diff_augment(images: torch.Tensor, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """Random flips, colour jitter and translation of images ``[n, C, H, W]`` in ``[0, 1]`` (DiffAugment).

    Per image: ``flip`` mirrors left-right with probability 0.5; ``color`` adds a brightness
    offset in [-0.5, 0.5), scales saturation by [0, 2) and contrast by [0.5, 1.5) (Zhao et al.
    2020, as in the P>M>F code); ``translation`` shifts by up to 1/8 of the size, filling with 0.
    """
    x = images
    n = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device, x.dtype)

    if "flip" in kinds:
        flip = rand(n) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if "color" in kinds:
        x = x + (rand(n, 1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean
    if "translation" in kinds:
        h, w = x.shape[-2:]
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        if sh or sw:
            padded = F.pad(x, (sw, sw, sh, sh))
            dy = torch.randint(0, 2 * sh + 1, (n,), generator=generator).tolist()
            dx = torch.randint(0, 2 * sw + 1, (n,), generator=generator).tolist()
            x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return x


@register_learner("pmf")
class PMF(Learner):
    """ProtoNet meta-training on a pretrained backbone, with test-time fine-tuning on the augmented support set.

    Args:
        backbone: an image backbone with trainable parameters (a pretrained one with
            ``freeze: false`` or ``freeze: N``, or any other).
        task: task description (image inputs).
        finetune_lr: fix the fine-tuning learning rate (0 = never fine-tune); ``None`` (default)
            chooses it from ``lr_grid`` on validation episodes after meta-training.
        lr_grid: candidate rates (the paper searches 0, 1e-4, 1e-3, 1e-2).
        finetune_steps: Adam steps per test episode (50 in the paper).
        augment: the augmentations of the pseudo-queries, among ``flip``, ``color``, ``translation``.
        augment_prob: probability that a fine-tuning step augments its pseudo-queries (0.9).
        select_episodes: validation episodes each candidate rate is scored on.
        seed: seed of the augmentations (the same support set is always fine-tuned the same way).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        finetune_lr: float | None = None,
        lr_grid: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
        finetune_steps: int = 50,
        augment: Sequence[str] = AUGMENTATIONS,
        augment_prob: float = 0.9,
        select_episodes: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, task)
        if len(task.input_shape) != 3:
            raise MetakitError(
                f"pmf fine-tunes on augmented images, but its inputs have shape {list(task.input_shape)} (feature "
                f"vectors, e.g. a frozen backbone's cached features); use an image backbone with freeze: false or an "
                f"integer N."
            )
        if not any(p.requires_grad for p in backbone.parameters()):
            raise MetakitError(
                "pmf meta-trains and fine-tunes the backbone, but it has no trainable parameters; set "
                "backbone.freeze: false or an integer N (train the last N blocks)."
            )
        grid = [float(v) for v in lr_grid]
        if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
            raise MetakitError(f"pmf lr_grid must be a non-empty list of rates >= 0, got {list(lr_grid)}.")
        if finetune_lr is not None and (not math.isfinite(float(finetune_lr)) or float(finetune_lr) < 0):
            raise MetakitError(f"pmf finetune_lr must be a rate >= 0, got {finetune_lr!r}.")
        unknown = [a for a in augment if a not in AUGMENTATIONS]
        if unknown:
            raise MetakitError(f"unknown pmf augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}.")
        if finetune_steps < 0 or select_episodes < 1 or not 0 <= augment_prob <= 1:
            raise MetakitError(
                f"pmf needs finetune_steps >= 0, select_episodes >= 1 and 0 <= augment_prob <= 1, got "
                f"{finetune_steps}, {select_episodes} and {augment_prob}."
            )
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.fixed_lr = None if finetune_lr is None else float(finetune_lr)
        self.lr_grid = sorted(set(grid))
        self.finetune_steps, self.augment, self.augment_prob = int(finetune_steps), tuple(augment), float(augment_prob)
        self.select_episodes, self.seed = int(select_episodes), int(seed)
        # The chosen rate travels with the weights; NaN until chosen (no fine-tuning meanwhile).
        self.register_buffer("chosen_lr", torch.tensor(float("nan"), dtype=torch.float64))

    # -- ProtoNet with the cosine classifier (P>M) --------------------------------------------

    def logits(self, query: torch.Tensor, protos: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``scale * (cos(query, prototype) + bias)`` for queries ``[..., q, d]`` and prototypes ``[..., n, d]``."""
        scale, bias = (self.scale.detach(), self.bias.detach()) if detach else (self.scale, self.bias)
        cos = F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)
        return scale * (cos + bias)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """ProtoNet's loss; all tasks of the meta-batch go through the backbone in one forward pass."""
        batch = as_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        return self.query_loss(self.logits(fq, prototypes(fs, batch.support_y, batch.ways)), batch)

    # -- test-time fine-tuning (F) ------------------------------------------------------------

    @property
    def finetune_lr(self) -> float:
        """The rate fine-tuning uses now: ``finetune_lr`` if given, else the chosen one (0 before the choice)."""
        if self.fixed_lr is not None:
            return self.fixed_lr
        lr = float(self.chosen_lr)
        return 0.0 if math.isnan(lr) else lr

    def fine_tune(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int, lr: float) -> nn.Module:
        """A copy of the backbone fine-tuned on pseudo-episodes of the augmented support set."""
        net = copy.deepcopy(self.backbone)
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        generator = torch.Generator().manual_seed(self.seed)
        n = len(support_x)
        with torch.enable_grad():
            for _ in range(self.finetune_steps):
                augment = float(torch.rand((), generator=generator)) < self.augment_prob
                pseudo = diff_augment(support_x, self.augment, generator) if augment else support_x
                features = net(torch.cat([support_x, pseudo]))  # one pass: prototypes and pseudo-queries
                protos = prototypes(features[:n], support_y, ways)
                loss = F.cross_entropy(self.logits(features[n:], protos, detach=True), support_y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return net

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Fine-tune a copy of the backbone (when the rate is > 0), then prototypes with it."""
        lr = self.finetune_lr
        net = self.fine_tune(support_x, support_y, ways, lr) if lr > 0 and self.finetune_steps else self.backbone
        protos = prototypes(net(support_x), support_y, ways)
        return lambda query_x: self.logits(net(query_x), protos)

    # -- choosing the rate on validation episodes ---------------------------------------------

    def after_training(self, experiment: Experiment, progress: bool = False) -> dict[str, Any]:
        """Score every rate of ``lr_grid`` on validation episodes, keep the best; returns the record."""
        if self.fixed_lr is not None:
            return {"pmf_finetune_lr": self.fixed_lr, "pmf_lr_selection": "fixed by learner.finetune_lr"}
        from rich.console import Console

        from metakit.episodes import FixedEpisodes
        from metakit.learners.scoring import evaluate_learner

        ev = experiment.config.eval
        # The first validation episodes of training's own validation set (its seed + 1).
        episodes = FixedEpisodes(experiment.val_source(), self.select_episodes, ev.seed + 1)
        device = next(self.parameters()).device
        console = Console(stderr=True)
        scores: dict[str, float] = {}
        best_lr, best = 0.0, -1.0
        for lr in self.lr_grid:
            self.chosen_lr.fill_(lr)
            result = evaluate_learner(self, episodes, device=device)
            scores[repr(lr)] = result.mean
            if progress:
                console.print(f"pmf: fine-tuning lr {lr:g}: val accuracy {result.mean:.4f} ± {result.ci95:.4f} ({len(episodes)} episodes)")
            if result.mean > best:  # the grid is sorted, so ties keep the smaller rate
                best_lr, best = lr, result.mean
        self.chosen_lr.fill_(best_lr)
        return {"pmf_finetune_lr": best_lr, "pmf_lr_val_accuracy": scores, "pmf_lr_episodes": len(episodes)}
