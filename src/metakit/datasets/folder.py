"""Your own images as a few-shot dataset (``dataset.name: folder``), and the image preprocessing
that every image dataset shares with ``metakit predict``.

**Layout.** The ImageFolder layout: ``ROOT/<class>/<image>``, one folder per class, any format
Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...; chosen by file extension). Two optional levels:

* ``ROOT/{train,val,test}/<class>/<image>``: a split made by you, detected automatically and used
  by ``split: published`` (or ``split: auto``). Each class must sit in one split only.
* ``groups: true``: ``ROOT/<group>/<class>/<image>`` (or ``ROOT/<split>/<group>/<class>/...``),
  so ``split: group`` keeps whole groups apart, as Omniglot's alphabets are. Class names are then
  ``"<group>/<class>"`` (class folder names may repeat across groups).

Class folder names are the class names, end to end. Hidden files and folders are skipped, as are
files whose extension Pillow does not read (counted in a note on stderr).

**Preprocessing.** :func:`preprocess_image` turns one image into the uint8 ``[C, H, W]`` tensor
the dataset stores, under :class:`ImageOptions`: undo the EXIF rotation, convert to ``channels``
(1: luminance, 3: RGB; transparent pixels are laid on white first; 16-bit images are scaled to
8 bits), invert if asked, resize to ``image_size`` square (aspect not kept). Mixed modes in one
folder (RGB, L, RGBA, P, CMYK ...) are normal and all converted; an image that cannot be
converted (a floating-point TIFF, a LAB JPEG) is bad data. :func:`image_options_for` gives, for
any image dataset of the registry (``glyphs``, ``omniglot``, the photo sets, ``folder``), the
options under which an image exported with :func:`image_from_tensor` is read back into the
identical tensor, so ``metakit predict`` can preprocess new images for a run of any of them.

**Bad data** fails with one line naming the file and the fix: an unreadable or corrupt image
(``skip_bad_files: true`` skips such files and says how many on stderr), an empty folder, an image
outside a class folder, a class in two splits, and the same image (identical bytes) in two
classes, which means one copy is mislabelled (``allow_duplicates: true`` accepts it). Identical
*file names* across classes are normal (``IMG_0001.jpg``) and fine; identical copies within one
class are kept, as the built-in datasets keep them.

**Cache.** Decoded images are stored as a memory-mapped ``.npy`` under
``cache_dir("folder", <key>)``, the key being a hash of every image's relative path and bytes and
of the preprocessing options, so a second load reads no image and decodes nothing, a changed file
is noticed, and a moved or copied folder keeps its cache. Entries are written atomically and a
damaged one (truncated, altered: it is checked against a sha256) is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps

from metakit.datasets.base import ClassDataset
from metakit.datasets.imagesets import (
    IMAGE_ERRORS,
    SPLITS,
    ImageSetDataset,
    check_image_size,
    default_memory_cap,
    format_bytes,
    progress,
    split_by_class_splits,
)
from metakit.errors import MetakitError, unknown_name
from metakit.utils import atomic_path, cache_dir, write_json

__all__ = [
    "FolderDataset",
    "ImageInput",
    "ImageOptions",
    "RESAMPLING",
    "folder_image_options",
    "folder_splits",
    "folder_status",
    "image_extensions",
    "image_from_tensor",
    "image_options_for",
    "ink_image_options",
    "load_folder",
    "photo_image_options",
    "preprocess_image",
]

#: What :func:`preprocess_image` accepts: an open Pillow image, a path, or the encoded file's bytes.
ImageInput = Union[Image.Image, str, os.PathLike, bytes]

#: Resampling filters by option name. ``box`` averages the source pixels under each output pixel
#: (Omniglot's and Glyphs' downscaling); ``bilinear`` is what the photo datasets use.
RESAMPLING: dict[str, Image.Resampling] = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}

# Bump when decoding or the cache layout changes, so stale caches are never reused.
_VERSION = 1

# Images per task handed to a decoding thread: large enough to amortise the pool's overhead,
# small enough for a smooth progress bar.
_CHUNK = 64

# Files that tools leave in folders (hidden ones, such as .DS_Store, are skipped by their dot).
_JUNK = frozenset({"thumbs.db", "desktop.ini"})

# Everything Pillow and zlib raise on a corrupt, truncated or unconvertible file.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (*IMAGE_ERRORS, EOFError, struct.error, zlib.error)

_EXIF_ORIENTATION = 0x0112

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Preprocessing one image


@dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes the uint8 ``[channels, image_size, image_size]`` tensor a dataset holds.

    Attributes:
        image_size: output side length in pixels (1..512); images are resized to a square.
        channels: 1 (luminance) or 3 (RGB).
        invert: store ``255 - value``: line drawings drawn dark on light become ink-high, as the
            built-in ``glyphs`` and ``omniglot`` datasets store them.
        resample: ``"box"`` or ``"bilinear"`` (see :data:`RESAMPLING`); only used when resizing.
    """

    image_size: int = 84
    channels: int = 3
    invert: bool = False
    resample: str = "box"

    def __post_init__(self) -> None:
        check_image_size("image options", self.image_size)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise MetakitError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}.")
        if not isinstance(self.invert, bool):
            raise MetakitError(f"invert must be true or false, got {self.invert!r}.")
        if self.resample not in RESAMPLING:
            raise unknown_name("resample filter", self.resample, RESAMPLING)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, image_size, image_size)``: the shape of one preprocessed image."""
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (e.g. to record in a run directory)."""
        return asdict(self)


