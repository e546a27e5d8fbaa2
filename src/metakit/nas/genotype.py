"""A discrete architecture (genotype): which operations on which edges of the normal and reduction cell.

Discretisation follows DARTS: on every edge rank the operations other than ``none`` by their
mixing weight; a node keeps its ``edges_per_node`` strongest incoming edges (an edge's strength is
its strongest operation's weight) and each kept edge its ``ops_per_edge`` strongest operations.

JSON form (``genotype.json``)::

    {"format": "metakit-nas-genotype", "version": 1,
     "ops": ["sep_conv_3x3", ...],                      # the space's operation set
     "nodes": 3,
     "normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...],   # per node: [op, input] pairs
     "reduce": [...],                                   # [] when the network has no reduction cell
     "network": {"nodes": 3, "cells": 4, "channels": 16, "reductions": [1, 2], "stem_multiplier": 2}}

Inputs are numbered as in DARTS: 0 is the cell's input ``c_{k-2}``, 1 is ``c_{k-1}``, ``2 + j`` is
intermediate node ``j``. ``network`` records the macro settings of the search, which the ``nas``
backbone uses unless its options override them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metakit.errors import MetakitError, unknown_name
from metakit.nas.space import OPS, SearchSpace, edge_index, validate_ops
from metakit.utils import write_text

FORMAT = "metakit-nas-genotype"
VERSION = 1
#: Macro settings a genotype's ``network`` may hold (the fields of :class:`SearchSpace` but ``ops``).
NETWORK_KEYS = {"nodes", "cells", "channels", "reductions", "stem_multiplier"}

#: One kept operation of a node: ``(operation name, input index)``.
Entry = tuple[str, int]
#: A cell: per intermediate node, its kept operations.
CellGenotype = tuple[tuple[Entry, ...], ...]


def top_ops(names: Sequence[str], weights: torch.Tensor | Sequence[float], k: int = 1) -> list[int]:
    """Indices of the ``k`` strongest operations other than ``none``, strongest first (ties: the earlier)."""
    values = weights.detach().tolist() if isinstance(weights, torch.Tensor) else [float(w) for w in weights]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return [i for i in order if names[i] != "none"][:k]


@dataclass(frozen=True)
class Genotype:
    """The wiring of the normal and the reduction cell, plus the macro network of the search."""

    ops: tuple[str, ...]
    normal: CellGenotype
    reduce: CellGenotype
    network: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        """Intermediate nodes per cell."""
        return len(self.normal)

    def cell(self, reduction: bool) -> CellGenotype:
        """The reduction or the normal cell; one clear line if the genotype has no reduction cell."""
        if reduction and not self.reduce:
            raise MetakitError(
                "the genotype has no reduction cell (it was searched without one); set reductions: [] for its network."
            )
        return self.reduce if reduction else self.normal

    def space(self, **overrides: Any) -> SearchSpace:
        """The search space of this genotype's macro network, with ``overrides`` (e.g. ``channels=32``)."""
        settings = {**self.network, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(settings) - NETWORK_KEYS)
        if unknown:
            raise MetakitError(
                f"unknown network setting {unknown[0]!r} in the genotype; valid: {', '.join(sorted(NETWORK_KEYS))}."
            )
        settings["nodes"] = self.nodes
        return SearchSpace.create(ops=self.ops, **settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the JSON form."""

        def cell(c: CellGenotype) -> list[list[list[Any]]]:
            return [[[op, source] for op, source in node] for node in c]

        return {
            "format": FORMAT, "version": VERSION, "ops": list(self.ops), "nodes": self.nodes,
            "normal": cell(self.normal), "reduce": cell(self.reduce), "network": dict(self.network),
        }

    def to_json(self) -> str:
        """The JSON text (indented)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        """Write the JSON form to ``path`` atomically."""
        write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, where: str = "genotype") -> Genotype:
        """Validate plain data (the JSON form) into a genotype; ``where`` names the source in errors."""
        if not isinstance(data, dict):
            raise MetakitError(f"{where} must be a JSON object written by metakit nas search, got {type(data).__name__}.")
        if data.get("format", FORMAT) != FORMAT:
            raise MetakitError(f"{where} is not a metakit genotype (format {data.get('format')!r}); pass a genotype.json.")
        for key in ("ops", "normal"):
            if key not in data:
                raise MetakitError(f"{where} lacks {key!r}; pass a genotype.json written by metakit nas search.")
        ops = validate_ops(data["ops"])
        normal = _cell(data["normal"], ops, f"{where} normal cell")
        reduce = _cell(data.get("reduce") or [], ops, f"{where} reduction cell")
        if reduce and len(reduce) != len(normal):
            raise MetakitError(f"{where}: the reduction cell has {len(reduce)} nodes, the normal cell {len(normal)}; they must match.")
        network = data.get("network") or {}
        if not isinstance(network, dict):
            raise MetakitError(f"{where}: network must be a mapping of macro settings, got {network!r}.")
        return cls(ops, normal, reduce, dict(network))

    @classmethod
    def from_json(cls, text: str, where: str = "genotype") -> Genotype:
        """Parse the JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetakitError(f"{where} is not valid JSON (line {exc.lineno}); pass a genotype.json.") from None
        return cls.from_dict(data, where)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read a ``genotype.json``."""
        path = Path(path)
        if not path.is_file():
            raise MetakitError(f"genotype file {path} not found; pass the genotype.json of a metakit nas search run.")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

    def describe(self) -> str:
        """One line per cell, e.g. ``normal: n0 = sep_conv_3x3(c_k-2) + skip_connect(c_k-1); ...``."""
        lines = []
        for label, cell in (("normal", self.normal), ("reduce", self.reduce)):
            if cell:
                nodes = [f"n{i} = " + " + ".join(f"{op}({input_label(s)})" for op, s in node) for i, node in enumerate(cell)]
                lines.append(f"{label}: " + "; ".join(nodes))
        return "\n".join(lines)


