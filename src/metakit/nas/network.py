"""Networks of the search space as backbones: the ``supernet`` to search with, ``nas`` to train a genotype.

``backbone: {name: supernet, ...}`` is the one-shot network (:class:`~metakit.nas.mixed.SuperNet`)
whose parameters include the architecture weights; ``backbone: {name: nas, genotype: PATH}``
builds the discrete network of a ``genotype.json`` so that a found (or any) architecture is
meta-trained from scratch with the ordinary ``metakit train``. Neither is an ``nn.Sequential``,
so the gradient-based learners run them through ``torch.func.functional_call``; their BatchNorm
layers follow the learners' per-task batch statistics like any other backbone's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metakit.backbones import register_backbone
from metakit.errors import MetakitError
from metakit.nas.genotype import CellGenotype, Genotype
from metakit.nas.mixed import SuperNet
from metakit.nas.space import DEFAULT_OPS, Preprocess, SearchSpace, build_op, edge_index, num_edges, stem


class Cell(nn.Module):
    """A discrete cell: each node sums its kept operations applied to their inputs."""

    def __init__(
        self, cell: CellGenotype, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, affine: bool
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess = Preprocess(c_pp, c_p, c, reduction_prev, affine)
        self.sources = [[source for _, source in node] for node in cell]
        self.nodes = nn.ModuleList(
            nn.ModuleList(build_op(op, c, 2 if reduction and source < 2 else 1, affine) for op, source in node)
            for node in cell
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = list(self.preprocess(s0, s1))
        for ops, sources in zip(self.nodes, self.sources):
            states.append(sum(op(states[s]) for op, s in zip(ops, sources)))
        return torch.cat(states[2:], dim=1)


class NASNetwork(nn.Module):
    """The discrete network of ``genotype`` on the macro network ``space``: stem, cells, global pooling."""

    def __init__(self, genotype: Genotype, space: SearchSpace, in_channels: int, affine: bool = True) -> None:
        super().__init__()
        self.genotype = genotype
        self.space = space
        self.stem = stem(in_channels, space.stem_multiplier * space.channels, affine)
        self.cells = nn.ModuleList(
            Cell(genotype.cell(reduction), c_pp, c_p, c, reduction, reduction_prev, affine)
            for c_pp, c_p, c, reduction, reduction_prev in space.cell_channels()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[n, nodes * final channels]``."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.pool(s1).flatten(1)


def derive(supernet: SuperNet, genotype: Genotype) -> NASNetwork:
    """The discrete network of ``genotype`` with the weights ``supernet`` holds for its operations.

    With mixing weights one on the kept operations and zero elsewhere, the supernet computes
    exactly this network (the tests check it): discretisation keeps the chosen operations as they are.
    """
    space = supernet.space
    if genotype.ops != space.ops or genotype.nodes != space.nodes:
        raise MetakitError("the genotype was not discretised from this supernet's space (ops or nodes differ).")
    net = NASNetwork(genotype, space, supernet.stem[0].in_channels, affine=False)
    net.stem.load_state_dict(supernet.stem.state_dict())
    for dst, src in zip(net.cells, supernet.cells):
        dst.preprocess.load_state_dict(src.preprocess.state_dict())
        for node, (ops, sources) in enumerate(zip(dst.nodes, dst.sources)):
            for module, source, (name, _) in zip(ops, sources, genotype.cell(dst.reduction)[node]):
                module.load_state_dict(src.edges[edge_index(node, source)].ops[space.ops.index(name)].state_dict())
    return net


def one_hot_weights(genotype: Genotype) -> dict[str, torch.Tensor]:
    """Mixing weights that select exactly ``genotype``'s operations (1 on kept ops, 0 elsewhere)."""
    out = {}
    for label, cell in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        if not cell:
            continue
        w = torch.zeros(num_edges(genotype.nodes), len(genotype.ops))
        for node, entries in enumerate(cell):
            for op, source in entries:
                w[edge_index(node, source), genotype.ops.index(op)] = 1.0
        out[label] = w
    return out


def _image_shape(input_shape: Sequence[int], name: str) -> None:
    if len(input_shape) != 3:
        raise MetakitError(f"backbone {name} needs image inputs [C, H, W], got shape {list(input_shape)}.")


@register_backbone("supernet")
def supernet(
    input_shape: tuple[int, ...], ops: Sequence[str] = DEFAULT_OPS, nodes: int = 3, cells: int = 4, channels: int = 16,
    reductions: Sequence[int] | None = None, stem_multiplier: int = 2, temperature: float = 1.0,
    learn_alphas: bool = True,
) -> nn.Module:
    """The DARTS one-shot network of the search space; its architecture weights are parameters.

    Args:
        ops: the operation set (default: the seven of :data:`~metakit.nas.space.DEFAULT_OPS`).
        nodes: intermediate nodes per cell (at most 4).
        cells: cells (at most 4).
        channels: channels of a node in the first cell (at most 32; reduction cells double it).
        reductions: indices of the reduction cells (default: at a third and two thirds of the depth).
        stem_multiplier: the stem outputs ``stem_multiplier * channels`` channels.
        temperature: softmax temperature of the architecture weights.
        learn_alphas: train the architecture weights (off: only the network weights, a warm-up).
    """
    _image_shape(input_shape, "supernet")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise MetakitError(f"supernet temperature must be > 0, got {temperature!r}.")
    space = SearchSpace.create(ops, nodes, cells, channels, reductions, stem_multiplier)
    if not isinstance(learn_alphas, bool):
        raise MetakitError(f"supernet learn_alphas must be true or false, got {learn_alphas!r}.")
    return SuperNet(space, input_shape[0], temperature, learn_alphas)


def load_genotype(genotype: str | Path | Mapping[str, Any] | Genotype | None) -> Genotype:
    """A genotype from a ``genotype.json`` path, its parsed mapping, or a :class:`Genotype`."""
    if genotype is None:
        raise MetakitError(
            "backbone nas needs genotype: the path of a genotype.json (from metakit nas search) or the genotype itself."
        )
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, Mapping):
        return Genotype.from_dict(dict(genotype), "backbone.genotype")
    return Genotype.load(genotype)


@register_backbone("nas")
def nas(
    input_shape: tuple[int, ...], genotype: str | Mapping[str, Any] | None = None, cells: int | None = None,
    channels: int | None = None, reductions: Sequence[int] | None = None, stem_multiplier: int | None = None,
    affine: bool = True,
) -> nn.Module:
    """The discrete network of a genotype (the searched macro settings unless overridden here).

    Args:
        genotype: path of a ``genotype.json``, or its content as a mapping.
        cells, channels, reductions, stem_multiplier: override the genotype's macro network.
        affine: learnable BatchNorm scale and shift (on for training a found architecture).
    """
    _image_shape(input_shape, "nas")
    g = load_genotype(genotype)
    space = g.space(cells=cells, channels=channels, reductions=reductions, stem_multiplier=stem_multiplier)
    return NASNetwork(g, space, input_shape[0], affine=affine)
