"""The cell-based search space: operations, cell topology and the macro network around the cells.

A DARTS-style cell (Liu et al. 2019) takes the outputs of the two previous cells, ``c_{k-2}`` and
``c_{k-1}``, and computes ``nodes`` intermediate nodes; node ``i`` may read both inputs and every
earlier node, so it has ``i + 2`` incoming *edges*. The cell's output is the concatenation of its
intermediate nodes. A *reduction* cell applies its input edges with stride 2 and doubles the
channel count; a *normal* cell keeps both. The network is a 3x3 convolution stem, ``cells`` cells,
global average pooling.

The space is sized for few-shot work on a CPU: at most :data:`MAX_CELLS` cells and
:data:`MAX_CHANNELS` channels (the width of a node in the first cell). Every operation ends in a
BatchNorm, whose learnable scale and shift are off during the search (``affine=False``, as in
DARTS) so that the architecture weights alone decide how much each operation contributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from metakit.errors import MetakitError, unknown_name

#: Most cells a network of this space may have.
MAX_CELLS = 4
#: Most channels of a node in the first cell (reduction cells double it).
MAX_CHANNELS = 32
#: Most intermediate nodes of a cell.
MAX_NODES = 4


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output's shape (a missing edge, in the relaxation)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 skip connection: two 1x1 convolutions offset by one pixel, concatenated (DARTS)."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise MetakitError(f"a reducing skip connection needs an even channel count, got {c_out}; use even channels.")
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # The shifted branch sees the odd pixels; padding keeps odd-sized maps the same size as the even branch.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool) -> nn.Sequential:
    """ReLU -> convolution -> BatchNorm (the cells' 1x1 input projections)."""
    return nn.Sequential(
        nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out, affine=affine),
    )


def separable_conv(c: int, kernel: int, stride: int, dilation: int, affine: bool) -> nn.Sequential:
    """ReLU -> depthwise ``kernel`` x ``kernel`` convolution -> pointwise 1x1 -> BatchNorm.

    DARTS stacks this block twice for its separable convolutions; one block halves the CPU cost,
    which the few-shot budget here needs.
    """
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, stride=stride, padding=padding, dilation=dilation, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
    )


def _pool(kind: str) -> Callable[[int, int, bool], nn.Module]:
    def build(c: int, stride: int, affine: bool) -> nn.Module:
        pool = (
            nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        # DARTS normalises pooled outputs in the search so they are on the scale of the convolutions'.
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=affine))

    return build


#: Operation name -> factory ``f(channels, stride, affine) -> nn.Module`` (same channels in and out).
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, stride, affine: Zero(stride),
    "skip_connect": lambda c, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, stride, affine: separable_conv(c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: separable_conv(c, 5, stride, 1, affine),
    "dil_conv_3x3": lambda c, stride, affine: separable_conv(c, 3, stride, 2, affine),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
}

#: The issue's operation set, in the order architecture weights are stored.
DEFAULT_OPS = (
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "none",
)


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """The operation ``name`` on ``channels`` channels with ``stride`` (1 or 2)."""
    if name not in OPS:
        raise unknown_name("operation", name, OPS)
    return OPS[name](channels, stride, affine)


def validate_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Check an operation set: non-empty, known names, no repeats, at least one besides ``none``."""
    if isinstance(ops, str):
        ops = [ops]
    ops = tuple(str(o) for o in ops)
    if not ops:
        raise MetakitError(
            f"the search space's operation set (ops) is empty; list some of: {', '.join(DEFAULT_OPS)}."
        )
    for op in ops:
        if op not in OPS:
            raise unknown_name("operation", op, OPS)
    repeated = sorted({o for o in ops if ops.count(o) > 1})
    if repeated:
        raise MetakitError(f"operation {repeated[0]!r} appears twice in ops; list each operation once.")
    if all(o == "none" for o in ops):
        raise MetakitError("ops holds only 'none'; add at least one operation that computes something, e.g. sep_conv_3x3.")
    return ops


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node ``i`` has ``i + 2`` inputs."""
    return sum(i + 2 for i in range(nodes))


