"""Self-supervised pretraining of a learner's backbone on the training split's images, labels unused.

Two objectives, both run before meta-training (see :class:`metakit.training.Trainer`) or before a
fine-tuning evaluation of the frozen features:

* ``rotation`` — RotNet (Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by
  Predicting Image Rotations", ICLR 2018): every image is shown at 0, 90, 180 and 270 degrees and
  a temporary linear head on the backbone's features predicts which (4-way cross-entropy). To tell
  the rotations apart the network has to recognise the shapes' canonical orientation, i.e. their
  parts and how they are arranged.
* ``simclr`` — SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive
  Learning of Visual Representations", ICML 2020): two random augmentations of each image go
  through the backbone and a temporary two-layer projection head; the NT-Xent loss pulls the two
  views of an image together and pushes them away from the other ``2N - 2`` views in the batch.

The temporary heads are thrown away afterwards; only the backbone (its weights and its
BatchNorm running statistics) keeps what was learned. Everything random (which images, which
rotations or augmentations, the heads' initialisation) comes from the run's seed, so the same
config gives the same backbone on CPU, and the global RNG state that meta-training starts from is
left exactly as it was.

Augmentations are written with plain torch ops on whole batches (``affine_grid`` /
``grid_sample`` for crops, broadcast masks for erasing): torchvision is not a dependency.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metakit.config import Config, PretrainConfig
from metakit.errors import MetakitError, unknown_name
from metakit.learners.base import NonFiniteLoss

__all__ = [
    "OBJECTIVES",
    "augment_views",
    "nt_xent",
    "pretrain",
    "rotate_batch",
    "validate_pretrain_config",
]

#: The self-supervised objectives ``pretrain.objective`` accepts.
OBJECTIVES = ("rotation", "simclr")

#: Points kept in ``pretraining.json``'s loss curve (each the mean of a window of steps).
CURVE_POINTS = 100

#: SimCLR projection output size (Chen et al. use 128 for every backbone).
PROJECTION_DIM = 128


# -- configuration ------------------------------------------------------------------------------


def validate_pretrain_config(cfg: Config | PretrainConfig) -> None:
    """Check the ``pretrain`` section, failing with one line that names the valid values.

    Accepts a whole :class:`~metakit.config.Config` (then combinations with other sections are
    checked too: the dataset must be an image dataset, and rotation prediction cannot learn when
    ``dataset.rotations`` already puts every rotation of every image in the training set) or just
    its :class:`~metakit.config.PretrainConfig`. ``objective: null`` (pretraining off) is valid.
    """
    p = cfg.pretrain if isinstance(cfg, Config) else cfg
    if p.objective is None:
        return
    if p.objective not in OBJECTIVES:
        err = unknown_name("pretrain.objective", p.objective, OBJECTIVES)
        raise MetakitError(f"{err} Or leave it empty (null) for no pretraining.")
    if p.steps < 1:
        raise MetakitError(f"pretrain.steps must be >= 1, got {p.steps}.")
    low = 2 if p.objective == "simclr" else 1  # NT-Xent needs at least one negative per view
    if p.batch_size < low:
        raise MetakitError(f"pretrain.batch_size must be >= {low} for {p.objective}, got {p.batch_size}.")
    if not p.lr > 0:
        raise MetakitError(f"pretrain.lr must be > 0, got {p.lr}.")
    if p.objective == "simclr" and not p.temperature > 0:
        raise MetakitError(f"pretrain.temperature must be > 0, got {p.temperature}.")
    if isinstance(cfg, Config):
        from metakit.datasets import get_dataset

        if get_dataset(cfg.dataset.name).task_type != "classification":
            raise MetakitError(
                f"pretraining needs an image dataset; {cfg.dataset.name!r} is a task distribution. "
                f"Set pretrain.objective to null."
            )
        if p.objective == "rotation" and cfg.dataset.rotations:
            raise MetakitError(
                "pretrain.objective=rotation cannot learn with dataset.rotations=true (the training images "
                "already hold every rotation of every image); use simclr or set dataset.rotations to false."
            )


# -- rotation prediction ------------------------------------------------------------------------


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of each image: ``[n, C, H, W]`` -> inputs ``[4n, C, H, W]``, labels ``[4n]``.

    Label ``r`` means rotated by ``r * 90`` degrees (counter-clockwise). Gidaris et al. found
    feeding all four rotations of an image in the same batch better than one random rotation:
    the network then has to compare them rather than guess from the image's style.
    """
    if images.shape[-1] != images.shape[-2]:
        raise MetakitError(
            f"rotation pretraining needs square images, got {images.shape[-2]}x{images.shape[-1]}; use simclr."
        )
    n = images.shape[0]
    inputs = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(n)
    return inputs, labels


