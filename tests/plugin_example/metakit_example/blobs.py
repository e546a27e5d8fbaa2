"""A toy domain in one file: Gaussian blobs, a ``blobs`` dataset and a ``metakit blobs`` command.

Each class is a cloud of points around a random centre, so the dataset trains with any learner
(``dataset: {name: blobs}``, ``backbone: {name: mlp}``), and ``metakit blobs`` says how separable
the classes are before anything is trained: the held-out accuracy of nearest class means. metakit
loads this module for every command, to build its parser, so it imports torch and
:mod:`metakit.datasets` only inside the functions that need them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from metakit.commands import add_common_options, console, positive_int, write_json_option
from metakit.registry import Plugin

if TYPE_CHECKING:
    from metakit.datasets import ClassDataset, DatasetSpec


def load_blobs(classes: int = 20, items: int = 20, dim: int = 8, spread: float = 0.5, seed: int = 0) -> ClassDataset:
    """``classes`` clouds of ``items`` points in ``dim`` dimensions: centres N(0, 1), points N(centre, spread²)."""
    import torch

    from metakit.datasets import ClassDataset

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 1, dim, generator=g)
    points = centres + spread * torch.randn(classes, items, dim, generator=g)
    return ClassDataset(name="blobs", images=points.reshape(-1, dim), labels=torch.arange(classes).repeat_interleave(items),
                        class_names=[f"blob{c}" for c in range(classes)])


def blobs_status() -> str:
    """The line ``metakit datasets`` shows."""
    return "generated on load (no files)"


def blobs_spec() -> DatasetSpec:
    """The dataset's registry entry; a function, so that loading the plugin does not import torch."""
    from metakit.datasets import DatasetSpec

    return DatasetSpec(name="blobs", summary="Gaussian blobs: one cloud of points a class (toy domain example).",
                       source="generated", license="n/a", task_type="classification",
                       loader="metakit_example.blobs:load_blobs", status="metakit_example.blobs:blobs_status",
                       splits=("class",))


def separability(data: ClassDataset, holdout: int = 5) -> float:
    """Accuracy of nearest class means fitted on all but ``holdout`` items a class, on those items."""
    import torch

    fit, test, test_labels = [], [], []
    for c in range(data.num_classes):
        x = data.images[data.labels == c]
        fit.append(x[:-holdout].mean(0))
        test.append(x[-holdout:])
        test_labels.append(torch.full((holdout,), c))
    predicted = torch.cdist(torch.cat(test), torch.stack(fit)).argmin(-1)
    return (predicted == torch.cat(test_labels)).float().mean().item()


def cmd_blobs(args: argparse.Namespace) -> int:
    """Describe the blobs dataset: classes, points, and how separable the classes are untrained."""
    data = load_blobs(classes=args.classes, dim=args.dim, spread=args.spread)
    accuracy = separability(data)
    console.print(f"blobs: {data.num_classes} classes x {len(data.images) // data.num_classes} points in {args.dim} "
                  f"dimensions; nearest class mean on held-out points: {accuracy:.3f}")
    result: dict[str, Any] = {"classes": data.num_classes, "dim": args.dim, "spread": args.spread, "accuracy": accuracy}
    write_json_option(args.json, result)
    return 0


def add_blobs_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``metakit blobs``."""
    p = sub.add_parser("blobs", help="toy domain: describe the Gaussian blobs dataset", description=cmd_blobs.__doc__)
    p.add_argument("--classes", type=positive_int, default=20, help="number of blobs (default 20)")
    p.add_argument("--dim", type=positive_int, default=8, help="dimensions (default 8)")
    p.add_argument("--spread", type=float, default=0.5, help="standard deviation around each centre (default 0.5)")
    add_common_options(p)
    p.set_defaults(func=cmd_blobs)


plugin = Plugin(
    name="blobs",
    summary="toy domain: Gaussian blobs as a dataset, and a command that describes them",
    commands={"blobs": "metakit_example.blobs:add_blobs_parser"},
    datasets={"blobs": "metakit_example.blobs:blobs_spec"},
)
