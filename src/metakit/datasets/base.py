"""In-memory class datasets and their class-level / group-level splits.

A :class:`ClassDataset` is Torchmeta's "ClassDataset": items indexed by class, with an optional
group per class (Omniglot alphabets, Unicode blocks). Splits are made over classes (or over whole
groups), never over items, so test classes are unseen in meta-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

import numpy as np
import torch

from metakit.errors import MetakitError


class LabelledItems:
    """``num_classes`` and ``image_shape`` of a dataset of named classes held as one item tensor.

    Shared by :class:`ClassDataset` and the segmentation scene sets
    (:class:`metakit.segmentation.scenes.SceneSet`), whose items are whole labelled scenes.
    """

    class_names: list[str]

    def _items(self) -> torch.Tensor:
        """The item tensor ``[items, *shape]``."""
        return self.inputs  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one item."""
        return tuple(self._items().shape[1:])  # type: ignore[return-value]


@dataclass
class ClassDataset(LabelledItems):
    """Labelled items held in memory as one tensor: images, or fixed feature vectors.

    Images, text and arrays all flow through the same path (episodes, learners, caches), so the
    items are called ``inputs`` whatever they hold.

    Attributes:
        name: dataset name (shown in reports and errors).
        inputs: uint8 tensor ``[items, channels, height, width]`` of images (for line drawings ink
            is high), or a floating tensor ``[items, *shape]`` of feature vectors such as frozen
            sentence embeddings (``metakit.text``), which episodes use as they are. The
            constructor also takes it under its old name, ``images=`` (used when ``inputs=`` is not given).
        labels: int64 tensor ``[items]`` of class indices ``0..num_classes-1``.
        class_names: one name per class.
        class_groups: optional group name per class (alphabet, Unicode block, ...).
        images: the old name of ``inputs``, kept as a read-only alias so that code written
            before the rename keeps working.
    """

    name: str
    # The None defaults only let the old keyword images= stand in for inputs; all three are required.
    inputs: torch.Tensor = None  # type: ignore[assignment]
    labels: torch.Tensor = None  # type: ignore[assignment]
    class_names: list[str] = None  # type: ignore[assignment]
    class_groups: list[str] | None = None
    _index: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _: KW_ONLY
    images: InitVar[torch.Tensor | None] = None

    def __post_init__(self, images: torch.Tensor | None = None) -> None:
        # inputs= wins: dataclasses.replace(dataset, inputs=...) passes the old alias back as images=.
        if self.inputs is None:
            self.inputs = images
        missing = [n for n in ("inputs", "labels", "class_names") if getattr(self, n) is None]
        if missing:
            raise TypeError(f"{type(self).__name__}() missing required argument(s): {', '.join(missing)}")
        is_images = self.inputs.dtype == torch.uint8 and self.inputs.dim() == 4
        is_features = self.inputs.is_floating_point() and self.inputs.dim() >= 2
        if not (is_images or is_features):
            raise MetakitError(
                f"dataset {self.name!r}: items must be a uint8 tensor [items, C, H, W] or a float tensor "
                f"[items, features], got {self.inputs.dtype} with shape {tuple(self.inputs.shape)}."
            )
        if len(self.labels) != len(self.inputs):
            raise MetakitError(
                f"dataset {self.name!r}: {len(self.labels)} labels for {len(self.inputs)} images."
            )
        if self.class_groups is not None and len(self.class_groups) != len(self.class_names):
            raise MetakitError(f"dataset {self.name!r}: one group per class is required.")
        # The class index is built once: the sampler's hot path only slices it.
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        self._index = list(torch.split(order, counts))

    @classmethod
    def from_tensors(
        cls,
        x: Any,
        y: Any,
        class_names: Sequence[str] | None = None,
        groups: Sequence[Any] | None = None,
        name: str = "tensors",
    ) -> ClassDataset:
        """A class dataset from items ``x`` and labels ``y`` (arrays, tensors or lists).

        Args:
            x: ``N`` items. uint8 ``[N, C, H, W]`` or ``[N, H, W]`` are images (channels-last
                ``[N, H, W, C]`` with ``C`` 1 or 3 is transposed); anything else numeric becomes
                float32 feature vectors ``[N, ...]`` used as they are (finite values only).
            y: ``N`` labels of any kind (strings, integers, ...). Without ``class_names`` the
                classes are the distinct labels in sorted order, named ``str(label)``.
            class_names: the class names in index order. Integer labels ``0..len-1`` index it;
                other labels must be among the names. Every name needs at least one item.
            groups: optional per-item group (e.g. domain or alphabet), constant within a class,
                for ``split: group``.
            name: dataset name shown in errors and reports.

        Raises:
            MetakitError: shapes, labels or groups that do not fit, in one line.
        """
        items = _as_items(x, name)
        labels = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y)
        if labels.ndim != 1 or len(labels) != len(items):
            raise MetakitError(
                f"dataset {name!r}: y must hold one label per item ({len(items)}), got shape {list(labels.shape)}."
            )
        if labels.dtype.kind == "S":
            labels = labels.astype(str)
        if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise MetakitError(
                f"dataset {name!r}: y holds non-integer numbers (e.g. {labels[~(labels == np.round(labels))][:1].tolist()}), "
                f"which look like regression targets; few-shot classification needs class labels."
            )
        if labels.dtype.kind == "f":
            labels = labels.astype(np.int64)  # whole numbers stored as floats (e.g. from a CSV)
        elif labels.dtype.kind not in "biuU":
            labels = labels.astype(str)  # mixed Python objects: classes by their text
        if class_names is None:
            uniq, index = np.unique(labels, return_inverse=True)
            names = [str(v) for v in uniq.tolist()]
        else:
            names = [str(n) for n in class_names]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise MetakitError(f"dataset {name!r}: class_names repeats {repeated[:3]}; give each class one name.")
            if labels.dtype.kind in "iub":
                index = labels.astype(np.int64)
                out = (index < 0) | (index >= len(names))
                if out.any():
                    raise MetakitError(
                        f"dataset {name!r}: label {int(index[out][0])} has no class name (class_names has {len(names)}, "
                        f"so labels must be 0..{len(names) - 1}); fix y or class_names."
                    )
            else:
                lookup = {n: i for i, n in enumerate(names)}
                text = [str(v) for v in labels.tolist()]
                unknown = sorted({t for t in text if t not in lookup})
                if unknown:
                    raise MetakitError(
                        f"dataset {name!r}: label(s) {unknown[:3]} are not in class_names; add them or fix y."
                    )
                index = np.fromiter((lookup[t] for t in text), dtype=np.int64, count=len(text))
            empty = [names[c] for c in sorted(set(range(len(names))) - set(np.unique(index).tolist()))]
            if empty:
                raise MetakitError(
                    f"dataset {name!r}: class(es) {empty[:3]} of class_names have no items; remove them from class_names."
                )
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        class_groups = None
        if groups is not None:
            per_item = [str(g) for g in (groups.tolist() if hasattr(groups, "tolist") else groups)]
            if len(per_item) != len(items):
                raise MetakitError(
                    f"dataset {name!r}: groups must hold one group per item ({len(items)}), got {len(per_item)}."
                )
            class_groups = [""] * len(names)
            seen = [False] * len(names)
            for c, g in zip(index.tolist(), per_item):
                if not seen[c]:
                    class_groups[c], seen[c] = g, True
                elif class_groups[c] != g:
                    raise MetakitError(
                        f"dataset {name!r}: class {names[c]!r} has items in groups {class_groups[c]!r} and {g!r}; "
                        f"a class must belong to one group."
                    )
        return cls(
            name=name, inputs=items, labels=torch.from_numpy(index), class_names=names, class_groups=class_groups
        )

    def items_of(self, cls: int) -> torch.Tensor:
        """Item indices of class ``cls``."""
        return self._index[cls]

    def class_sizes(self) -> list[int]:
        """Number of items per class."""
        return [len(ix) for ix in self._index]

    @property
    def groups(self) -> list[str]:
        """Distinct group names in first-seen order (empty if the dataset has no groups)."""
        return list(dict.fromkeys(self.class_groups or []))

    def subset(self, classes: Sequence[int], name: str | None = None) -> ClassDataset:
        """A dataset of the given classes only, relabelled ``0..len(classes)-1`` in that order."""
        classes = list(classes)
        items = torch.cat([self._index[c] for c in classes]) if classes else torch.zeros(0, dtype=torch.long)
        new_labels = torch.cat(
            [torch.full((len(self._index[c]),), i, dtype=torch.long) for i, c in enumerate(classes)]
        ) if classes else torch.zeros(0, dtype=torch.long)
        return ClassDataset(
            name=name or self.name,
            inputs=self.inputs[items],
            labels=new_labels,
            class_names=[self.class_names[c] for c in classes],
            class_groups=[self.class_groups[c] for c in classes] if self.class_groups else None,
        )

    def describe(self) -> str:
        """One line: classes, items, groups, image shape."""
        g = f", {len(self.groups)} groups" if self.class_groups else ""
        kind = "images" if self.inputs.dtype == torch.uint8 else "features"
        return (
            f"{self.name}: {self.num_classes} classes, {len(self.inputs)} items{g}, "
            f"{kind} {'x'.join(map(str, self.image_shape))}"
        )


