"""Shared machinery for the image datasets that come as pickles, npz files, folders or tarballs.

miniImageNet, tieredImageNet, CIFAR-FS, FC100 and CUB-200-2011 (one module each) all follow the
same pattern, implemented here once:

* **Finding the files.** A dataset is looked for in ``root`` (the loader argument, ``dataset.root``
  in configs), then in ``$METAKIT_<NAME>``, then in metakit's cache (``cache_dir()/<name>``). Each
  location may be the dataset folder itself, a parent holding one of the usual folder names, or
  (for archives) the archive file. A location holding only part of a layout is an error naming
  the missing files; nothing anywhere is a one-line error saying which files to place where and
  where to get them.
* **Reading untrusted pickles.** The usual distributions of these datasets are Python pickles;
  :func:`load_pickle` only lets plain data (dicts, lists, strings, numbers and numpy arrays)
  through, so a tampered file cannot run code.
* **Decoding once.** Images become uint8 RGB ``[n, 3, size, size]`` (resized with PIL); the result
  is cached as an ``.npz`` under ``cache_dir(<name>, "decoded")``, written atomically and keyed
  by the source files' identity, the layout and ``image_size``.
* **Memory.** Everything is held in memory (the :class:`ClassDataset` design). Before allocating,
  the decoded size is compared with ``max_memory_gb`` (default: 80% of physical memory), and a
  dataset that does not fit fails with one line instead of being killed by the OS.
* **Archives.** :func:`find_archive` and :func:`read_archive` open a benchmark's official tar
  archive (given directly or inside a folder) in one streaming pass, without extracting it;
  downloads go through :mod:`metakit.datasets.download`.
* **The published split.** :class:`ImageSetDataset` records each class's published split
  (``train``/``val``/``test``) and :func:`published_splits` returns exactly those classes, which
  is what ``load_splits(name, split="published")`` uses.

:class:`ImageBenchmark` ties these together: a benchmark module declares only what is its own
(names, file layouts, URL and sha256, split lists) and a ``probe`` that recognises its layouts;
finding, the not-found error, the decoded cache and the status line are the benchmark's methods.

Options every benchmark loader takes:

* ``root``: the folder holding one of the benchmark's layouts, a parent holding one of its usual
  folder names, or (for archives) the archive itself. ``None`` looks at ``$METAKIT_<NAME>``, then
  at metakit's cache. A missing dataset is a one-line error saying which files to put where.
* ``image_size``: output side length; other sizes than the native one are resized with PIL.
* ``download`` (benchmarks with an official archive): fetch it when no copy is found, verified by
  sha256; with ``False`` (or ``$METAKIT_OFFLINE``) a missing dataset is an error saying what to
  put where. Files you supply are validated but not checksum-verified, so repacked copies work.
* ``max_memory_gb``: fail with one line, before allocating, if the decoded images would need
  more (default: 80% of physical memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
from PIL import Image

from metakit.datasets.base import ClassDataset
from metakit.datasets.download import verify
from metakit.errors import MetakitError, unknown_name
from metakit.utils import atomic_path, cache_dir

__all__ = [
    "IMAGE_ERRORS",
    "SPLITS",
    "Decoded",
    "ImageBenchmark",
    "ImageSetDataset",
    "Location",
    "Source",
    "archive_fix",
    "as_text",
    "assemble",
    "cached_decode",
    "candidates",
    "check_image_size",
    "check_memory",
    "dataset_dir",
    "decode_file",
    "decode_files",
    "decode_image",
    "decoded_bytes",
    "default_memory_cap",
    "fill_resized",
    "find",
    "find_archive",
    "format_bytes",
    "load_pickle",
    "not_found",
    "order_classes",
    "partial_layout",
    "progress",
    "published_splits",
    "read_archive",
    "split_by_class_splits",
    "stat_identity",
    "str_keys",
    "to_dataset",
    "user_locations",
]

#: The published split names, in the order classes are numbered.
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Bump when decoding changes so stale decoded caches are never reused.
_DECODE_VERSION = 1

# Default memory cap as a fraction of physical memory: leaves room for the model and the OS.
_DEFAULT_MEMORY_FRACTION = 0.8

# PIL signals undecodable data with any of these (SyntaxError: some truncated PNGs).
IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class ImageSetDataset(ClassDataset):
    """A :class:`ClassDataset` that also records each class's published split.

    Attributes:
        class_splits: per class, ``"train"``, ``"val"`` or ``"test"``: the split the dataset's
            published protocol puts it in (see each loader); :func:`published_splits` uses it.
    """

    class_splits: list[str] | None = None

    def __post_init__(self, images: torch.Tensor | None = None) -> None:
        super().__post_init__(images)
        if self.class_splits is not None and len(self.class_splits) != self.num_classes:
            raise MetakitError(f"dataset {self.name!r}: one published split per class is required.")


def published_splits(
    dataset: ClassDataset, split: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, ClassDataset]:
    """The ``"published"`` split: exactly the classes the dataset's protocol assigns to each part.

    ``seed`` and ``fractions`` are accepted for the registry's splitter signature and ignored: a
    published split is fixed. ``group`` and ``class`` splits are handled by the caller.
    """
    if split != "published":
        raise unknown_name("split", split, ["published", "group", "class"])
    class_splits = getattr(dataset, "class_splits", None)
    if not class_splits:
        raise MetakitError(
            f"dataset {dataset.name!r} records no published split; use split: class or split: group."
        )
    return split_by_class_splits(dataset, class_splits)


def split_by_class_splits(dataset: ClassDataset, class_splits: Sequence[str]) -> dict[str, ClassDataset]:
    """``train``/``val``/``test`` subsets of ``dataset``: the classes ``class_splits`` assigns to each.

    Shared by the benchmarks' published splits and the ``folder`` dataset's split folders.
    """
    return {
        part: dataset.subset([c for c, s in enumerate(class_splits) if s == part], f"{dataset.name}/{part}")
        for part in SPLITS
    }


# --------------------------------------------------------------------------------------------
# Locating the files


@dataclass(frozen=True)
class Location:
    """One place a dataset may be: ``origin`` is ``"root"``, ``"$METAKIT_<NAME>"`` or ``"cache"``."""

    path: Path
    origin: str

    def describe(self) -> str:
        """``"<origin> <path>"`` for messages."""
        return f"{self.origin} {self.path}"


def user_locations(root: str | os.PathLike | None, env_var: str) -> list[Location]:
    """``root`` and ``$env_var`` as locations, in that order (absent ones left out)."""
    out = []
    if root is not None:
        out.append(Location(Path(root).expanduser(), "root"))
    env = os.environ.get(env_var)
    if env:
        out.append(Location(Path(env).expanduser(), f"${env_var}"))
    return out


def candidates(path: Path, subdirs: Sequence[str]) -> list[Path]:
    """``path`` itself, then any of the usual dataset folder names inside it."""
    out = [path]
    if path.is_dir():
        out += [path / s for s in subdirs if (path / s).is_dir()]
    return out


def find(
    display: str,
    root: str | os.PathLike | None,
    env_var: str,
    caches: Sequence[Path],
    subdirs: Sequence[str],
    probe: Callable[[Path, str], Any],
) -> tuple[Any, list[Location]]:
    """Return ``(source, looked)``: the first location where ``probe(path, origin)`` finds the data.

    ``probe`` returns a source object, ``None`` when nothing of the dataset is at ``path``, or
    raises :class:`MetakitError` when only part of a layout is there. Such an error is raised only
    if no other candidate folder of the same location holds a complete layout, and then it stops
    the search: a half-placed dataset should be completed, not silently replaced. A ``root`` or
    environment variable naming a path that does not exist is an error too (a typo should not
    trigger a download elsewhere). ``source`` is ``None`` when nothing was found; ``looked`` lists
    the locations tried.
    """
    looked: list[Location] = []
    locations = []
    for loc in user_locations(root, env_var):
        if not loc.path.exists():
            raise MetakitError(
                f"{display} {loc.origin} {loc.path} does not exist; point it at the folder holding the "
                f"{display} files (see the loader's docstring for the layouts)."
            )
        locations.append(loc)
    locations += [Location(cache, "cache") for cache in caches]
    for loc in locations:
        looked.append(loc)
        if not loc.path.exists():
            continue
        partial: MetakitError | None = None
        for path in candidates(loc.path, subdirs):
            try:
                src = probe(path, loc.origin)
            except MetakitError as exc:
                partial = partial or exc
                continue
            if src is not None:
                return src, looked
        if partial is not None:
            raise partial
    return None, looked


def dataset_dir(name: str) -> Path:
    """``cache_dir()/name`` without creating it: where files are placed by hand or downloaded to."""
    return cache_dir() / name


def not_found(
    display: str, wants: str, env_var: str, place: Path, get: str, looked: Sequence[Location]
) -> MetakitError:
    """The one-line error for a dataset that is nowhere: which files, where to put them, where to get them."""
    where = "; ".join(loc.describe() for loc in looked)
    return MetakitError(
        f"{display} not found (looked in {where}): place {wants} in {place} "
        f"(or set ${env_var} or dataset.root to their folder); get {get}."
    )


def partial_layout(
    display: str, origin: str, folder: Path, have: Iterable[str], missing: Iterable[str]
) -> MetakitError:
    """The error for a folder holding only part of a layout."""
    return MetakitError(
        f"{display} {origin} {folder} has {', '.join(have)} but lacks {', '.join(missing)}; "
        f"place the missing file(s) there too."
    )


def stat_identity(paths: Iterable[Path]) -> str:
    """A key that changes whenever one of ``paths`` is replaced, resized or touched.

    Size and modification time, not a content hash: these files are gigabytes, and a decoded
    cache hit must not cost a full read of them.
    """
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Untrusted pickles

# Everything plain data pickled by Python 2 or 3 with NumPy 1 or 2 refers to; nothing that can
# call arbitrary code. ("numpy.core" is NumPy 1's name for NumPy 2's "numpy._core".)
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not plain data")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]  # avoids NumPy 2's deprecation shim
        elif module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def load_pickle(source: Path | IO[bytes], what: str, fix: str) -> Any:
    """Unpickle plain data from a path or binary file; any failure is one :class:`MetakitError` line.

    ``latin1`` decoding reads Python 2 pickles (most of these datasets were made with Python 2).
    ``what`` names the file in the error and ``fix`` says what to do about it.
    """
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                return _DataUnpickler(f, encoding="latin1").load()
        return _DataUnpickler(source, encoding="latin1").load()
    except MemoryError:
        raise MetakitError(f"{what} does not fit in memory; lower image_size or use a machine with more RAM.") from None
    except Exception as exc:  # noqa: BLE001 - unpickling corrupt data raises nearly anything
        raise MetakitError(
            f"{what} is not a readable pickle ({type(exc).__name__}: {exc}); {fix.rstrip('.')}."
        ) from None


def str_keys(obj: Any) -> Any:
    """A dict's ``bytes`` keys as ``str`` (Python 2 pickles); other objects unchanged."""
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def as_text(value: Any) -> str:
    """A name read from a pickle (``str``, ``bytes`` or a numpy string) as ``str``."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------------------------
# Images, memory and progress


def check_image_size(display: str, image_size: Any, limit: int = 512) -> int:
    """Validate ``image_size`` (an int in 1..``limit``) and return it."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 1 <= image_size <= limit:
        raise MetakitError(f"{display}: image_size must be an integer in 1..{limit}, got {image_size!r}.")
    return image_size