class _Unconvertible(ValueError):
    """An image whose pixel mode has no meaningful conversion to L or RGB."""


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    if im.mode == target:
        return im
    if im.mode.startswith("I"):
        # 16-bit (and 32-bit integer) grayscale: Pillow's convert would clip at 255, whitening it.
        arr = np.asarray(im)
        top = int(arr.max()) if arr.size else 0
        if im.mode.startswith("I;16") or 255 < top <= 65535:
            arr = arr.astype(np.uint32) >> 8
        elif top > 65535 or int(arr.min(initial=0)) < 0:
            raise _Unconvertible(f"its 32-bit pixel values ({int(arr.min())}..{top}) have no 8-bit equivalent")
        return Image.fromarray(arr.astype(np.uint8), "L").convert(target)
    if im.mode == "F":
        raise _Unconvertible("it holds floating-point pixels (mode F), which have no 8-bit equivalent")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent areas mean "background": lay them on white, as viewers show them.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    try:
        return im.convert(target)
    except ValueError:
        raise _Unconvertible(f"its pixel mode {im.mode} cannot be converted to {target}") from None


def _decode_array(image: ImageInput, options: ImageOptions) -> np.ndarray:
    """The uint8 ``[C, H, W]`` array of ``image`` under ``options``; raises Pillow's own errors.

    This is the single decoder behind :func:`preprocess_image` and :func:`load_folder`.
    """
    size = options.image_size
    if isinstance(image, Image.Image):
        im = image
        opened = None
    else:
        opened = Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image)
        im = opened
    try:
        if im.format == "JPEG" and opened is not None:
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale (never below the target): much faster on
            # large photos. Mode None keeps the colours as they are (the photo sets do the same).
            im.draft(None, (size, size))
        if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            # Phone photos are stored sideways with a tag saying how to turn them; viewers obey it.
            im = ImageOps.exif_transpose(im)
        im = _to_mode(im, options.channels)
        if options.invert:
            # Before resizing (as Omniglot's loader does): the filter then averages ink coverage.
            # ImageChops, not ImageOps: the same 255 - v in C, without a lookup table built per call.
            im = ImageChops.invert(im)
        if im.size != (size, size):
            im = im.resize((size, size), RESAMPLING[options.resample])
        arr = np.array(im, dtype=np.uint8)  # a copy: Pillow's buffer view is read-only
    finally:
        if opened is not None:
            opened.close()
    return arr[None] if options.channels == 1 else arr.transpose(2, 0, 1)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, _Unconvertible):
        return str(exc)
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text}"