def input_label(source: int) -> str:
    """Human name of input ``source`` of a node: ``c_k-2``, ``c_k-1`` or ``n<j>``."""
    return ("c_k-2", "c_k-1")[source] if source < 2 else f"n{source - 2}"


def _cell(data: Any, ops: Sequence[str], where: str) -> CellGenotype:
    if not isinstance(data, list):
        raise MetakitError(f"{where} must be a list of nodes, each a list of [op, input] pairs.")
    nodes = []
    for i, node in enumerate(data):
        if not isinstance(node, list) or not node:
            raise MetakitError(f"{where}, node {i}: needs a non-empty list of [op, input] pairs.")
        entries = []
        for entry in node:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise MetakitError(f"{where}, node {i}: {entry!r} is not an [op, input] pair.")
            op, source = entry
            if op not in OPS:
                raise unknown_name("operation", op, OPS)
            if op not in ops:
                raise MetakitError(f"{where}, node {i}: operation {op!r} is not in the genotype's ops {list(ops)}.")
            if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < i + 2:
                raise MetakitError(f"{where}, node {i}: input {source!r} must be an integer in 0..{i + 1}.")
            entries.append((str(op), int(source)))
        nodes.append(tuple(entries))
    if not nodes:
        raise MetakitError(f"{where} has no nodes; a cell needs at least one.")
    return tuple(nodes)


def discretize_cell(weights: torch.Tensor, ops: Sequence[str], nodes: int, edges_per_node: int, ops_per_edge: int) -> CellGenotype:
    """The discrete cell from mixing weights ``[edges, ops]``: top edges per node, top ops per edge."""
    cell = []
    for node in range(nodes):
        strength = {}
        for source in range(node + 2):
            row = weights[edge_index(node, source)]
            best = top_ops(ops, row, 1)
            strength[source] = float(row[best[0]]) if best else float("-inf")
        kept = sorted(strength, key=lambda s: (-strength[s], s))[: min(edges_per_node, node + 2)]
        entries = []
        for source in sorted(kept):
            for i in sorted(top_ops(ops, weights[edge_index(node, source)], ops_per_edge)):
                entries.append((ops[i], source))
        cell.append(tuple(entries))
    return tuple(cell)


def check_discretization(edges_per_node: int, ops_per_edge: int, space: SearchSpace) -> None:
    """One clear line if the top-k settings cannot be met by ``space``."""
    real = [o for o in space.ops if o != "none"]
    if isinstance(edges_per_node, bool) or not isinstance(edges_per_node, int) or edges_per_node < 1:
        raise MetakitError(f"nas.edges_per_node must be an integer >= 1, got {edges_per_node!r}.")
    if isinstance(ops_per_edge, bool) or not isinstance(ops_per_edge, int) or not 1 <= ops_per_edge <= len(real):
        raise MetakitError(
            f"nas.ops_per_edge must be an integer in 1..{len(real)} (the operations other than none), got {ops_per_edge!r}."
        )