def _images(self: ClassDataset) -> torch.Tensor:
    """The old name of :attr:`ClassDataset.inputs` (read-only)."""
    return self.inputs


# Set after the class is made: the name is taken by the constructor's images= keyword (an InitVar).
ClassDataset.images = property(_images)  # type: ignore[assignment]


def _as_items(x: Any, name: str) -> torch.Tensor:
    """``x`` as a uint8 image tensor ``[N, C, H, W]`` or a float32 feature tensor ``[N, ...]``."""
    if isinstance(x, torch.Tensor):
        items = x.detach().cpu()
    else:
        arr = np.ascontiguousarray(np.asarray(x))
        if arr.dtype.kind not in "biuf":
            raise MetakitError(f"dataset {name!r}: x must be numeric, got NumPy dtype {arr.dtype}.")
        items = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if items.dim() < 2:
        raise MetakitError(
            f"dataset {name!r}: x must hold one row per item ([N, features] or images), got shape {list(items.shape)}."
        )
    if items.dtype == torch.uint8 and items.dim() in (3, 4):
        if items.dim() == 3:
            return items.unsqueeze(1).contiguous()
        if items.shape[1] not in (1, 3) and items.shape[3] in (1, 3):
            return items.permute(0, 3, 1, 2).contiguous()  # channels-last, as PIL and NumPy images come
        return items.contiguous()
    if items.is_complex() or not (items.is_floating_point() or items.dtype in _NUMERIC):
        raise MetakitError(f"dataset {name!r}: x must be numeric, got {items.dtype}.")
    items = items.to(torch.float32)
    bad = int((~torch.isfinite(items)).sum())
    if bad:
        raise MetakitError(f"dataset {name!r}: x holds {bad} NaN or infinite value(s); fill or drop those items.")
    return items.contiguous()