def edge_index(node: int, source: int) -> int:
    """Index of the edge from state ``source`` (0, 1 = cell inputs; 2 + j = node j) into ``node``."""
    return sum(i + 2 for i in range(node)) + source


def default_reductions(cells: int) -> list[int]:
    """DARTS's placement: reduction cells at a third and two thirds of the depth."""
    return sorted({cells // 3, 2 * cells // 3}) if cells >= 2 else []


@dataclass(frozen=True)
class SearchSpace:
    """Which operations and what macro network: everything but the cells' wiring.

    Attributes:
        ops: operation names, the columns of the architecture weights.
        nodes: intermediate nodes per cell.
        cells: cells in the network.
        channels: channels of a node in the first cell (each reduction cell doubles it).
        reductions: indices of the reduction cells.
        stem_multiplier: the stem outputs ``stem_multiplier * channels`` channels.
    """

    ops: tuple[str, ...] = DEFAULT_OPS
    nodes: int = 3
    cells: int = 4
    channels: int = 16
    reductions: tuple[int, ...] = field(default_factory=lambda: tuple(default_reductions(4)))
    stem_multiplier: int = 2

    @classmethod
    def create(
        cls, ops: Sequence[str] = DEFAULT_OPS, nodes: int = 3, cells: int = 4, channels: int = 16,
        reductions: Sequence[int] | None = None, stem_multiplier: int = 2,
    ) -> SearchSpace:
        """Validate the settings (one clear line per problem) and build the space."""
        ops = validate_ops(ops)
        for label, value, high in (("cells", cells, MAX_CELLS), ("channels", channels, MAX_CHANNELS), ("nodes", nodes, MAX_NODES)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise MetakitError(f"the search space needs 1 <= {label} <= {high}, got {label}={value!r}.")
        if isinstance(stem_multiplier, bool) or not isinstance(stem_multiplier, int) or stem_multiplier < 1:
            raise MetakitError(f"stem_multiplier must be an integer >= 1, got {stem_multiplier!r}.")
        reductions = default_reductions(cells) if reductions is None else reductions
        if isinstance(reductions, int):
            reductions = [reductions]
        reductions = tuple(sorted({int(r) for r in reductions}))
        if any(r < 0 or r >= cells for r in reductions):
            raise MetakitError(f"reductions must be cell indices in 0..{cells - 1}, got {list(reductions)}.")
        if reductions and channels % 2:
            raise MetakitError(f"reduction cells need an even channel count, got channels={channels}.")
        return cls(ops, nodes, cells, channels, reductions, stem_multiplier)

    @property
    def edges(self) -> int:
        """Edges per cell."""
        return num_edges(self.nodes)

    def network(self) -> dict[str, Any]:
        """The macro settings as plain data (stored in a genotype's JSON)."""
        data = asdict(self)
        data.pop("ops")
        data["reductions"] = list(self.reductions)
        return data

    def cell_channels(self) -> list[tuple[int, int, int, bool, bool]]:
        """Per cell: ``(c_prev_prev, c_prev, c, reduction, previous_was_reduction)``."""
        c_curr = self.channels
        c_pp, c_p = self.stem_multiplier * c_curr, self.stem_multiplier * c_curr
        out, reduction_prev = [], False
        for i in range(self.cells):
            reduction = i in self.reductions
            if reduction:
                c_curr *= 2
            out.append((c_pp, c_p, c_curr, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, self.nodes * c_curr, reduction
        return out


class Preprocess(nn.Module):
    """The two input projections of a cell: ``c_{k-2}`` and ``c_{k-1}`` to the cell's width."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> None:
        super().__init__()
        # After a reduction cell, c_{k-2} is twice the resolution of c_{k-1}: halve it to match.
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else relu_conv_bn(c_pp, c, 1, 1, 0, affine)
        self.pre1 = relu_conv_bn(c_p, c, 1, 1, 0, affine)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pre0(s0), self.pre1(s1)


def stem(in_channels: int, out_channels: int, affine: bool) -> nn.Sequential:
    """3x3 convolution -> BatchNorm from the image to the first cells' inputs."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels, affine=affine))
