"""The small fully-convolutional encoder the segmentation learners share (``backbone: seg-fcn``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metakit.errors import MetakitError

__all__ = ["SegFCN", "seg_fcn"]


class SegFCN(nn.Module):
    """``layers`` x [conv3x3, GroupNorm, ReLU], with a 2x2 max-pool after each of the first ``pools``,
    then one dilated [conv3x3, GroupNorm, ReLU] per entry of ``dilations``.

    The dilated layers widen the receptive field without losing resolution: four plain layers
    with one pool see 16 pixels, less than a 20-30 pixel character, so a location's feature
    cannot say *which* character it is on; with ``dilations: [2, 4]`` it sees 40. The output is a feature map ``[n, hidden, H / 2**pools, W / 2**pools]``: coarse enough to be
    cheap, fine enough that masked average pooling still sees small characters. GroupNorm, not
    BatchNorm, so that a 1-shot support set and evaluation behave as in training (no running
    statistics to drift between the two).

    Attributes:
        channels: feature channels (``hidden``).
        stride: the spatial downsampling factor, ``2**pools``.
    """

    def __init__(
        self, in_channels: int, hidden: int = 64, layers: int = 4, pools: int = 2, dilations: Sequence[int] = ()
    ) -> None:
        super().__init__()
        if layers < 1 or not 0 <= pools <= layers or hidden < 8 or hidden % 8 or any(int(d) < 1 for d in dilations):
            raise MetakitError(
                f"seg-fcn needs layers >= 1, 0 <= pools <= layers, hidden a multiple of 8 and dilations >= 1, "
                f"got layers={layers}, pools={pools}, hidden={hidden}, dilations={list(dilations)}."
            )
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.ReLU()]
            if i < pools:
                blocks.append(nn.MaxPool2d(2))
        for d in dilations:
            blocks += [nn.Conv2d(hidden, hidden, 3, padding=int(d), dilation=int(d)), nn.GroupNorm(8, hidden), nn.ReLU()]
        self.net = nn.Sequential(*blocks)
        self.channels = hidden
        self.stride = 2**pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[n, hidden, h, w]`` of images ``[n, C, H, W]``."""
        return self.net(x)


def seg_fcn(
    input_shape: Sequence[int], hidden: int = 64, layers: int = 4, pools: int = 2, dilations: Sequence[int] = ()
) -> SegFCN:
    """The ``seg-fcn`` backbone for images of ``input_shape`` ``(C, H, W)`` (see :class:`SegFCN`)."""
    if len(input_shape) != 3:
        raise MetakitError(f"seg-fcn takes images (C, H, W), got inputs of shape {list(input_shape)}.")
    return SegFCN(int(input_shape[0]), hidden=hidden, layers=layers, pools=pools, dilations=dilations)
