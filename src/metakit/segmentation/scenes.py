"""Scenes for few-shot segmentation, composed offline from a character dataset (Glyphs, Omniglot).

Each scene places several characters of *different* classes at random positions, scales and
rotations on a cluttered background (low-frequency texture, stray strokes, pixel noise). Every
pixel is labelled with the class of the character covering it (``-1`` for background) and with its
instance (``0`` for background, ``1..n`` for the scene's characters); later characters occlude
earlier ones, and the labels follow what is visible.

The classes of each split are the source dataset's split (:func:`metakit.datasets.load_splits`:
Glyphs' Unicode blocks or Omniglot's alphabets by ``split: group``), so test classes never appear
in a training scene. Scenes are deterministic from their arguments and cached as a compressed
``.npz`` under ``metakit.utils.cache_dir("segmentation")``, written atomically and keyed by every
argument and by a hash of the source images, so a stale or half-written file is never read.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metakit.datasets.base import ClassDataset, LabelledItems
from metakit.errors import MetakitError
from metakit.utils import atomic_path, cache_dir

__all__ = ["SceneSet", "compose_scenes", "load_scenes", "scenes_spec", "scenes_status", "segmentation_spec"]

#: Bump when the composition changes, so cached scenes of an older recipe are not reused.
_RECIPE = 1
_SPLITS = ("train", "val", "test")
_CACHE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass
class SceneSet(LabelledItems):
    """Images with per-pixel class and instance labels: one split of a segmentation dataset.

    Attributes:
        name: shown in errors and reports (``seg-glyphs/test``).
        images: uint8 ``[scenes, channels, height, width]``.
        labels: int64 ``[scenes, height, width]``: index into ``class_names``, ``-1`` for background.
        instances: int64 ``[scenes, height, width]``: ``0`` for background, ``1..n`` per object.
        class_names: the split's classes.
        min_pixels: a class counts as present in a scene (and can be drawn for an episode) only
            with at least this many visible pixels there.
        strict: a class with too few images for an episode is an error, not skipped (a user's
            own data, where it is a mistake; see :class:`~metakit.segmentation.episodes.SegmentationEpisodes`).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    instances: torch.Tensor
    class_names: list[str]
    min_pixels: int = 12
    strict: bool = False
    _occurrences: dict[int, list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise MetakitError(f"{self.name}: images must be uint8 [scenes, C, H, W], got {tuple(self.images.shape)}.")
        shape = (n, *self.images.shape[-2:])
        if tuple(self.labels.shape) != shape or tuple(self.instances.shape) != shape:
            raise MetakitError(f"{self.name}: labels and instances must be [scenes, H, W] = {list(shape)}.")

    def _items(self) -> torch.Tensor:
        return self.images

    def occurrences(self) -> dict[int, list[int]]:
        """Class index -> the scenes where it has at least ``min_pixels`` visible pixels (sorted)."""
        if self._occurrences is None:
            found: dict[int, list[int]] = {c: [] for c in range(self.num_classes)}
            flat = self.labels.reshape(len(self.labels), -1)
            for i in range(len(flat)):
                values, counts = torch.unique(flat[i], return_counts=True)
                for v, k in zip(values.tolist(), counts.tolist(), strict=True):
                    if v >= 0 and k >= self.min_pixels:
                        found[v].append(i)
            self._occurrences = found
        return self._occurrences

    def mask(self, scenes: torch.Tensor | Sequence[int], cls: int) -> torch.Tensor:
        """Binary float masks ``[len(scenes), H, W]`` of class ``cls`` in the given scenes."""
        return (self.labels[torch.as_tensor(scenes)] == cls).float()

    def describe(self) -> str:
        """One line: scenes, classes, image shape."""
        return f"{self.name}: {len(self.images)} scenes, {self.num_classes} classes, images {list(self.image_shape)}"


# -- composition -------------------------------------------------------------------------------


def _rand(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    """Clutter ``[size, size]`` in [0, 1]: a base level, low-frequency texture and stray strokes.

    The strokes are as bright as characters can be, so foreground is not simply "the bright
    pixels": a learner has to match shape, which is what the no-learning baseline cannot do.
    """
    base = _rand(g, 0.05, 0.35)
    coarse = torch.rand(1, 1, 5, 5, generator=g)
    texture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    img = base + 0.2 * (texture - 0.5)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    for _ in range(int(torch.randint(2, 6, (), generator=g))):
        p0 = torch.rand(2, generator=g) * size
        p1 = torch.rand(2, generator=g) * size
        d = p1 - p0
        # Distance of every pixel to the segment p0-p1.
        t = (((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)).clamp(0, 1)
        dist = ((xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2).sqrt()
        width = _rand(g, 0.6, 1.6) * size / 64
        alpha = (1.0 - (dist - width).clamp_min(0)).clamp(0, 1)
        img = img * (1 - alpha) + _rand(g, 0.4, 1.0) * alpha
    return img


def _place(ink: torch.Tensor, size: int, side: float, angle: float, cx: float, cy: float) -> torch.Tensor:
    """Warp a character ``[1, s, s]`` (ink in [0, 1]) to ``side`` pixels, rotated, centred at (cx, cy)."""
    scale = side / size  # character side as a fraction of the scene (normalised coordinates span 2)
    cos, sin = math.cos(angle), math.sin(angle)
    # Output -> input map: rotate back, then shrink to the character's frame.
    a = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float32) / scale
    centre = torch.tensor([2 * cx / size - 1, 2 * cy / size - 1], dtype=torch.float32)
    theta = torch.cat([a, (-a @ centre)[:, None]], dim=1)[None]
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    return F.grid_sample(ink[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def compose_scenes(
    source: ClassDataset,
    image_size: int = 64,
    scenes_per_class: int = 12,
    objects: tuple[int, int] = (2, 3),
    scale: tuple[float, float] = (0.4, 0.6),
    max_rotation: float = 30.0,
    noise: float = 0.06,
    min_pixels: int = 12,
    seed: int = 0,
    name: str | None = None,
) -> SceneSet:
    """Compose scenes from the characters of ``source`` (one split's classes).

    Every class is placed ``scenes_per_class`` times in all, spread over scenes of ``objects``
    (min, max) characters of distinct classes, so every class gets about the same number of
    scenes and episodes can be drawn for each of them.

    Args:
        source: uint8 character images ``[items, 1, s, s]``, ink high on 0 (Glyphs, Omniglot).
        image_size: side of the square scenes.
        scenes_per_class: placements of each class over the whole split.
        objects: characters per scene, inclusive range.
        scale: character side as a fraction of ``image_size``, range. The default makes characters
            26-38 pixels in a 64-pixel scene: at 0.3-0.5 (19-32 pixels, recipe of the first
            measurements) strokes are a pixel or two wide and even frozen ImageNet features gain
            little from 5 shots over 1 (mIoU 0.17 -> 0.20; at 0.4-0.6: 0.18 -> 0.27).
        max_rotation: rotations are uniform in +- this many degrees.
        noise: standard deviation of the pixel noise added last.
        min_pixels: see :class:`SceneSet`.
        seed: every random choice comes from this seed.
        name: the set's name (default: the source's).

    Raises:
        MetakitError: a source that is not 1-channel images, or fewer classes than ``objects[1]``.
    """
    if source.inputs.dtype != torch.uint8 or source.inputs.dim() != 4 or source.inputs.shape[1] != 1:
        raise MetakitError(f"scenes need 1-channel character images; {source.name!r} has {tuple(source.inputs.shape)}.")
    lo, hi = int(objects[0]), int(objects[1])
    if not 1 <= lo <= hi:
        raise MetakitError(f"objects must be (min, max) with 1 <= min <= max, got {list(objects)}.")
    if source.num_classes < hi:
        raise MetakitError(
            f"{source.name!r} has {source.num_classes} classes but scenes hold up to {hi} distinct ones; "
            f"lower objects or use a bigger split."
        )
    if scenes_per_class < 1 or image_size < 16:
        raise MetakitError(f"scenes_per_class must be >= 1 and image_size >= 16, got {scenes_per_class} and {image_size}.")
    threads = torch.get_num_threads()
    # Thousands of tiny ops: extra threads only add overhead (10x slower on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        return _compose(source, image_size, scenes_per_class, lo, hi, scale, max_rotation, noise, min_pixels, seed, name)
    finally:
        torch.set_num_threads(threads)


def _compose(
    source: ClassDataset, image_size: int, scenes_per_class: int, lo: int, hi: int, scale: tuple[float, float],
    max_rotation: float, noise: float, min_pixels: int, seed: int, name: str | None,
) -> SceneSet:
    g = torch.Generator().manual_seed(int(seed))
    by_class = [torch.nonzero(source.labels == c).flatten() for c in range(source.num_classes)]
    queue = torch.arange(source.num_classes).repeat(scenes_per_class)
    queue = queue[torch.randperm(len(queue), generator=g)].tolist()
    images, labels, instances = [], [], []
    while queue:
        k = int(torch.randint(lo, hi + 1, (), generator=g))
        chosen: list[int] = []
        rest: list[int] = []
        for c in queue:  # the next k distinct classes; the skipped duplicates stay in line
            (chosen if len(chosen) < k and c not in chosen else rest).append(c)
        queue = rest
        img = _background(image_size, g)
        lab = torch.full((image_size, image_size), -1, dtype=torch.int64)
        inst = torch.zeros((image_size, image_size), dtype=torch.int64)
        for n, c in enumerate(chosen, start=1):
            item = by_class[c][int(torch.randint(len(by_class[c]), (), generator=g))]
            ink = source.inputs[item].float() / 255
            side = _rand(g, *scale) * image_size
            angle = math.radians(_rand(g, -max_rotation, max_rotation))
            # A few tries for a spot that leaves most of the earlier characters visible.
            for _ in range(8):
                margin = side * 0.45
                cx, cy = _rand(g, margin, image_size - margin), _rand(g, margin, image_size - margin)
                alpha = _place(ink, image_size, side, angle, cx, cy)
                if ((alpha > 0.5) & (lab >= 0)).sum() <= 0.15 * (alpha > 0.5).sum():
                    break
            img = img * (1 - alpha) + _rand(g, 0.55, 1.0) * alpha
            lab[alpha > 0.5] = c
            inst[alpha > 0.5] = n
        img = img + noise * torch.randn(img.shape, generator=g)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(lab)
        instances.append(inst)
    return SceneSet(
        name=name or source.name,
        images=torch.stack(images)[:, None],
        labels=torch.stack(labels),
        instances=torch.stack(instances),
        class_names=list(source.class_names),
        min_pixels=min_pixels,
    )


# -- cached splits -----------------------------------------------------------------------------


def _cache_path(key: dict[str, Any], fingerprint: str) -> Path:
    digest = hashlib.sha256((json.dumps(key, sort_keys=True) + fingerprint).encode()).hexdigest()[:12]
    return cache_dir("segmentation") / f"scenes-{key['source']}-{key['image_size']}px-seed{key['seed']}-{digest}.npz"


def _fingerprint(parts: dict[str, ClassDataset]) -> str:
    """A hash of the source images, labels and class names of every split (a changed source = new scenes)."""
    h = hashlib.sha256()
    for split in _SPLITS:
        part = parts[split]
        h.update(part.inputs.numpy().tobytes())
        h.update(part.labels.numpy().tobytes())
        h.update("\n".join(part.class_names).encode())
    return h.hexdigest()


def _write(path: Path, sets: dict[str, SceneSet]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for split, s in sets.items():
        arrays[f"{split}_images"] = s.images.numpy()
        arrays[f"{split}_labels"] = s.labels.to(torch.int16).numpy()
        arrays[f"{split}_instances"] = s.instances.to(torch.int16).numpy()
        arrays[f"{split}_classes"] = np.array(s.class_names, dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a name: np.savez would otherwise append ".npz" to the temp name.
        np.savez_compressed(f, **arrays)


def _read(path: Path, name: str, min_pixels: int) -> dict[str, SceneSet]:
    with np.load(path, allow_pickle=False) as data:
        return {
            split: SceneSet(
                name=f"{name}/{split}",
                images=torch.from_numpy(data[f"{split}_images"]),
                labels=torch.from_numpy(data[f"{split}_labels"].astype(np.int64)),
                instances=torch.from_numpy(data[f"{split}_instances"].astype(np.int64)),
                class_names=[str(c) for c in data[f"{split}_classes"]],
                min_pixels=min_pixels,
            )
            for split in _SPLITS
        }


def load_scenes(
    source: str = "glyphs",
    split: str = "group",
    split_seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    image_size: int = 64,
    scenes_per_class: int = 12,
    objects: Sequence[int] = (2, 3),
    scale: Sequence[float] = (0.4, 0.6),
    max_rotation: float = 30.0,
    noise: float = 0.06,
    min_pixels: int = 12,
    max_classes: int | None = None,
    seed: int = 0,
    source_options: dict[str, Any] | None = None,
) -> dict[str, SceneSet]:
    """The ``train``/``val``/``test`` scene sets made from a character dataset's class split.

    Args:
        source: a registered class dataset of 1-channel character images: ``glyphs`` (embedded,
            works offline) or ``omniglot`` (where your copy is; see ``metakit datasets``).
        split, split_seed, fractions: the source's class split, as in a classification config
            (``group`` keeps whole Unicode blocks / alphabets apart).
        max_classes: use at most this many classes per split (the first of each split, in the
            source's order), for smaller, faster sets; ``None`` for all.
        source_options: options of the source dataset's loader (e.g. ``{"root": ...}``).
        Other arguments: see :func:`compose_scenes`; each split gets its own seed from ``seed``.

    Returns:
        ``{"train": SceneSet, "val": SceneSet, "test": SceneSet}``.
    """
    from metakit.datasets import load_splits

    parts = load_splits(source, split=split, seed=split_seed, fractions=tuple(fractions), **(source_options or {}))
    if max_classes is not None:
        if max_classes < objects[1]:
            raise MetakitError(f"max_classes must be at least objects' max ({objects[1]}), got {max_classes}.")
        parts = {k: v.subset(range(min(max_classes, v.num_classes)), v.name) for k, v in parts.items()}
    key = {
        "recipe": _RECIPE, "source": source, "split": split, "split_seed": split_seed, "fractions": list(fractions),
        "image_size": image_size, "scenes_per_class": scenes_per_class, "objects": list(objects), "scale": list(scale),
        "max_rotation": max_rotation, "noise": noise, "max_classes": max_classes, "seed": seed,
        "source_options": source_options or {},
    }
    path = _cache_path(key, _fingerprint(parts))
    name = f"seg-{source}"
    if path.exists():
        try:
            return _read(path, name, min_pixels)
        except _CACHE_ERRORS:
            pass  # damaged after it was written (writes are atomic): compose it again below
    sets = {
        s: compose_scenes(
            parts[s], image_size, scenes_per_class, (int(objects[0]), int(objects[1])), (float(scale[0]), float(scale[1])),
            max_rotation, noise, min_pixels, seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
            name=f"{name}/{s}",
        )
        for i, s in enumerate(_SPLITS)
    }
    _write(path, sets)
    return sets


def scenes_status() -> str:
    """One line on the cached scene sets (``metakit datasets``)."""
    found = sorted(cache_dir("segmentation").glob("scenes-*.npz"))
    if not found:
        return "composed locally on first use from the glyphs (~10 s after glyphs are rendered); nothing cached yet"
    return f"composed locally; {len(found)} cached set(s) in {found[0].parent}"


def segmentation_spec(name: str, summary: str, source: str, license: str, module: str,
                      splits: tuple[str, ...] = ("group", "class")) -> Any:
    """A segmentation dataset's :class:`~metakit.datasets.DatasetSpec`: ``load_*`` and ``*_status`` in ``module``.

    ``module`` is ``"metakit.segmentation.MODULE:STEM"``; the loader is ``load_STEM`` and the
    status line ``STEM_status`` there. The plugin registers each dataset by such a function.
    """
    from metakit.datasets import DatasetSpec

    path, stem = module.split(":")
    return DatasetSpec(name, summary, source, license, "segmentation", f"{path}:load_{stem}", f"{path}:{stem}_status",
                       splits=splits)


def scenes_spec() -> Any:
    """The ``seg-glyphs`` dataset as :mod:`metakit.datasets` lists it."""
    return segmentation_spec(
        "seg-glyphs", "few-shot segmentation scenes composed from the Glyphs characters (or Omniglot's: source: omniglot)",
        "composed locally from the glyphs dataset (fonts shipped with matplotlib)",
        "matplotlib's font licenses (DejaVu, STIX); Omniglot is MIT", "metakit.segmentation.scenes:scenes",
    )