# -- SimCLR -------------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random SimCLR-style view of each image in ``images`` ``[n, C, H, W]`` (floats in [0, 1]).

    Draws every random number from ``generator`` (on the CPU, so the same state gives the same
    views on any device). The pipeline, adapted from Chen et al. to small grey-scale drawings:

    1. random resized crop (area 50-100%, aspect 3/4-4/3) combined with a small rotation
       (+-15 degrees), as one affine resampling. SimCLR crops down to 8% of the area of 224 px
       photos; a 28 px character cropped that hard is no longer recognisable, so crops stay large.
       There is no horizontal flip: a mirrored character is often a different character.
    2. brightness/contrast jitter (p=0.8), the grey-scale part of SimCLR's colour distortion,
       so the views cannot be matched by their intensity histogram alone;
    3. additive Gaussian noise (sigma up to 0.1);
    4. random erasing (Zhong et al., AAAI 2020; p=0.5, 2-20% of the area), so that no single
       stroke is enough to match two views.
    """
    n, c, h, w = images.shape
    device = images.device
    # 1. Crop + rotation. affine_grid maps output coordinates (in [-1, 1]) to input coordinates:
    # x_in = R(angle) @ diag(crop_w, crop_h) @ x_out + centre, so the output shows a rotated crop of
    # relative size crop_w x crop_h centred at ``centre``, which stays inside the image.
    area = _uniform(n, 0.5, 1.0, generator)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
    crop_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    crop_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (1 - crop_w) * _uniform(n, -1.0, 1.0, generator)
    cy = (1 - crop_h) * _uniform(n, -1.0, 1.0, generator)
    angle = _uniform(n, -math.pi / 12, math.pi / 12, generator)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([crop_w * cos, -crop_h * sin, cx], -1), torch.stack([crop_w * sin, crop_h * cos, cy], -1)], 1
    ).to(device, images.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    # Zero padding: for line drawings (ink high) zero is the background colour.
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # 2. Brightness / contrast jitter, applied to 80% of the images as in SimCLR.
    jitter = (torch.rand(n, generator=generator) < 0.8).float()
    brightness = 1 + jitter * _uniform(n, -0.4, 0.4, generator)
    contrast = 1 + jitter * _uniform(n, -0.4, 0.4, generator)
    view = lambda t: t.to(device, images.dtype).view(n, 1, 1, 1)  # noqa: E731
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out * view(brightness) - mean) * view(contrast) + mean).clamp(0, 1)

    # 3. Gaussian noise with a per-image strength.
    sigma = _uniform(n, 0.0, 0.1, generator)
    noise = torch.randn(n, c, h, w, generator=generator)
    out = (out + view(sigma) * noise.to(device, images.dtype)).clamp(0, 1)

    # 4. Random erasing: one rectangle per chosen image, filled with the background (0).
    erase = torch.rand(n, generator=generator) < 0.5
    frac = _uniform(n, 0.02, 0.2, generator)
    log_aspect = _uniform(n, math.log(0.3), math.log(1 / 0.3), generator)
    eh = (frac * h * h * log_aspect.exp()).sqrt().clamp(1, h).floor()
    ew = (frac * w * w / log_aspect.exp()).sqrt().clamp(1, w).floor()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    box = (
        (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
        & erase.view(n, 1, 1)
    )
    return out.masked_fill(box.unsqueeze(1).to(device), 0.0)


def _nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity logits ``[2n, 2n]`` (self-similarity masked out) and each row's positive index."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = z @ z.T / temperature
    # A view is trivially most similar to itself: exclude it from its own softmax denominator.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return logits, targets


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

    ``z1[i]`` and ``z2[i]`` are projections ``[n, d]`` of two views of image ``i``. With cosine
    similarities ``s`` over all ``2n`` views, the loss of the positive pair ``(i, j)`` is
    ``-log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t))``, averaged over all ``2n`` ordered pairs.
    """
    logits, targets = _nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


def _projection_head(dim: int) -> nn.Module:
    # SimCLR's head: the loss is computed on g(h), not on h, which lets h keep information
    # (e.g. about the augmentations) that the contrastive loss would otherwise discard.
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, PROJECTION_DIM))


# -- the loop -----------------------------------------------------------------------------------


def _curve(losses: list[float], accuracies: list[float]) -> list[dict[str, float]]:
    """At most :data:`CURVE_POINTS` points, each the mean over a window of consecutive steps."""
    window = max(1, math.ceil(len(losses) / CURVE_POINTS))
    points = []
    for start in range(0, len(losses), window):
        ls, acc = losses[start : start + window], accuracies[start : start + window]
        points.append({"step": start + len(ls), "loss": sum(ls) / len(ls), "accuracy": sum(acc) / len(acc)})
    return points