def decoded_bytes(n_images: int, image_size: int) -> int:
    """Bytes of ``n_images`` decoded RGB uint8 images of side ``image_size``."""
    return n_images * 3 * image_size * image_size


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"1.3 GB"``, ``"250 MB"`` or ``"21 kB"`` (decimal units, like the download sizes)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def default_memory_cap() -> float | None:
    """80% of this machine's physical memory in bytes, or ``None`` where it cannot be read.

    Every image dataset (the benchmarks and ``folder``) checks its decoded size against this
    before allocating, so a dataset too large for the machine fails with one line.
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * _DEFAULT_MEMORY_FRACTION
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(display: str, n_images: int, image_size: int, max_memory_gb: float | None) -> None:
    """Fail with one line if ``n_images`` decoded images would exceed the memory cap.

    The cap is ``max_memory_gb`` gigabytes, or 80% of physical memory when it is ``None``; a
    non-positive ``max_memory_gb`` disables the check.
    """
    bad_type = not isinstance(max_memory_gb, (int, float)) or isinstance(max_memory_gb, bool)
    if max_memory_gb is not None and bad_type:
        raise MetakitError(f"{display}: max_memory_gb must be a number of gigabytes, got {max_memory_gb!r}.")
    if max_memory_gb is not None and max_memory_gb <= 0:
        return
    if max_memory_gb is not None:
        cap, source = max_memory_gb * 1e9, "max_memory_gb"
    else:
        default = default_memory_cap()
        if default is None:
            return
        cap, source = default, "80% of this machine's memory; set max_memory_gb to change it"
    need = decoded_bytes(n_images, image_size)
    if need > cap:
        fit = int((cap / (3 * n_images)) ** 0.5) if n_images else image_size
        fix = f"use image_size {fit} or less, or raise max_memory_gb" if fit >= 1 else "raise max_memory_gb"
        raise MetakitError(
            f"{display} at {image_size}px needs {format_bytes(need)} of memory for {n_images:,} images, "
            f"over the {format_bytes(cap)} cap ({source}); {fix}."
        )


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on a terminal (nothing in logs and pipes); yields ``update(done)``."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def decode_image(data: bytes | bytearray | memoryview | str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode an encoded image (bytes or a path) to RGB uint8 ``[3, image_size, image_size]``.

    Raises PIL's own errors (see :data:`IMAGE_ERRORS`); callers turn them into one-line errors
    that name the file.
    """
    raw = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(raw) as im:
        if im.format == "JPEG":
            # Lets libjpeg decode at a reduced scale (never below the target): much faster on
            # full-size photos such as CUB's.
            im.draft("RGB", (image_size, image_size))
        rgb = im.convert("RGB")
    if rgb.size != (image_size, image_size):
        # PIL widens the filter when shrinking, so this is an anti-aliased downscale.
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def fill_resized(out: np.ndarray, images: np.ndarray, channels_last: bool, what: str) -> None:
    """Write RGB uint8 ``images`` into ``out`` (``[n, 3, size, size]``), resizing when sizes differ.

    ``images`` is ``[n, H, W, 3]`` (``channels_last``) or ``[n, 3, H, W]``; anything else is an
    error naming ``what``.
    """
    size = out.shape[-1]
    ok = images.ndim == 4 and images.shape[3 if channels_last else 1] == 3 and images.dtype == np.uint8
    if not ok:
        layout = "[n, H, W, 3]" if channels_last else "[n, 3, H, W]"
        raise MetakitError(
            f"{what} holds {images.dtype} images of shape {tuple(images.shape)}, not uint8 RGB {layout}; "
            f"replace it with the original file."
        )
    hw = images.shape[1:3] if channels_last else images.shape[2:4]
    if hw == (size, size):
        out[...] = images.transpose(0, 3, 1, 2) if channels_last else images
        return
    for i in range(len(images)):
        img = images[i] if channels_last else images[i].transpose(1, 2, 0)
        small = Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def decode_file(
    display: str, path: Path, image_size: int, missing: Callable[[], MetakitError] | None = None
) -> np.ndarray:
    """:func:`decode_image` of one file, any failure one line naming it.

    ``missing`` builds the error for a file that does not exist (a layout that lists its images
    says which list named it); without it a missing file is reported as undecodable.
    """
    try:
        return decode_image(path, image_size)
    except FileNotFoundError:
        if missing is None:
            raise MetakitError(f"{display}: cannot decode {path} (it does not exist); replace the file.") from None
        raise missing() from None
    except IMAGE_ERRORS as exc:
        raise MetakitError(f"{display}: cannot decode {path} ({exc}); replace the file.") from None