_NUMERIC = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64,
)


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise MetakitError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {list(fractions)}."
        )


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    return n - n_val - n_test, n_val, n_test


def class_split(
    dataset: ClassDataset, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, ClassDataset]:
    """Split classes at random (seeded) into train/val/test class sets."""
    _check_fractions(fractions)
    perm = np.random.default_rng(seed).permutation(dataset.num_classes).tolist()
    n_tr, n_va, _ = _counts(dataset.num_classes, fractions)
    parts = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    return {k: dataset.subset(sorted(v), f"{dataset.name}/{k}") for k, v in parts.items()}


def group_split(
    dataset: ClassDataset,
    fractions: Sequence[float] | None = (0.7, 0.1, 0.2),
    seed: int = 0,
    groups: dict[str, Sequence[str]] | None = None,
) -> dict[str, ClassDataset]:
    """Split whole groups (alphabets, Unicode blocks) into train/val/test.

    Either ``groups`` names the groups of each split explicitly (a published split), or the
    groups are shuffled with ``seed`` and cut by ``fractions`` of the number of groups.
    """
    if not dataset.class_groups:
        published = " or split: published (its train/val/test folders)" if getattr(dataset, "class_splits", None) else ""
        raise MetakitError(
            f"dataset {dataset.name!r} has no groups; use split: class{published} instead of split: group "
            f"(split: auto picks one)."
        )
    all_groups = dataset.groups
    if groups is None:
        _check_fractions(fractions or ())
        perm = [all_groups[i] for i in np.random.default_rng(seed).permutation(len(all_groups))]
        n_tr, n_va, _ = _counts(len(all_groups), fractions)  # type: ignore[arg-type]
        groups = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    unknown = sorted({g for gs in groups.values() for g in gs} - set(all_groups))
    if unknown:
        raise MetakitError(f"dataset {dataset.name!r} has no group(s) {unknown}.")
    out = {}
    for part, names in groups.items():
        chosen = set(names)
        classes = [c for c, g in enumerate(dataset.class_groups) if g in chosen]
        out[part] = dataset.subset(classes, f"{dataset.name}/{part}")
    return out


def rotate_classes(dataset: ClassDataset, angles: Sequence[int] = (0, 90, 180, 270)) -> ClassDataset:
    """Each rotation of each class becomes a new class (the Vinyals et al. Omniglot protocol).

    Rotated copies keep their class's group, so group splits stay disjoint. Class ``c`` rotated by
    ``angles[r]`` becomes class ``c * len(angles) + r``.
    """
    if dataset.inputs.dtype != torch.uint8:
        raise MetakitError(
            f"dataset {dataset.name!r} holds feature vectors, not images; rotations apply to images only "
            f"(set dataset.rotations: false)."
        )
    bad = [a for a in angles if a % 90]
    if bad or not angles:
        raise MetakitError(f"rotations must be multiples of 90 degrees, got {list(angles)}.")
    n = dataset.num_classes
    imgs, labels = [], []
    for r, angle in enumerate(angles):
        imgs.append(torch.rot90(dataset.inputs, k=angle // 90, dims=(2, 3)))
        labels.append(dataset.labels * len(angles) + r)
    order_names = [f"{dataset.class_names[c]}@{a}" for c in range(n) for a in angles]
    order_groups = (
        [dataset.class_groups[c] for c in range(n) for _ in angles] if dataset.class_groups else None
    )
    return ClassDataset(
        name=dataset.name,
        inputs=torch.cat(imgs),
        labels=torch.cat(labels),
        class_names=order_names,
        class_groups=order_groups,
    )
