"""tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes in 34 categories, 84x84 RGB.

The published split is by category: 20 categories / 351 classes / 448,695 images for training,
6 / 97 / 124,261 for validation and 8 / 160 / 206,209 for testing; each class belongs to the split
of the file it comes from. Classes are grouped by category (``class_groups``) where the labels
file names them.

**Memory.** The in-memory design needs 779,165 x 3 x size x size bytes: about 16.5 GB at 84px
(4.1 GB at 42px), plus one split's source file while it is decoded (the training split's PNG
pickle is several GB). The decoded cache on disk is as large. Loading fails with one line before
allocating when the need exceeds ``max_memory_gb`` (default: 80% of physical memory).

There is no stable official download (ImageNet's research terms; the files are on Google Drive),
so the files are placed by hand, as unpacked from Ren et al.'s ``tiered-imagenet.tar``
(github.com/renmengye/few-shot-ssl-public), per split ``train``/``val``/``test``:

* ``<split>_labels.pkl``: a dict with ``label_specific`` (class index per image),
  ``label_specific_str`` (class names), ``label_general`` and ``label_general_str`` (categories);
  the MetaOptNet variant with a single ``labels`` list is read too (classes then get names such
  as ``train/17`` and no categories);
* ``<split>_images_png.pkl``: a list of PNG-encoded images (Ren et al.'s compressed form), or
  ``<split>_images.npz`` with ``images`` uint8 ``[n, 84, 84, 3]`` (their decompressed form).

Ren et al.'s decompress script writes the ``.npz`` with OpenCV, i.e. in **BGR** channel order;
``npz_channels="bgr"`` (the default) flips it to RGB. Use ``"rgb"`` for an npz written in RGB.
When a split has both forms, the PNG pickle is used (its colours are unambiguous).
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metakit.datasets.imagesets import (
    IMAGE_ERRORS,
    SPLITS,
    Decoded,
    ImageBenchmark,
    ImageSetDataset,
    as_text,
    check_memory,
    decode_image,
    decoded_bytes,
    fill_resized,
    format_bytes,
    load_pickle,
    partial_layout,
    progress,
    stat_identity,
    str_keys,
)
from metakit.errors import MetakitError, unknown_name

__all__ = ["ENV_VAR", "PUBLISHED", "load_tieredimagenet", "tieredimagenet_status"]

NAME = "tieredimagenet"
DISPLAY = "tieredImageNet"
ENV_VAR = "METAKIT_TIEREDIMAGENET"
SUBDIRS = ("tiered-imagenet", "tieredimagenet", "tieredImageNet", "tiered_imagenet")

#: Published sizes per split (Ren et al. 2018): (categories, classes, images).
PUBLISHED: dict[str, tuple[int, int, int]] = {
    "train": (20, 351, 448_695),
    "val": (6, 97, 124_261),
    "test": (8, 160, 206_209),
}
N_IMAGES = sum(v[2] for v in PUBLISHED.values())

WANTS = (
    "train_labels.pkl, val_labels.pkl, test_labels.pkl with train_images_png.pkl, val_images_png.pkl, "
    "test_images_png.pkl (or <split>_images.npz)"
)
GET = (
    "them by unpacking Ren et al.'s tiered-imagenet.tar (linked from github.com/renmengye/few-shot-ssl-public; "
    f"ImageNet research terms); needs ~{format_bytes(decoded_bytes(N_IMAGES, 84))} of memory at 84px"
)


def _labels_file(split: str) -> str:
    return f"{split}_labels.pkl"


def _png_file(split: str) -> str:
    return f"{split}_images_png.pkl"


def _npz_file(split: str) -> str:
    return f"{split}_images.npz"


@dataclass(frozen=True)
class _Source:
    folder: Path
    origin: str
    forms: tuple[str, ...]  # per split: "png" or "npz"

    @property
    def layout(self) -> str:
        return ",".join(self.forms)

    def images_file(self, split: str) -> Path:
        form = self.forms[SPLITS.index(split)]
        return self.folder / (_png_file(split) if form == "png" else _npz_file(split))

    def files(self) -> list[Path]:
        return [self.folder / _labels_file(s) for s in SPLITS] + [self.images_file(s) for s in SPLITS]

    def describe(self) -> str:
        return f"{', '.join(f'{s}:{f}' for s, f in zip(SPLITS, self.forms))} at {self.folder} ({self.origin})"


def _probe(path: Path, origin: str) -> _Source | None:
    if not path.is_dir():
        return None
    have, missing, forms = [], [], []
    for split in SPLITS:
        labels = path / _labels_file(split)
        (have if labels.is_file() else missing).append(labels.name)
        if (path / _png_file(split)).is_file():
            forms.append("png")
            have.append(_png_file(split))
        elif (path / _npz_file(split)).is_file():
            forms.append("npz")
            have.append(_npz_file(split))
        else:
            missing.append(f"{_png_file(split)} (or {_npz_file(split)})")
    if not missing:
        return _Source(path, origin, tuple(forms))
    if have:
        raise partial_layout(DISPLAY, origin, path, have, missing)
    return None


TIEREDIMAGENET = ImageBenchmark(NAME, DISPLAY, ENV_VAR, SUBDIRS, _probe, WANTS, GET, N_IMAGES)


@dataclass
class _SplitLabels:
    labels: np.ndarray  # per image, 0..k-1 within the split
    names: list[str]  # per class
    groups: list[str] | None  # per class


def _read_labels(path: Path, split: str) -> _SplitLabels:
    what = f"{DISPLAY} {path}"
    fix = "replace it with the file from Ren et al.'s tiered-imagenet.tar."
    data = str_keys(load_pickle(path, what, fix))
    if not isinstance(data, dict):
        raise MetakitError(f"{what} holds a {type(data).__name__}, not a labels dict; {fix}")
    if "label_specific" in data:
        raw = np.asarray(data["label_specific"])
    elif "labels" in data:
        raw = np.asarray(data["labels"])
    else:
        raise MetakitError(f"{what} has neither label_specific nor labels (keys: {sorted(map(str, data))}); {fix}")
    if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)):
        raise MetakitError(f"{what}: the labels are not one integer per image; {fix}")
    # Renumber 0..k-1 in first-label order so both variants (per-split or global ids) work.
    ids, first, labels = np.unique(raw.astype(np.int64), return_index=True, return_inverse=True)
    specific = data.get("label_specific_str")
    if "label_specific" in data and specific is not None:
        specific = [as_text(s) for s in specific]
        if ids.size and (ids.min() < 0 or ids.max() >= len(specific)):
            raise MetakitError(f"{what}: label_specific indexes past label_specific_str; {fix}")
        names = [specific[i] for i in ids]
    else:
        names = [f"{split}/{i}" for i in ids]
    groups = None
    general, general_str = data.get("label_general"), data.get("label_general_str")
    if "label_specific" in data and general is not None and general_str is not None:
        general = np.asarray(general)
        general_str = [as_text(s) for s in general_str]
        if general.shape != raw.shape or (general.size and (general.min() < 0 or general.max() >= len(general_str))):
            raise MetakitError(f"{what}: label_general does not match label_specific / label_general_str; {fix}")
        groups = [general_str[general[i]] for i in first]  # a class's category, from its first image
    return _SplitLabels(labels.astype(np.int64), names, groups)


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise MetakitError(
            f"{DISPLAY} {path} is not a readable npz with an 'images' array ({type(exc).__name__}: {exc}); "
            f"replace it (or delete it and use the {path.name[: -len('.npz')]}_png.pkl it was made from)."
        ) from None


def _decode(src: _Source, image_size: int, max_memory_gb: float | None, npz_channels: str) -> Decoded:
    parts = {s: _read_labels(src.folder / _labels_file(s), s) for s in SPLITS}
    total = sum(len(p.labels) for p in parts.values())
    check_memory(DISPLAY, total, image_size, max_memory_gb)
    out = np.empty((total, 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    names: list[str] = []
    splits: list[str] = []
    groups: list[str] | None = [] if all(p.groups is not None for p in parts.values()) else None
    start = 0
    for split in SPLITS:
        part = parts[split]
        n = len(part.labels)
        path = src.images_file(split)
        what = f"{DISPLAY} {path}"
        chunk = out[start : start + n]
        if path.name.endswith(".npz"):
            images = _read_npz(path)
            if len(images) != n:
                raise MetakitError(
                    f"{what} holds {len(images)} images but {_labels_file(split)} labels {n}; "
                    f"use files from the same release."
                )
            fill_resized(chunk, images[..., ::-1] if npz_channels == "bgr" and images.ndim == 4 else images, True, what)
        else:
            encoded = load_pickle(path, what, "replace it with the file from Ren et al.'s tiered-imagenet.tar.")
            if not isinstance(encoded, (list, tuple)) or len(encoded) != n:
                got = f"{len(encoded)} items" if isinstance(encoded, (list, tuple)) else f"a {type(encoded).__name__}"
                raise MetakitError(
                    f"{what} holds {got}, but {_labels_file(split)} labels {n} images; use files from the same release."
                )
            with progress(f"decoding {DISPLAY} {split} ({n} images)", n) as update:
                for i, item in enumerate(encoded):
                    if isinstance(item, np.ndarray):
                        item = item.tobytes()  # cv2.imencode output, as Ren et al. stored it
                    elif isinstance(item, str):
                        item = item.encode("latin1")  # a Python 2 byte string read with latin1
                    try:
                        chunk[i] = decode_image(item, image_size)
                    except (*IMAGE_ERRORS, TypeError) as exc:
                        raise MetakitError(f"{what}: image {i} cannot be decoded ({exc}); replace the file.") from None
                    if i % 1024 == 0:
                        update(i)
            del encoded
        labels[start : start + n] = part.labels + len(names)
        names += part.names
        splits += [split] * len(part.names)
        if groups is not None:
            groups += part.groups or []
        start += n
    dupes = sorted(c for c, k in Counter(names).items() if k > 1)
    if dupes:
        raise MetakitError(
            f"{DISPLAY}: class(es) {dupes[:3]} appear in more than one split; the files are not one release."
        )
    return Decoded(out, labels, names, splits, groups)


def load_tieredimagenet(
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    max_memory_gb: float | None = None,
    npz_channels: str = "bgr",
) -> ImageSetDataset:
    """Load tieredImageNet's 608 classes (categories as groups) with the published split recorded.

    Args:
        root: the folder holding the files (see the module docstring), or a parent holding a
            ``tiered-imagenet/`` (or ``tieredimagenet/``) folder. ``None`` looks at
            ``$METAKIT_TIEREDIMAGENET``, then at ``cache_dir("tieredimagenet")``. A missing
            dataset is a one-line error saying which files to put where.
        image_size: output side length (84 is native). Memory grows with its square: ~16.5 GB at
            84px, ~4.1 GB at 42px.
        max_memory_gb: fail with one line, before allocating, if the decoded images would need
            more (default: 80% of physical memory).
        npz_channels: channel order of ``<split>_images.npz`` files: ``"bgr"`` (Ren et al.'s
            OpenCV-written files) or ``"rgb"``.

    Returns:
        An :class:`ImageSetDataset`: uint8 RGB ``[n, 3, image_size, image_size]``; classes
        numbered train, val, test in file order; ``class_splits`` holds the published split.
    """
    if npz_channels not in ("bgr", "rgb"):
        raise unknown_name("tieredImageNet npz_channels", npz_channels, ["bgr", "rgb"])
    src = TIEREDIMAGENET.locate(root, image_size)
    order = npz_channels if "npz" in src.forms else "-"
    key = f"{src.layout}:{order}:{stat_identity(src.files())}"
    return TIEREDIMAGENET.load(
        src, image_size, max_memory_gb, lambda: _decode(src, image_size, max_memory_gb, npz_channels), key
    )


def tieredimagenet_status() -> str:
    """One line: where tieredImageNet is, or which files to place where; with its memory need."""
    place = TIEREDIMAGENET.caches()[0]
    return TIEREDIMAGENET.status(f"not local (no official download): place {WANTS} in {place} (or set ${ENV_VAR})")