def preprocess_image(image: ImageInput, options: ImageOptions | None = None) -> torch.Tensor:
    """One image as the uint8 ``[C, H, W]`` tensor an image dataset stores, exactly as it stores it.

    Steps: undo the EXIF rotation; convert to ``options.channels`` (transparent pixels laid on
    white, 16-bit images scaled to 8 bits); invert if ``options.invert``; resize to
    ``options.image_size`` square with ``options.resample``. :func:`load_folder` stores exactly
    this, and with :func:`image_options_for` it reproduces any built-in image dataset's tensors
    from images exported by :func:`image_from_tensor`.

    Args:
        image: an open Pillow image, a path, or the encoded bytes of an image file.
        options: the preprocessing options (default :class:`ImageOptions`: 84px RGB).

    Returns:
        uint8 tensor ``[channels, image_size, image_size]``.

    Raises:
        MetakitError: the file is missing, unreadable, corrupt or in a mode with no 8-bit
            equivalent; one line naming the file.
    """
    options = options or ImageOptions()
    what = image if isinstance(image, (str, os.PathLike)) else "the image"
    try:
        return torch.from_numpy(np.ascontiguousarray(_decode_array(image, options)))
    except FileNotFoundError:
        raise MetakitError(f"image {what} does not exist; check the path.") from None
    except _DECODE_ERRORS as exc:
        raise MetakitError(
            f"cannot read {what} ({_reason(exc)}); replace it with a readable image file (PNG, JPEG, ...)."
        ) from None


def image_from_tensor(image: torch.Tensor | np.ndarray, options: ImageOptions) -> Image.Image:
    """The Pillow image that :func:`preprocess_image` reads back into exactly ``image``.

    For exporting a dataset's items as files (``metakit datasets export``): save the result as PNG
    (lossless), and ``preprocess_image(path, options)`` returns ``image`` unchanged. With
    ``options.invert`` the picture is inverted back, so ink-high drawings are saved dark on white,
    as people draw them.

    Args:
        image: uint8 ``[C, H, W]`` with ``C == options.channels`` and ``H == W == options.image_size``.
        options: the options the tensor was made with (see :func:`image_options_for`).
    """
    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or tuple(arr.shape) != options.shape:
        raise MetakitError(
            f"expected a uint8 image of shape {list(options.shape)} for these image options, got "
            f"{arr.dtype} {list(arr.shape)}; pass the options the images were made with."
        )
    im = Image.fromarray(np.ascontiguousarray(arr[0]), "L") if options.channels == 1 else Image.fromarray(
        np.ascontiguousarray(arr.transpose(1, 2, 0)), "RGB"
    )
    return ImageChops.invert(im) if options.invert else im


# --------------------------------------------------------------------------------------------
# Image options of each registered image dataset


def ink_image_options(options: dict[str, Any]) -> ImageOptions:
    """``glyphs`` and ``omniglot``: 1 channel, ink high (so files drawn dark on light are inverted), box filter."""
    return ImageOptions(image_size=options["image_size"], channels=1, invert=True, resample="box")


def photo_image_options(options: dict[str, Any]) -> ImageOptions:
    """The photo sets (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB): RGB, bilinear, as they decode."""
    return ImageOptions(image_size=options["image_size"], channels=3, invert=False, resample="bilinear")


def folder_image_options(options: dict[str, Any]) -> ImageOptions:
    """``folder``: the dataset's own ``image_size``, ``channels``, ``invert`` and ``resample`` options."""
    return ImageOptions(
        image_size=options["image_size"], channels=options["channels"], invert=options["invert"],
        resample=options["resample"],
    )


def image_options_for(dataset: Any, options: dict[str, Any] | None = None) -> ImageOptions:
    """The :class:`ImageOptions` under which image files become a registered dataset's tensors.

    For the built-in image datasets these are the options under which a PNG exported from the
    dataset (:func:`image_from_tensor`) is read back by :func:`preprocess_image` into the
    identical tensor, and under which new images (``metakit predict``) look like its training
    items:

    * ``glyphs``, ``omniglot``: ``image_size`` of the config (default 28), 1 channel,
      ``invert: true`` (they store ink high; exported files are dark ink on white, like the
      original Omniglot PNGs, which these options also turn into Omniglot's exact tensors), box.
    * ``miniimagenet``, ``tieredimagenet``, ``cifarfs``, ``fc100``, ``cub``: ``image_size`` of the
      config, 3 channels, no inversion, bilinear (as their loaders resize).
    * ``folder``: its own options.

    Args:
        dataset: a ``dataset`` config section (:class:`~metakit.config.DatasetConfig`: its
            ``name`` and ``options``) or a dataset name.
        options: extra dataset options, overriding the section's.

    Raises:
        MetakitError: unknown dataset, or one whose items are not decoded image files (text
            embeddings, arrays, regression tasks).
    """
    from metakit.datasets import get_dataset

    name = dataset if isinstance(dataset, str) else dataset.name
    given = {} if isinstance(dataset, str) else dict(getattr(dataset, "options", {}) or {})
    given.update(options or {})
    spec = get_dataset(name)
    if spec.image_options is None:
        raise MetakitError(
            f"dataset {name!r} is not made from image files (its items are used as they are), so no image "
            f"preprocessing applies to it; give it new items in its own form."
        )
    params = inspect.signature(spec.resolve("loader")).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return spec.resolve("image_options")({**defaults, **given})