def decode_files(
    display: str,
    paths: Sequence[Path],
    out: np.ndarray,
    missing: Callable[[int], MetakitError] | None = None,
) -> None:
    """Decode ``paths`` into ``out`` (``[len(paths), 3, size, size]``) with a progress bar.

    The one loop behind every layout that keeps its images as files in folders; ``missing``
    is as for :func:`decode_file`, given the index of the missing path.
    """
    image_size = out.shape[-1]
    with progress(f"decoding {display} ({len(paths)} images)", len(paths)) as update:
        for i, path in enumerate(paths):
            gone = None if missing is None else (lambda i=i: missing(i))
            out[i] = decode_file(display, path, image_size, gone)
            if i % 256 == 0:
                update(i)


# --------------------------------------------------------------------------------------------
# Official archives


def archive_fix(official: str, origin: str) -> str:
    """What to do about a damaged archive: replace it with ``official`` (deleting a cached copy refetches it)."""
    again = " (delete it and it is downloaded again)" if origin in ("cache", "download") else ""
    return f"replace it with the official {official}{again}"


def find_archive(display: str, path: Path, origin: str, archive: str) -> Path | None:
    """The tar archive at ``path``: ``path`` itself when it is a file, else ``path/archive`` if present.

    A file that is not a tar archive is an error: the user pointed at it as the dataset.
    """
    if path.is_file():
        if tarfile.is_tarfile(path):
            return path
        raise MetakitError(f"{display} {origin} {path} is not a tar archive; point it at {archive} or its folder.")
    if path.is_dir() and (path / archive).is_file():
        return path / archive
    return None