def pretrain(experiment: Any, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Pretrain ``experiment.learner.backbone`` in place with ``experiment.config.pretrain``.

    Only the training split's images are used, never their labels. Writes
    ``RUN_DIR/pretraining.json`` (objective, settings, final loss and accuracy of the pretext task,
    seconds, a sampled loss curve) and ``RUN_DIR/checkpoints/pretrained_backbone.pt`` (the
    backbone's state dict, for fine-tuning or inspection), both atomically, and returns the JSON's
    content. ``accuracy`` is the pretext task's: rotation accuracy for ``rotation``, the fraction
    of views whose most similar other view is their positive for ``simclr``.

    Raises:
        MetakitError: bad ``pretrain`` settings, a dataset without images, or a loss that became
            NaN or infinite (:class:`~metakit.learners.base.NonFiniteLoss`).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from metakit import distributed as dist
    from metakit.utils import torch_save, write_json

    cfg = experiment.config
    p = cfg.pretrain
    if experiment.task.task_type != "classification" or "train" not in experiment.splits:
        raise MetakitError("pretraining needs an image dataset; this experiment has no training images.")
    validate_pretrain_config(p)
    if p.objective is None:
        raise MetakitError(f"pretrain.objective is not set; choose one of {', '.join(OBJECTIVES)}.")
    images = experiment.splits["train"].images  # uint8 [n, C, H, W]; labels deliberately unused
    if images.dim() != 4:
        raise MetakitError(f"pretraining needs images [n, C, H, W], got shape {tuple(images.shape)}.")
    if p.objective == "rotation" and images.shape[-1] != images.shape[-2]:
        rotate_batch(images[:1])  # raises the one-line error
    batch_size = min(p.batch_size, len(images))
    if p.objective == "simclr" and batch_size < 2:
        raise MetakitError(f"simclr pretraining needs at least 2 training images, the split has {len(images)}.")

    backbone: nn.Module = experiment.learner.backbone
    device = next(backbone.parameters()).device
    out_dim = getattr(backbone, "out_dim", None)
    if out_dim is None:  # a hand-built backbone; probe it without touching its BatchNorm statistics
        backbone.eval()
        with torch.no_grad():
            out_dim = backbone(images[:2].float().div(255).to(device)).shape[-1]
    out_dim = int(out_dim)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    accuracies: list[float] = []
    was_training = backbone.training
    columns = (
        TextColumn(f"[bold]pretraining ({p.objective})"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    start = time.perf_counter()
    # Fork the global RNG: the heads' initialisation (and anything random inside the backbone)
    # must neither depend on nor shift the global state that meta-training starts from.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        head = (nn.Linear(out_dim, 4) if p.objective == "rotation" else _projection_head(out_dim)).to(device)
        params = [q for q in backbone.parameters() if q.requires_grad] + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=p.lr)
        backbone.train()  # BatchNorm normalises with batch statistics and updates its running ones
        with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
            task = bar.add_task("pretrain", total=p.steps, info="")
            for step in range(1, p.steps + 1):
                # Sampling without replacement: a duplicate image in a SimCLR batch would be a
                # negative that is really a positive.
                idx = torch.randperm(len(images), generator=generator)[:batch_size]
                x = images[idx].float().div_(255)
                if p.objective == "rotation":
                    inputs, targets = rotate_batch(x.to(device))
                    logits = head(backbone(inputs))
                    loss = F.cross_entropy(logits, targets)
                else:
                    # Both views in one forward pass, so BatchNorm sees them together as in SimCLR.
                    views = torch.cat([augment_views(x, generator), augment_views(x, generator)]).to(device)
                    z = head(backbone(views))
                    logits, targets = _nt_xent_logits(z[:batch_size], z[batch_size:], p.temperature)
                    loss = F.cross_entropy(logits, targets)
                if not torch.isfinite(loss).all():
                    raise NonFiniteLoss(
                        f"pretraining ({p.objective}) loss became {loss.item()} at step {step}; lower pretrain.lr "
                        f"(now {p.lr}) or check the data for NaN values."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                accuracies.append((logits.detach().argmax(-1) == targets).float().mean().item())
                if step % 10 == 0 or step == p.steps:
                    bar.update(task, completed=step, info=f"loss {losses[-1]:.3f} acc {accuracies[-1]:.3f}")
    backbone.train(was_training)
    del head, optimizer  # the pretext heads are not part of the learner
    # Every process pretrains identically from the same seed; rank 0's result still wins, so
    # processes on a non-deterministic device cannot start meta-training from different weights.
    dist.broadcast_parameters(backbone)

    seconds = time.perf_counter() - start
    tail = max(1, min(10, len(losses)))
    record: dict[str, Any] = {
        "objective": p.objective,
        "steps": p.steps,
        "batch_size": batch_size,
        "lr": p.lr,
        **({"temperature": p.temperature} if p.objective == "simclr" else {}),
        "images": len(images),
        "final_loss": losses[-1],
        "final_loss_mean10": sum(losses[-tail:]) / tail,
        "final_accuracy_mean10": sum(accuracies[-tail:]) / tail,
        "seconds": round(seconds, 3),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "loss_curve": _curve(losses, accuracies),
    }
    if dist.is_main():
        root = Path(run_dir)
        torch_save({"objective": p.objective, "backbone": backbone.state_dict()}, root / "checkpoints" / "pretrained_backbone.pt")
        write_json(root / "pretraining.json", record)
    return record
