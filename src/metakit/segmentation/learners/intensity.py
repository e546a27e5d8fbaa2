"""A baseline with no learning: foreground by the support's intensity statistics (``seg-intensity``).

The support masks split the support pixels into foreground and background; each is modelled as
a Gaussian over the pixel's channel values (diagonal covariance), with the foreground share of
the support pixels as the prior. A query pixel's foreground probability is Bayes' rule on the
two. On the embedded scenes this finds bright ink but also the bright clutter strokes, and it
knows nothing about shape: it is the floor that shows what learning adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner

__all__ = ["IntensityBaseline"]


class IntensityBaseline(MaskLearner):
    """Two Gaussians over pixel values, fitted to the support masks; no parameters to meta-train.

    Args:
        backbone: unused (the baseline reads pixels); any backbone the config names is ignored.
        task: a segmentation task.
        min_std: a floor on each Gaussian's standard deviation, so a flat support region does
            not give a degenerate, overconfident model.
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo, min_std: float = 0.02) -> None:
        super().__init__(nn.Identity(), task)  # the pixels themselves: nothing trainable
        self.min_std = float(min_std)

    def prepare(self, support_x: torch.Tensor, support_y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """Mean, standard deviation and log-prior of the background, then of the foreground pixels."""
        pixels = support_x.permute(0, 2, 3, 1).reshape(-1, support_x.shape[1])
        fg = support_y.reshape(-1) > 0.5
        state = []
        for part in (~fg, fg):
            values = pixels[part] if part.any() else pixels
            mean, std = values.mean(0), values.std(0, unbiased=False).clamp_min(self.min_std)
            state.append((mean, std, math.log(max(part.float().mean().item(), 1e-6))))
        return state

    def decode(self, state: list[tuple[torch.Tensor, torch.Tensor, float]], query_x: torch.Tensor) -> torch.Tensor:
        """Per-pixel log-likelihoods of background and foreground plus log-priors, as logits."""
        query = query_x.permute(0, 2, 3, 1)  # [n, H, W, C]
        logits = [
            (-0.5 * ((query - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1) + log_prior
            for mean, std, log_prior in state
        ]
        return torch.stack(logits, dim=1)