def read_archive(
    display: str,
    path: Path,
    fix: str,
    visit: Callable[[str, IO[bytes]], None],
    sha256: str | None = None,
    what: str = "",
) -> None:
    """Call ``visit(name, file)`` for each file in the tar archive at ``path``, in one streaming pass.

    Streaming (``"r|*"``): one sequential pass over the gzip stream, never extracted, so there is
    never a half-extracted folder. With ``sha256`` the archive is verified first (``what`` names
    it), as metakit's own cached copies are. A damaged archive is one line ending in ``fix``.
    """
    if sha256 is not None:
        verify(path, sha256, what=what)
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if member.isfile():
                    visit(member.name, tf.extractfile(member))  # type: ignore[arg-type]
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise MetakitError(f"{display} {path} is not a readable tar.gz ({type(exc).__name__}: {exc}); {fix}.") from None


# --------------------------------------------------------------------------------------------
# Decoded datasets and their cache


@dataclass
class Decoded:
    """A decoded dataset: what the ``.npz`` cache holds.

    Attributes:
        images: uint8 ``[n, 3, size, size]``.
        labels: int64 ``[n]``, class indices into ``names``.
        names: class names.
        splits: per class, its published split.
        groups: per class, its group (superclass, category) or ``None`` when the dataset has none.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    splits: list[str]
    groups: list[str] | None = None


_CACHE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def _consistent(dec: Decoded, image_size: int) -> bool:
    """Whether a cached :class:`Decoded` is whole: a damaged or foreign npz must be rebuilt, not used."""
    n = len(dec.names)
    return (
        n > 0
        and dec.images.dtype == np.uint8
        and dec.images.ndim == 4
        and dec.images.shape[2:] == (image_size, image_size)
        and dec.labels.shape == (len(dec.images),)
        and len(dec.splits) == n
        and set(dec.splits) <= set(SPLITS)
        and (dec.groups is None or len(dec.groups) == n)
        and 0 <= int(dec.labels.min()) <= int(dec.labels.max()) < n
    )


def _load_cached(path: Path, display: str, image_size: int, max_memory_gb: float | None) -> Decoded | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["labels"].shape[0])
            check_memory(display, n, image_size, max_memory_gb)
            groups = z["groups"].tolist() if bool(z["has_groups"]) else None
            dec = Decoded(z["images"], z["labels"], z["names"].tolist(), z["splits"].tolist(), groups)
        return dec if _consistent(dec, image_size) else None
    except _CACHE_ERRORS:
        return None  # an unreadable cache entry is rebuilt, never an error for the user


def cached_decode(
    name: str,
    display: str,
    key: str,
    image_size: int,
    max_memory_gb: float | None,
    decode: Callable[[], Decoded],
) -> Decoded:
    """Return the decoded dataset from the cache, or ``decode()`` it and cache it atomically.

    ``key`` must change whenever the source or the decoding options change (layout, file
    identity, channel order ...); ``image_size`` is part of the key too.
    """
    digest = hashlib.sha256(f"v{_DECODE_VERSION}:{name}:{image_size}:{key}".encode()).hexdigest()[:20]
    path = cache_dir(name, "decoded") / f"{name}-{image_size}px-{digest}.npz"
    if path.exists():
        hit = _load_cached(path, display, image_size, max_memory_gb)
        if hit is not None:
            return hit
    try:
        dec = decode()
    except MemoryError:
        raise MetakitError(
            f"ran out of memory decoding {display} at {image_size}px; use a smaller image_size, or set "
            f"max_memory_gb to what this machine can spare so the need is checked before decoding."
        ) from None
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, because np.savez would append ".npz" to the temporary name.
        np.savez(
            f,
            images=dec.images,
            labels=dec.labels,
            names=np.array(dec.names, dtype=str),
            splits=np.array(dec.splits, dtype=str),
            groups=np.array(dec.groups or [], dtype=str),
            has_groups=np.array(dec.groups is not None),
        )
    return dec


def to_dataset(name: str, dec: Decoded) -> ImageSetDataset:
    """Wrap a :class:`Decoded` as an :class:`ImageSetDataset` (sharing its memory)."""
    return ImageSetDataset(
        name=name,
        inputs=torch.from_numpy(np.ascontiguousarray(dec.images)),
        labels=torch.from_numpy(np.asarray(dec.labels, dtype=np.int64)),
        class_names=list(dec.names),
        class_groups=list(dec.groups) if dec.groups is not None else None,
        class_splits=list(dec.splits),
    )


def order_classes(classes: dict[str, tuple[str, str | None]]) -> list[str]:
    """Class names in the order they are numbered: by published split, then by name.

    ``classes`` maps a class name to ``(split, group)``.
    """
    rank = {s: i for i, s in enumerate(SPLITS)}
    return sorted(classes, key=lambda c: (rank[classes[c][0]], c))


def assemble(
    display: str,
    images: np.ndarray,
    channels_last: bool,
    item_classes: Sequence[str],
    info: dict[str, tuple[str, str | None]],
    image_size: int,
    max_memory_gb: float | None,
    what: str,
) -> Decoded:
    """Build a :class:`Decoded` from an image array and each item's class name.

    ``info`` maps each class name to ``(published split, group or None)``; classes are numbered
    by :func:`order_classes`. The memory cap is checked before the output is allocated.
    """
    names = order_classes(info)
    index = {c: i for i, c in enumerate(names)}
    labels = np.fromiter((index[c] for c in item_classes), dtype=np.int64, count=len(item_classes))
    check_memory(display, len(labels), image_size, max_memory_gb)
    out = np.empty((len(labels), 3, image_size, image_size), dtype=np.uint8)
    fill_resized(out, images, channels_last, what)
    groups = [info[c][1] for c in names]
    splits = [info[c][0] for c in names]
    return Decoded(out, labels, names, splits, None if None in groups else groups)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# One benchmark: finding, decoding once, status


class Source(Protocol):
    """Where a benchmark's files were found: what each benchmark's ``probe`` returns."""

    layout: str
    origin: str

    def files(self) -> list[Path]:
        """The files whose identity keys the decoded cache."""
        ...

    def describe(self) -> str:
        """For status lines: the layout, its path and origin."""
        ...


@dataclass(frozen=True)
class ImageBenchmark:
    """One published image benchmark: what is its own, and the loading path all benchmarks share.

    Attributes:
        name: registry and cache name (``cache_dir()/name`` is where files are placed or downloaded).
        display: the name in messages.
        env_var: environment variable naming its folder.
        subdirs: usual folder names inside a root.
        probe: ``probe(path, origin)`` -> a :class:`Source`, ``None`` when nothing of the dataset is
            at ``path``, or a :class:`MetakitError` for a partial layout (see :func:`find`).
        wants: the files a user may place, for messages.
        get: where to get them, for the not-found error.
        n_images: the published number of images (memory need in the status line).
        native_size: the side length of the published images (the status line's memory need).
        shared_cache: another cache folder searched too (CIFAR-100's archive serves CIFAR-FS and FC100).
    """

    name: str
    display: str
    env_var: str
    subdirs: tuple[str, ...]
    probe: Callable[[Path, str], Any]
    wants: str
    get: str
    n_images: int
    native_size: int = 84
    shared_cache: str | None = None

    def caches(self) -> list[Path]:
        """metakit's cache folders for this benchmark, in search order."""
        return [dataset_dir(self.name)] + ([dataset_dir(self.shared_cache)] if self.shared_cache else [])

    def find(self, root: str | os.PathLike | None) -> tuple[Any, list[Location]]:
        """:func:`find` over ``root``, ``$env_var`` and the caches: ``(source or None, looked)``."""
        return find(self.display, root, self.env_var, self.caches(), self.subdirs, self.probe)

    def locate(
        self,
        root: str | os.PathLike | None,
        image_size: int,
        fetch: Callable[[], Any] | None = None,
        place: Path | None = None,
    ) -> Any:
        """Check ``image_size`` and return the source, or ``fetch()`` it, or fail naming what to place where.

        ``fetch`` downloads the official archive and returns its source (``None``: the benchmark
        has no download, or downloading is off); ``place`` is where the error says to put files
        (default ``cache_dir()/name``).
        """
        check_image_size(self.display, image_size)
        src, looked = self.find(root)
        if src is not None:
            return src
        if fetch is not None:
            return fetch()
        raise not_found(self.display, self.wants, self.env_var, place or dataset_dir(self.name), self.get, looked)

    def load(
        self,
        src: Source,
        image_size: int,
        max_memory_gb: float | None,
        decode: Callable[[], Decoded],
        key: str | None = None,
    ) -> ImageSetDataset:
        """The decoded dataset from the cache, or ``decode()`` it once and cache it.

        ``key`` identifies the source and every decoding option (default: the layout and the
        source files' identity).
        """
        key = key if key is not None else f"{src.layout}:{stat_identity(src.files())}"
        return to_dataset(self.name, cached_decode(self.name, self.display, key, image_size, max_memory_gb, decode))

    def status(self, missing: str) -> str:
        """One line for ``metakit datasets``: where the files are (or ``missing``), with the memory need."""
        size = self.native_size
        need = f"~{format_bytes(decoded_bytes(self.n_images, size))} in memory at {size}px"
        try:
            src, _ = self.find(None)
        except MetakitError as exc:
            return str(exc)
        return f"{src.describe() if src is not None else missing}; {need}"
