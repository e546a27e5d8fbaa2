"""Export a few-shot task of an image dataset as ordinary image files (``metakit datasets export``).

The result is what ``metakit predict`` reads, so a newcomer can try a trained run on "their own"
images without having any::

    DIR/support/<class>/<k>.png   K labelled images per class
    DIR/query/<i>.png             Q images per class, shuffled, unlabelled
    DIR/query_labels.csv          file,label: the true class of each query image

The task is one episode drawn by :class:`~metakit.episodes.EpisodeSampler` from a split of the
dataset (by default the test split, whose classes no run of that dataset trained on). Images are
written as PNG (lossless) by :func:`~metakit.datasets.folder.image_from_tensor` under the dataset's
:func:`~metakit.datasets.folder.image_options_for`, so ``metakit predict`` reads each file back
into exactly the tensor the dataset holds. The folder is assembled beside ``DIR`` and renamed into
place at the end: an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metakit.errors import MetakitError
from metakit.utils import _UMASK  # read once at import: reading the umask later is not thread-safe

__all__ = ["ExportSummary", "export_task", "safe_name", "write_task"]

# Characters that are not allowed (or mean something else) in a file name on some OS.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_task` wrote.

    Attributes:
        out: the folder.
        dataset: the dataset name.
        split: the split the classes come from.
        classes: the class folder names, in label order.
        shots: support images per class.
        queries: query images per class.
    """

    out: Path
    dataset: str
    split: str
    classes: list[str]
    shots: int
    queries: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "out": str(self.out), "dataset": self.dataset, "split": self.split, "classes": self.classes,
            "shots": self.shots, "queries": self.queries,
            "support": str(self.out / "support"), "query": str(self.out / "query"),
            "query_labels": str(self.out / "query_labels.csv"),
        }


def safe_name(name: str) -> str:
    """``name`` usable as a folder name on any OS (path separators and reserved characters become ``_``)."""
    cleaned = _UNSAFE.sub("_", name).strip().rstrip(".")
    return cleaned if cleaned and cleaned not in (".", "..") else "_"


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        base = safe_name(name)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.append(base if count == 0 else f"{base} ({count + 1})")
    return out


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    # Episodes hold uint8 images as k / 255 in float32; rounding recovers k exactly.
    return images if images.dtype == torch.uint8 else (images * 255).round().clamp_(0, 255).to(torch.uint8)


def write_task(
    out: str | os.PathLike,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    class_names: Sequence[str],
    options: Any,
    shuffle_seed: int | None = 0,
) -> list[str]:
    """Write one task's images into ``out`` (``support/<class>/``, ``query/``, ``query_labels.csv``).

    Files are named by position (``0.png``, ``1.png``, ...; zero-padded to sort in that order), so
    a folder read back in sorted order gives the items in the order given here.

    Args:
        out: an existing, empty folder.
        support_x: support images, uint8 or floats ``k / 255`` (as episodes hold them).
        support_y: their labels ``0..len(class_names)-1``.
        query_x: query images, as ``support_x``.
        query_y: their labels.
        class_names: one name per label; the class folder names (made file-system safe).
        options: the :class:`~metakit.datasets.folder.ImageOptions` the images were made with.
        shuffle_seed: shuffle the query files with this seed, so their order does not give their
            classes away; ``None`` keeps the order given.

    Returns:
        The class folder names, in label order.
    """
    from metakit.datasets.folder import image_from_tensor

    out = Path(out)
    folders = _unique(class_names)
    support, query = _as_uint8(support_x), _as_uint8(query_x)
    width = max(3, len(str(max(len(support), len(query)) - 1)))
    counts: dict[int, int] = {}
    for image, label in zip(support, support_y.tolist()):
        folder = out / "support" / folders[label]
        folder.mkdir(parents=True, exist_ok=True)
        k = counts.get(label, 0)
        counts[label] = k + 1
        image_from_tensor(image, options).save(folder / f"{k:0{width}d}.png")
    order = list(range(len(query)))
    if shuffle_seed is not None:
        order = torch.randperm(len(query), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    (out / "query").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label"])
    labels = query_y.tolist()
    for i, j in enumerate(order):
        name = f"{i:0{width}d}.png"
        image_from_tensor(query[j], options).save(out / "query" / name)
        writer.writerow([name, folders[labels[j]]])
    (out / "query_labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    return folders


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "is not empty"
        raise MetakitError(f"--out {out} {what}; give a new folder (it is created).")


def export_task(
    dataset: str,
    out: str | os.PathLike,
    classes: int = 5,
    shots: int = 5,
    queries: int = 5,
    split: str = "test",
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> ExportSummary:
    """Export one ``classes``-way task of an image dataset as PNG files (see the module docs).

    Args:
        dataset: a registered image dataset (``glyphs``, ``omniglot``, the photo sets, ``folder``).
        out: a new (or empty) folder.
        classes: classes in the task (>= 2).
        shots: support images per class.
        queries: query images per class.
        split: ``train``, ``val`` or ``test``: where the classes come from. The dataset's classes
            are split as training splits them by default (``split: auto``, seed 0; ``options``
            may set ``split``, ``split_seed`` and ``fractions``), so ``test`` classes are the ones
            a run with default split settings never saw.
        seed: which task: the classes, images and query order depend only on it.
        options: the dataset's own options (e.g. ``{"image_size": 28}``), as in a config.

    Raises:
        MetakitError: not an image dataset, an impossible task for the split, or ``out`` exists
            and is not empty.
    """
    from metakit.config import dataset_from_dict
    from metakit.datasets import load_splits
    from metakit.datasets.folder import image_options_for
    from metakit.episodes import EpisodeSampler

    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise MetakitError(f"--classes must be an integer >= 2 (a task needs classes to tell apart), got {classes!r}.")
    out = Path(out)
    _check_out(out)
    config = dataset_from_dict({"name": dataset, **(options or {})})
    image_options = image_options_for(config)  # fails first, in one line, for non-image datasets
    # A dataset config's default split (group) fails for datasets without groups; auto is what
    # training would pick for them, and the same as the default for those with groups.
    method = config.split if "split" in (options or {}) else "auto"
    splits = load_splits(config.name, split=method, seed=config.split_seed, fractions=tuple(config.fractions),
                         **config.options)
    if split not in splits:
        from metakit.errors import unknown_name

        raise unknown_name("split", split, splits)
    part = splits[split]
    episode = EpisodeSampler(part, classes, shots, queries).sample(torch.Generator().manual_seed(seed))
    names = [part.class_names[c] for c in episode.classes.tolist()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        folders = write_task(staging, episode.support_x, episode.support_y, episode.query_x, episode.query_y, names,
                             image_options, shuffle_seed=seed)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it private; a plain mkdir would not
        if out.is_dir():
            out.rmdir()  # empty (checked above): os.replace needs the name free
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, config.name, split, folders, shots, queries)