def discretize(
    weights: dict[str, torch.Tensor], space: SearchSpace, edges_per_node: int = 2, ops_per_edge: int = 1
) -> Genotype:
    """The genotype of mixing weights ``{"normal": [edges, ops], "reduce": ...}`` (see the module doc)."""
    check_discretization(edges_per_node, ops_per_edge, space)
    normal = discretize_cell(weights["normal"], space.ops, space.nodes, edges_per_node, ops_per_edge)
    reduce = (
        discretize_cell(weights["reduce"], space.ops, space.nodes, edges_per_node, ops_per_edge)
        if "reduce" in weights else ()
    )
    return Genotype(space.ops, normal, reduce, space.network())


def random_genotype(space: SearchSpace, rng: random.Random, edges_per_node: int = 2, ops_per_edge: int = 1) -> Genotype:
    """A uniformly random genotype of ``space`` with the same top-k structure as a discretised one."""
    check_discretization(edges_per_node, ops_per_edge, space)
    real = [o for o in space.ops if o != "none"]

    def cell() -> CellGenotype:
        nodes = []
        for node in range(space.nodes):
            sources = sorted(rng.sample(range(node + 2), min(edges_per_node, node + 2)))
            entries = []
            for source in sources:
                for op in sorted(rng.sample(real, ops_per_edge), key=space.ops.index):
                    entries.append((op, source))
            nodes.append(tuple(entries))
        return tuple(nodes)

    normal = cell()
    reduce = cell() if space.reductions else ()
    return Genotype(space.ops, normal, reduce, space.network())


def draw(genotype: Genotype, title: str | None = None) -> Any:
    """The figure of the normal and reduction cell side by side (saved by :func:`metakit.runs.write_report`)."""
    from matplotlib.patches import FancyArrowPatch

    from metakit.runs import pyplot

    plt = pyplot()

    cells = [("normal cell", genotype.normal)] + ([("reduction cell", genotype.reduce)] if genotype.reduce else [])
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(genotype.ops)}
    n = genotype.nodes
    fig, axes = plt.subplots(1, len(cells), figsize=(1.3 * (n + 2.5) * len(cells), 4.2), squeeze=False)
    for ax, (label, cell) in zip(axes[0], cells):
        # Inputs on the left, intermediate nodes on a diagonal, the concatenated output on the right.
        # Inputs on the left, intermediate nodes zig-zagging left to right (so no edge runs
        # through a node), the concatenated output on the right.
        pos = {0: (0.0, 1.6), 1: (0.0, -1.6)}
        for j in range(n):
            pos[2 + j] = (1.3 * (j + 1), 0.8 if j % 2 == 0 else -0.8)
        out = (1.3 * (n + 1), 0.0)
        for source, xy in pos.items():
            colour = "#cfe2f3" if source < 2 else "#fff2cc"
            ax.text(*xy, input_label(source), ha="center", va="center", fontsize=9, zorder=3,
                    bbox={"boxstyle": "round,pad=0.35", "fc": colour, "ec": "#444444"})
        ax.text(*out, "c_k", ha="center", va="center", fontsize=9, zorder=3,
                bbox={"boxstyle": "round,pad=0.35", "fc": "#d9ead3", "ec": "#444444"})
        for node, entries in enumerate(cell):
            for k, (op, source) in enumerate(entries):
                (x1, y1), (x2, y2) = pos[source], pos[2 + node]
                # Operations sharing an edge fan out around it, alternately on either side.
                rank = [s for _, s in entries[:k]].count(source)
                bend = 0.15 + 0.3 * ((rank + 1) // 2) * (-1) ** rank
                ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), connectionstyle=f"arc3,rad={bend}", arrowstyle="-|>",
                                             mutation_scale=10, color=colours[op], lw=1.6, shrinkA=14, shrinkB=14))
                # The label sits on the curve: arc3's Bezier at t = 1/2 (equal axis scales below).
                lx, ly = (x1 + x2) / 2 + bend * (y2 - y1) / 2, (y1 + y2) / 2 - bend * (x2 - x1) / 2
                ax.text(lx, ly, op, fontsize=7, ha="center", va="center", color=colours[op], zorder=2,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
            ax.add_patch(FancyArrowPatch(pos[2 + node], out, arrowstyle="-|>", mutation_scale=8, color="#999999",
                                         lw=0.8, ls="--", shrinkA=14, shrinkB=14))
        ax.set_xlim(-0.6, out[0] + 0.6)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        ax.set_title(label)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
