"""The continuous relaxation (DARTS, Liu et al. 2019): mixed operations weighted by architecture weights.

Every edge of a cell computes all operations of the space and sums them weighted by
``softmax(alpha / temperature)`` over its row of architecture weights. The weights ``alpha_normal``
and ``alpha_reduce`` are ordinary parameters of the :class:`SuperNet`, so any learner trains them
with the network weights: the gradient-based learners adapt them in the inner loop and meta-learn
them in the outer loop, which is MetaNAS (Elsken et al. 2020). Discretising them
(:mod:`metakit.nas.genotype`) gives the found architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metakit.nas.genotype import top_ops
from metakit.nas.space import Preprocess, SearchSpace, Zero, build_op, stem


class MixedOp(nn.Module):
    """All operations of the space on one edge; the output is their weighted sum."""

    def __init__(self, ops: Sequence[str], channels: int, stride: int, affine: bool = False) -> None:
        super().__init__()
        self.names = tuple(ops)
        self.ops = nn.ModuleList(build_op(name, channels, stride, affine) for name in self.names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i weights[i] * op_i(x)``; ``weights`` has one entry per operation.

        ``none`` contributes ``weights[i] * 0``, which is zero with a zero gradient, so it is
        skipped (its weight still matters through the softmax that made ``weights``).
        """
        return sum(w * op(x) for w, op in zip(weights, self.ops) if not isinstance(op, Zero))

    def discretize(self, weights: torch.Tensor, k: int = 1) -> nn.Module:
        """The edge after discretisation: its ``k`` strongest operations (not ``none``), summed.

        The returned module shares this edge's operation modules, so with weights that are one on
        the chosen operations and zero elsewhere it computes exactly what the mixed edge computes.
        """
        chosen = top_ops(self.names, weights, k)
        if len(chosen) == 1:
            return self.ops[chosen[0]]
        return OpSum([self.ops[i] for i in chosen])


class OpSum(nn.Module):
    """The sum of several operations on one input (an edge that keeps more than one operation)."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(op(x) for op in self.ops)


class SearchCell(nn.Module):
    """A cell whose every edge is a :class:`MixedOp`."""

    def __init__(self, space: SearchSpace, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = space.nodes
        self.preprocess = Preprocess(c_pp, c_p, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList()
        for node in range(space.nodes):
            for source in range(node + 2):
                stride = 2 if reduction and source < 2 else 1
                self.edges.append(MixedOp(space.ops, c, stride))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The cell's output from its two inputs, ``weights[e]`` weighting edge ``e``'s operations."""
        states = list(self.preprocess(s0, s1))
        offset = 0
        for _ in range(self.nodes):
            inputs = len(states)
            states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += inputs
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    """The one-shot network of the search space; the architecture weights are its parameters.

    Args:
        space: operations, cells, channels.
        in_channels: channels of the input images.
        temperature: softmax temperature of the architecture weights (DARTS: 1; lower values make
            each edge's mixture sharper for the same weights, and the weights effectively faster).
        learn_alphas: whether the architecture weights are trainable. Off for a warm-up phase
            that trains the network weights alone (they are then left out of every learner's
            inner loop and of the optimiser, but kept in checkpoints under the same names).
    """

    def __init__(self, space: SearchSpace, in_channels: int, temperature: float = 1.0, learn_alphas: bool = True) -> None:
        super().__init__()
        self.space = space
        self.temperature = float(temperature)
        self.stem = stem(in_channels, space.stem_multiplier * space.channels, affine=False)
        self.cells = nn.ModuleList(
            SearchCell(space, c_pp, c_p, c, reduction, reduction_prev)
            for c_pp, c_p, c, reduction, reduction_prev in space.cell_channels()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        shape = (space.edges, len(space.ops))
        # DARTS initialises the architecture weights near zero: every operation starts equally likely.
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape), requires_grad=learn_alphas)
        # A network without reduction cells has no reduction weights (an unused parameter would
        # sit in every optimiser and checkpoint for nothing).
        self.alpha_reduce = (
            nn.Parameter(1e-3 * torch.randn(shape), requires_grad=learn_alphas) if space.reductions else None
        )

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """The mixing weights of every edge, ``softmax(alpha / temperature)`` by cell type."""
        out = {"normal": torch.softmax(self.alpha_normal / self.temperature, dim=-1)}
        if self.alpha_reduce is not None:
            out["reduce"] = torch.softmax(self.alpha_reduce / self.temperature, dim=-1)
        return out

    def forward_with_weights(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features of ``x`` with explicit per-edge mixing weights (``{"normal": .., "reduce": ..}``)."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"])
        return self.pool(s1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[n, nodes * final channels]``."""
        return self.forward_with_weights(x, self.edge_weights())