# --------------------------------------------------------------------------------------------
# Finding the images


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of the formats this Pillow can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class _File:
    path: str  # a string, not a Path: tens of thousands are made per load
    rel: str  # POSIX path relative to the root: names the file in messages and the cache key
    split: str | None
    group: str | None
    cls: str  # the class name: "<group>/<class>" with groups, else "<class>"


def _layout(published: bool, groups: bool) -> str:
    parts = ["ROOT"] + (["{train,val,test}"] if published else []) + (["<group>"] if groups else [])
    return "/".join(parts + ["<class>", "<image>"])


def _scan(root: Path, groups: bool) -> tuple[list[_File], list[str], bool]:
    """``(files, ignored, published)``: the images in class order, the non-image files, the layout."""
    top = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [d for d in top if d in SPLITS]
    published = bool(split_dirs)
    if published:
        others = [d for d in top if d not in SPLITS]
        if others:
            raise MetakitError(
                f"folder {root} mixes split folders ({', '.join(split_dirs)}) with other folders "
                f"({', '.join(others[:3])}); use either ROOT/{{train,val,test}}/<class>/<image> or ROOT/<class>/<image>."
            )
        missing = [s for s in SPLITS if s not in split_dirs]
        if missing:
            raise MetakitError(
                f"folder {root} has {', '.join(split_dirs)}/ but no {', '.join(missing)}/; add "
                f"{root / missing[0]}/<class>/<image> with classes of its own, or use ROOT/<class>/<image> "
                f"with split: class."
            )
    depth = 2 + published + groups  # path parts of an image, the file name included
    layout = _layout(published, groups)
    exts = image_extensions()
    files: list[_File] = []
    ignored: list[str] = []
    # followlinks: class folders may be symlinks; the depth limit below rules out endless cycles.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        parts = Path(dirpath).relative_to(root).parts
        prefix = "".join(f"{p}/" for p in parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(parts) == depth - 1 and dirnames:
            hint = "; set groups: true for ROOT/<group>/<class>/<image>" if not groups else ""
            raise MetakitError(
                f"folder {root}: {prefix}{dirnames[0]} is a folder inside the class folder {prefix.rstrip('/')}, but the "
                f"layout is {layout}{hint}; or move its images up into {prefix}."
            )
        for fname in sorted(filenames):
            if fname.startswith(".") or fname.lower() in _JUNK:
                continue
            rel = prefix + fname
            if os.path.splitext(fname)[1].lower() not in exts:
                if parts:  # a README beside the class folders is expected; a .heic among images is not
                    ignored.append(rel)
                continue
            if len(parts) + 1 != depth:
                raise MetakitError(
                    f"folder {root}: image {rel} is not inside a class folder of the layout {layout}; "
                    f"move it into its class folder (or delete it)."
                )
            split = parts[0] if published else None
            group = parts[-2] if groups else None
            cls = f"{group}/{parts[-1]}" if groups else parts[-1]
            files.append(_File(os.path.join(dirpath, fname), rel, split, group, cls))
    if not files:
        exts_hint = ", ".join(e for e in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp") if e in exts)
        other = f"; it holds {len(ignored)} other file(s), e.g. {ignored[0]}" if ignored else ""
        raise MetakitError(
            f"folder {root} holds no images ({exts_hint}, ...){other}; lay them out as {layout}."
        )
    rank = {s: i for i, s in enumerate(SPLITS)}
    files.sort(key=lambda f: (rank.get(f.split, 0), f.cls, f.rel))
    if published:
        where: dict[str, str] = {}
        for f in files:
            first = where.setdefault(f.cls, f.split or "")
            if first != f.split:
                raise MetakitError(
                    f"folder {root}: class {f.cls!r} is in both {first}/ and {f.split}/, but few-shot splits need "
                    f"disjoint classes (test classes unseen in training); keep each class in one split folder, or "
                    f"use ROOT/<class>/<image> with split: class."
                )
    return files, ignored, published


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _threads(workers: int | None) -> int:
    if workers is None:
        return max(1, min(8, os.cpu_count() or 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MetakitError(f"folder: workers must be an integer >= 1 (or null for the default), got {workers!r}.")
    return workers


def _parallel(func: Callable[[int, int], T], n: int, workers: int) -> Iterator[T]:
    """``func(lo, hi)`` over chunks of ``range(n)``, in order, on ``workers`` threads (a generator)."""
    chunks = [(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]
    if workers == 1:
        yield from (func(lo, hi) for lo, hi in chunks)
        return
    # Pillow and hashlib release the GIL while decoding and hashing, so threads run in parallel.
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(lambda c: func(*c), chunks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _digests(root: Path, files: Sequence[_File], workers: int) -> list[str]:
    out = [""] * len(files)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            out[i] = _file_digest(files[i].path)

    try:
        for _ in _parallel(work, len(files), workers):
            pass
    except OSError as exc:
        raise MetakitError(
            f"folder {root}: cannot read {getattr(exc, 'filename', None) or 'a file'} ({exc.strerror or exc}); "
            f"check its permissions, or remove it."
        ) from None
    return out


def _check_duplicates(root: Path, files: Sequence[_File], digests: Sequence[str]) -> None:
    """Identical bytes in two classes: one copy is mislabelled (and would leak across splits).

    Identical copies within one class are kept: real datasets have them (two Omniglot drawers
    drew one Braille character identically), and dropping them would change the data.
    """
    first: dict[str, int] = {}
    for i, (f, d) in enumerate(zip(files, digests)):
        j = first.setdefault(d, i)
        if files[j].cls != f.cls:
            raise MetakitError(
                f"folder {root}: {files[j].rel} (class {files[j].cls!r}) and {f.rel} (class {f.cls!r}) are the same "
                f"image (identical bytes), so one of them is mislabelled; delete the copy in the wrong class, or set "
                f"allow_duplicates: true if it belongs to both."
            )


# --------------------------------------------------------------------------------------------
# Decoding and the cache


@dataclass
class _Decoded:
    images: np.ndarray  # uint8 [n, C, S, S] (memory-mapped when read from the cache)
    labels: np.ndarray  # int64 [n]
    names: list[str]
    groups: list[str] | None
    splits: list[str] | None
    files: list[str]
    skipped: list[str] = field(default_factory=list)  # "rel (reason)" of unreadable files skipped


def _check_memory(root: Path, n: int, options: ImageOptions) -> None:
    cap = default_memory_cap()
    if cap is None:
        return
    need = n * int(np.prod(options.shape))
    if need > cap:
        fit = int((cap / (options.channels * n)) ** 0.5)
        raise MetakitError(
            f"folder {root}: {n:,} images at {options.image_size}px need {format_bytes(need)} of memory, over 80% of "
            f"this machine's ({format_bytes(cap)}); use image_size {fit} or less, or fewer images."
        )


def _decode_files(root: Path, files: Sequence[_File], options: ImageOptions, workers: int, skip: bool) -> _Decoded:
    n = len(files)
    _check_memory(root, n, options)
    out = np.empty((n, *options.shape), dtype=np.uint8)
    bad: dict[int, str] = {}
    stop = threading.Event()

    def work(lo: int, hi: int) -> tuple[int, dict[int, str]]:
        errors = {}
        for i in range(lo, hi):
            if stop.is_set():
                break
            try:
                out[i] = _decode_array(files[i].path, options)
            except _DECODE_ERRORS as exc:
                errors[i] = _reason(exc)
                if not skip:
                    stop.set()
                    break
        return hi - lo, errors

    done = 0
    with progress(f"decoding {n:,} images of {root.name}", n) as update, contextlib.closing(
        _parallel(work, n, workers)
    ) as results:
        for count, errors in results:
            bad.update(errors)
            done += count
            update(done)
            if bad and not skip:
                break
    if bad and not skip:
        i = min(bad)
        raise MetakitError(
            f"folder {root}: cannot read {files[i].rel} ({bad[i]}); replace or delete it, or set "
            f"skip_bad_files: true to skip unreadable images."
        )
    keep = [i for i in range(n) if i not in bad]
    if not keep:
        raise MetakitError(
            f"folder {root}: none of its {n} images can be read (e.g. {files[min(bad)].rel}: {bad[min(bad)]}); "
            f"replace them with readable image files."
        )
    kept = [files[i] for i in keep]
    names = list(dict.fromkeys(f.cls for f in kept))
    index = {c: k for k, c in enumerate(names)}
    first = {f.cls: f for f in reversed(kept)}
    return _Decoded(
        images=out[keep] if bad else out,
        labels=np.fromiter((index[f.cls] for f in kept), dtype=np.int64, count=len(kept)),
        names=names,
        groups=[first[c].group for c in names] if kept[0].group is not None else None,  # type: ignore[misc]
        splits=[first[c].split for c in names] if kept[0].split is not None else None,  # type: ignore[misc]
        files=[f.rel for f in kept],
        skipped=[f"{files[i].rel} ({bad[i]})" for i in sorted(bad)],
    )


def _images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(images)).cast("B")).hexdigest()


def _write_cache(dest: Path, dec: _Decoded) -> None:
    # meta.json is written last: it marks a complete entry, and it holds the images' checksum.
    for fname, arr in (("images.npy", dec.images), ("labels.npy", dec.labels)):
        with atomic_path(dest / fname) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)  # a file object: np.save would append ".npy" to the name
    write_json(dest / "meta.json", {
        "version": _VERSION,
        "shape": list(dec.images.shape),
        "images_sha256": _images_sha256(dec.images),
        "class_names": dec.names,
        "class_groups": dec.groups,
        "class_splits": dec.splits,
        "files": dec.files,
        "skipped": dec.skipped,
    })


def _read_cache(dest: Path) -> _Decoded | None:
    """The cached entry, or ``None`` when it is absent or damaged in any way (then it is rebuilt)."""
    try:
        meta = json.loads((dest / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("version") != _VERSION:
            return None
        # Copy-on-write: torch gets a writable array, and nothing can ever write into the cache file.
        images = np.load(dest / "images.npy", mmap_mode="c", allow_pickle=False)
        labels = np.load(dest / "labels.npy", allow_pickle=False)
        names = meta["class_names"]
        ok = (
            images.dtype == np.uint8 and list(images.shape) == meta["shape"] and labels.dtype == np.int64
            and labels.shape == images.shape[:1] and len(meta["files"]) == len(labels)
            and (len(labels) == 0 or (labels.min() >= 0 and labels.max() < len(names)))
            and _images_sha256(images) == meta["images_sha256"]
        )
        if not ok:
            return None
        return _Decoded(
            images, labels, list(names), meta["class_groups"], meta["class_splits"], list(meta["files"]),
            list(meta["skipped"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _cache_key(files: Sequence[_File], digests: Sequence[str], options: ImageOptions, flags: dict[str, bool]) -> str:
    h = hashlib.sha256(json.dumps({"v": _VERSION, **options.to_dict(), **flags}, sort_keys=True).encode())
    for f, d in zip(files, digests):
        h.update(f"{f.rel}\0{d}\n".encode())
    return h.hexdigest()[:24]


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _examples(items: Sequence[str], k: int = 2) -> str:
    return "; ".join(items[:k]) + (" ..." if len(items) > k else "")


# --------------------------------------------------------------------------------------------
# Public loader, splits and status


@dataclass
class FolderDataset(ImageSetDataset):
    """A :class:`ClassDataset` read from a folder of images.

    Attributes:
        root: the folder it was read from.
        files: per item, its path relative to ``root`` (to trace a prediction back to its file).
        image_options: how the files became tensors (:func:`preprocess_image` with these options
            turns new images into the same kind of tensor).
        skipped: ``"path (reason)"`` of each unreadable file skipped (``skip_bad_files: true``).
    """

    root: str = ""
    files: list[str] = field(default_factory=list)
    image_options: ImageOptions = field(default_factory=ImageOptions)
    skipped: list[str] = field(default_factory=list)


def load_folder(
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    channels: int = 3,
    invert: bool = False,
    resample: str = "box",
    groups: bool = False,
    skip_bad_files: bool = False,
    allow_duplicates: bool = False,
    workers: int | None = None,
) -> FolderDataset:
    """Load your own images, one folder per class, as a :class:`ClassDataset` (see the module docs).

    Args:
        root: the folder: ``ROOT/<class>/<image>``, or ``ROOT/{train,val,test}/<class>/<image>``
            for your own split (``split: published`` or ``auto``); with ``groups`` one more level,
            ``ROOT/<group>/<class>/<image>``, for ``split: group``.
        image_size: side of the square images stored (1..512).
        channels: 1 (grayscale) or 3 (RGB); every image is converted, whatever its mode.
        invert: store ``255 - value`` (dark drawings on white become ink-high, like Omniglot's).
        resample: ``"box"`` or ``"bilinear"``, the filter used to resize.
        groups: the folder has a group level above the classes.
        skip_bad_files: skip unreadable or corrupt images (their count goes to stderr) instead of
            failing on the first one.
        allow_duplicates: accept identical images (same bytes) in two classes instead of failing.
        workers: decoding threads (default: CPU count, at most 8).

    Returns:
        A :class:`FolderDataset` of uint8 images ``[n, channels, image_size, image_size]``; class
        names are the class folder names (``"<group>/<class>"`` with groups), classes numbered by
        split folder (train, val, test) then by name.
    """
    options = ImageOptions(image_size=image_size, channels=channels, invert=invert, resample=resample)
    for key, value in (("groups", groups), ("skip_bad_files", skip_bad_files), ("allow_duplicates", allow_duplicates)):
        if not isinstance(value, bool):
            raise MetakitError(f"folder: {key} must be true or false, got {value!r}.")
    threads = _threads(workers)
    if root is None:
        raise MetakitError(
            "dataset folder needs root: set dataset.root to the folder holding one folder of images per class "
            "(ROOT/<class>/<image>)."
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise MetakitError(f"folder root {folder} {what}; set dataset.root to the folder holding one folder per class.")
    files, ignored, _ = _scan(folder, groups)
    if ignored:
        _note(f"folder: ignored {len(ignored)} file(s) that are not images Pillow reads (e.g. {_examples(ignored)}).")
    digests = _digests(folder, files, threads)
    if not allow_duplicates:
        _check_duplicates(folder, files, digests)
    flags = {"groups": groups, "skip_bad_files": skip_bad_files, "allow_duplicates": allow_duplicates}
    # Not cache_dir("folder", key): a load that fails on a bad file must leave no empty entry behind.
    dest = cache_dir("folder") / _cache_key(files, digests, options, flags)
    dec = _read_cache(dest)
    if dec is None:
        dec = _decode_files(folder, files, options, threads, skip_bad_files)
        _write_cache(dest, dec)
    if dec.skipped:
        _note(f"folder: skipped {len(dec.skipped)} unreadable image(s) (e.g. {_examples(dec.skipped)}).")
    return FolderDataset(
        name="folder",
        inputs=torch.from_numpy(dec.images),
        labels=torch.from_numpy(np.asarray(dec.labels, dtype=np.int64)),
        class_names=dec.names,
        class_groups=dec.groups,
        class_splits=dec.splits,
        root=str(folder),
        files=dec.files,
        image_options=options,
        skipped=dec.skipped,
    )


def folder_splits(
    dataset: ClassDataset, split: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, ClassDataset]:
    """``split: published``: the classes of ``ROOT/train``, ``ROOT/val`` and ``ROOT/test``.

    ``seed`` and ``fractions`` are ignored (your split is fixed); ``class`` and ``group`` splits
    are handled by :func:`~metakit.datasets.load_splits`.
    """
    if split != "published":
        raise unknown_name(f"split for dataset {dataset.name!r}", split, ["auto", "published", "group", "class"])
    class_splits = getattr(dataset, "class_splits", None)
    if not class_splits:
        root = getattr(dataset, "root", "ROOT")
        raise MetakitError(
            f"folder {root} has no train/, val/ and test/ folders, so there is no published split; use split: class "
            f"(seeded fractions of the classes), or lay the images out as ROOT/{{train,val,test}}/<class>/<image>."
        )
    return split_by_class_splits(dataset, class_splits)


def folder_status() -> str:
    """One line for ``metakit datasets``: how to point it at your images, and what is cached."""
    # cache_dir() without "folder": a status line must not create folders.
    base = cache_dir() / "folder"
    entries = [p for p in base.iterdir() if (p / "meta.json").is_file()] if base.is_dir() else []
    cached = f"{len(entries)} decoded folder(s) cached in {base}" if entries else f"decoded images are cached in {base}"
    return f"your images: set dataset.root to ROOT/<class>/<image>; {cached}"

