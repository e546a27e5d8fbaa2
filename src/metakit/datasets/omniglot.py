"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015): 1,623 handwritten characters.

The data are the official zips of github.com/brendenlake/omniglot (``python/``):
``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters), each holding
``images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png`` -- 105x105 binary drawings, white
background, 20 drawers per character. ``<id>`` numbers the characters 1..1623 across both sets
(background first); that numbering is the "official order" used by :func:`omniglot_splits`.

Each character is a class, each alphabet its group. Images are converted to 1-channel uint8
with ink high (255) and box-filtered down to ``image_size``; the decoded tensors are cached under
``cache_dir("omniglot", "decoded")`` so only the first load decodes PNGs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from metakit.datasets.base import ClassDataset, class_split
from metakit.datasets.download import fetch
from metakit.errors import MetakitError, unknown_name
from metakit.utils import atomic_path, cache_dir, sha256_file

__all__ = ["OmniglotDataset", "load_omniglot", "omniglot_splits", "omniglot_status", "ENV_VAR", "SETS"]

ENV_VAR = "METAKIT_OMNIGLOT"
BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"


@dataclass(frozen=True)
class _OfficialFile:
    set_name: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"images_{self.set_name}.zip"

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.filename}"


# sha256 and sizes as recorded by TensorFlow Datasets (tensorflow/datasets,
# tensorflow_datasets/url_checksums/omniglot.txt). The two small zips' values also match the
# independently staged copies in ../shared/data/omniglot, which corroborates the source.
SETS: dict[str, _OfficialFile] = {
    f.set_name: f
    for f in (
        _OfficialFile("background", 9464212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"),
        _OfficialFile("evaluation", 6462886, "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"),
        _OfficialFile("background_small1", 1319022, "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
        _OfficialFile("background_small2", 1580917, "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    )
}

# Published protocol sizes: Lake et al.'s sets, and Vinyals et al.'s 1,200 training characters.
N_BACKGROUND, N_EVALUATION, VINYALS_TRAIN = 964, 659, 1200

# Bump when decoding changes so stale decoded caches are never reused.
_DECODE_VERSION = 1

_PNG_RE = re.compile(r"(?:^|/)images_([^/]+)/([^/]+)/([^/]+)/(\d+)_(\d+)\.png$")


@dataclass
class OmniglotDataset(ClassDataset):
    """A :class:`ClassDataset` that also remembers each character's set and official id.

    Attributes:
        class_sets: per class, the Omniglot set it came from (``"background"``, ``"evaluation"``,
            ...); the Lake split needs it.
        class_ids: per class, the official character id (1..1623, from the PNG file names); the
            Vinyals split's "first 1,200 characters" are taken in this order.
    """

    class_sets: list[str] | None = None
    class_ids: list[int] | None = None


# --------------------------------------------------------------------------------------------
# Locating the files


@dataclass(frozen=True)
class _Source:
    """Where one set's PNGs are: a zip file or an extracted ``images_<set>/`` directory."""

    path: Path
    kind: str  # "zip" or "dir"
    origin: str  # "root", "$METAKIT_OMNIGLOT" or "cache": named in errors and the status line
    sha256: str | None = None  # known when fetch() just verified it: saves hashing it again

    def describe(self) -> str:
        return f"{self.path} ({self.origin})"


def _normalise_sets(sets: Sequence[str] | str) -> list[str]:
    names = [sets] if isinstance(sets, str) else list(sets)
    if names == ["all"]:
        names = ["background", "evaluation"]
    if not names:
        raise MetakitError("omniglot: sets is empty; use sets: [background] or [background, evaluation].")
    for name in names:
        if name not in SETS:
            raise unknown_name("Omniglot set", name, SETS)
    if len(set(names)) != len(names):
        raise MetakitError(f"omniglot: sets {names} lists a set twice.")
    return names


def _zip_set_names(path: Path, set_name: str = "background") -> list[str]:
    """The ``images_<name>`` folders holding PNGs inside a zip (validating the zip on the way)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise MetakitError(
            f"{path} is not a readable zip file ({exc}); replace it with the official "
            f"{SETS[set_name].url}."
        ) from None
    found = {m.group(1) for n in names if (m := _PNG_RE.search(n)) and not n.startswith("__MACOSX")}
    return sorted(found)


def _checked_zip(path: Path, set_name: str, origin: str) -> list[str]:
    held = _zip_set_names(path, set_name)
    if not held:
        raise MetakitError(
            f"{path} ({origin}) holds no images_<set>/<Alphabet>/characterNN/*.png files; "
            f"use the official {SETS[set_name].url}."
        )
    return held


def _matches(requested: str, held: str) -> bool:
    # The official "small" zips are subsets of the background set, so they can stand in for it.
    return held == requested or held.startswith(requested + "_small")


def _find_in(location: Path, set_name: str, origin: str) -> _Source | None:
    """Find ``set_name`` in a user location: a zip file or a directory (see load_omniglot)."""
    if location.is_file():
        held = _checked_zip(location, set_name, origin)
        return _Source(location, "zip", origin) if any(_matches(set_name, h) for h in held) else None
    if not location.is_dir():
        raise MetakitError(
            f"Omniglot {origin} {location} does not exist; point it at images_<set>.zip, a directory "
            f"holding the official zips, or an extracted images_<set>/ folder."
        )
    if location.name.startswith("images_") and _matches(set_name, location.name[len("images_"):]):
        return _Source(location, "dir", origin) if _has_pngs(location) else None
    for base in (location, location / "omniglot-py"):  # omniglot-py: torchvision's folder name
        zip_path = base / SETS[set_name].filename
        if zip_path.is_file():
            held = _checked_zip(zip_path, set_name, origin)
            if not any(_matches(set_name, h) for h in held):
                raise MetakitError(
                    f"{zip_path} ({origin}) holds images_{held[0]}/, not images_{set_name}/; "
                    f"replace it with the official {SETS[set_name].url}."
                )
            return _Source(zip_path, "zip", origin)
        folder = base / f"images_{set_name}"
        if _has_pngs(folder):
            return _Source(folder, "dir", origin)
    return None


def _has_pngs(folder: Path) -> bool:
    return folder.is_dir() and next(folder.glob("*/*/*.png"), None) is not None


def _user_locations(root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    out = []
    if root is not None:
        out.append((Path(root).expanduser(), "root"))
    env = os.environ.get(ENV_VAR)
    if env:
        out.append((Path(env).expanduser(), f"${ENV_VAR}"))
    return out


def _cache_zip(set_name: str) -> Path:
    # No cache_dir("omniglot"): the status line must not create folders; fetch() makes them.
    return cache_dir() / "omniglot" / SETS[set_name].filename


def _locate(set_name: str, root: str | os.PathLike | None, download: bool, only_set: bool) -> _Source:
    """Resolve one set: ``root``, then ``$METAKIT_OMNIGLOT``, then the cache (downloading there)."""
    for location, origin in _user_locations(root):
        src = _find_in(location, set_name, origin)
        if src is not None:
            return src
        if location.is_file() and only_set:
            # A single zip given for a single set: a mismatch is a mistake, not a reason to download.
            held = ", ".join(_zip_set_names(location))
            raise MetakitError(
                f"{location} ({origin}) holds the Omniglot set(s) {held}, not {set_name!r}; "
                f"set sets: {held.split(', ')[0]} or point {origin} at images_{set_name}.zip."
            )
    official = SETS[set_name]
    dest = _cache_zip(set_name)
    if not dest.exists() and not download:
        looked = "; ".join(f"{origin} {loc}" for loc, origin in _user_locations(root))
        looked = f" (looked in {looked} and the cache)" if looked else ""
        raise MetakitError(
            f"Omniglot {set_name!r} set is not available locally{looked} and download is off; "
            f"download {official.url} and place it at {dest} (or set ${ENV_VAR} to its folder)."
        )
    fetch(official.url, dest, official.sha256, what=f"Omniglot {set_name} set ({official.filename})")
    return _Source(dest, "zip", "cache", sha256=official.sha256)


# --------------------------------------------------------------------------------------------
# Decoding and the decoded cache


@dataclass
class _Decoded:
    images: np.ndarray  # uint8 [items, size, size]
    labels: np.ndarray  # int64 [items], 0..classes-1 within this set
    names: list[str]
    groups: list[str]
    ids: list[int]


def _entries(source: _Source) -> list[tuple[str, str, int, str]]:
    """``(alphabet, character, char_id, member)`` for every PNG, in deterministic sorted order."""
    out = []
    if source.kind == "zip":
        with zipfile.ZipFile(source.path) as zf:
            for member in zf.namelist():
                m = _PNG_RE.search(member)
                if m and not member.startswith("__MACOSX"):
                    out.append((m.group(2), m.group(3), int(m.group(4)), member))
    else:
        for png in source.path.glob("*/*/*.png"):
            m = _PNG_RE.search(f"{source.path.name}/{png.relative_to(source.path).as_posix()}")
            if m:
                out.append((m.group(2), m.group(3), int(m.group(4)), str(png)))
    out.sort(key=lambda e: (e[0], e[1], os.path.basename(e[3])))
    return out


def _identity(source: _Source) -> str:
    """A key that changes whenever the source's content may have changed."""
    h = hashlib.sha256()
    if source.kind == "zip":
        # Content hash, not mtime: copying or re-downloading the same zip keeps the cache valid.
        h.update((source.sha256 or sha256_file(source.path)).encode())
    else:
        for png in sorted(source.path.glob("*/*/*.png")):
            st = png.stat()
            h.update(f"{png.relative_to(source.path).as_posix()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()



def _convert(data: bytes | str, image_size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        # Inverting first makes ink high, so the box filter averages ink coverage (anti-aliasing).
        im = ImageOps.invert(im.convert("L"))
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.uint8)


def _decode(source: _Source, image_size: int, set_name: str) -> _Decoded:
    """Decode every PNG of ``source`` (seconds for a full set) with a transient progress bar."""
    from rich.console import Console
    from rich.progress import Progress

    entries = _entries(source)
    if not entries:
        raise MetakitError(
            f"{source.describe()} holds no images_{set_name}/<Alphabet>/characterNN/*.png files; "
            f"use the official {SETS[set_name].url}."
        )
    images = np.empty((len(entries), image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    names: list[str] = []
    groups: list[str] = []
    ids: list[int] = []
    zf = zipfile.ZipFile(source.path) if source.kind == "zip" else None
    try:
        console = Console(stderr=True)
        # Off when not a terminal: rich would leave a stray blank line in logs and pipes.
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"decoding Omniglot {set_name} ({len(entries)} images)", total=len(entries))
            for i, (alphabet, character, char_id, member) in enumerate(entries):
                name = f"{alphabet}/{character}"
                if not names or names[-1] != name:
                    names.append(name)
                    groups.append(alphabet)
                    ids.append(char_id)
                try:
                    images[i] = _convert(zf.read(member) if zf else member, image_size)
                except (OSError, ValueError, zipfile.BadZipFile) as exc:
                    raise MetakitError(
                        f"{source.describe()}: cannot decode {member} ({exc}); replace the file with "
                        f"the official {SETS[set_name].url}."
                    ) from None
                labels[i] = len(names) - 1
                if i % 256 == 0:
                    progress.update(task, completed=i)
    finally:
        if zf is not None:
            zf.close()
    return _Decoded(images, labels, names, groups, ids)


def _decoded_path(source: _Source, image_size: int, set_name: str) -> Path:
    key = hashlib.sha256(
        f"v{_DECODE_VERSION}:{set_name}:{image_size}:{_identity(source)}".encode()
    ).hexdigest()[:20]
    return cache_dir("omniglot", "decoded") / f"{set_name}-{image_size}px-{key}.npz"


# Everything a damaged decoded-cache file can raise while being read (truncated, emptied, random
# bytes, another program's npz, a folder in its place); any of them means "decode again".
_CACHE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_decoded(path: Path, image_size: int) -> _Decoded:
    with np.load(path, allow_pickle=False) as z:
        dec = _Decoded(z["images"], z["labels"], z["names"].tolist(), z["groups"].tolist(), z["ids"].tolist())
    n = len(dec.names)
    if (
        dec.images.dtype != np.uint8
        or dec.images.shape[1:] != (image_size, image_size)
        or dec.labels.shape != (len(dec.images),)
        or not n
        or len(dec.groups) != n
        or len(dec.ids) != n
        or not 0 <= int(dec.labels.min()) <= int(dec.labels.max()) < n
    ):
        raise ValueError(f"inconsistent arrays in {path}")
    return dec


def _load_set(source: _Source, image_size: int, set_name: str) -> _Decoded:
    path = _decoded_path(source, image_size, set_name)
    if path.exists():
        try:
            return _read_decoded(path, image_size)
        except _CACHE_ERRORS:
            pass  # a damaged cache entry is rebuilt below, never an error for the user
    dec = _decode(source, image_size, set_name)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # A file object, because np.savez would append ".npz" to the temporary name.
            np.savez(
                f, images=dec.images, labels=dec.labels, names=np.array(dec.names),
                groups=np.array(dec.groups), ids=np.array(dec.ids, dtype=np.int64),
            )
    except OSError as exc:
        # The decoded data are in memory; a cache that cannot be written only costs the next run time.
        warnings.warn(f"omniglot: could not cache the decoded set at {path}: {exc}", stacklevel=2)
    return dec


# --------------------------------------------------------------------------------------------
# Public API


def load_omniglot(
    root: str | os.PathLike | None = None,
    sets: Sequence[str] | str = ("background",),
    image_size: int = 28,
    download: bool = True,
) -> OmniglotDataset:
    """Load Omniglot characters as a :class:`ClassDataset` (classes = characters, groups = alphabets).

    Args:
        root: where your copy of Omniglot is. Any of: one zip file (``images_background.zip``,
            ``images_evaluation.zip`` or an official ``images_background_small{1,2}.zip``, which
            stand in for the background set); a directory holding the official zips; or a
            directory holding extracted ``images_<set>/`` folders (or such a folder itself;
            torchvision's ``omniglot-py/`` subfolder is found too). Files you supply are validated
            but not checksum-verified, so repacked copies work. ``None`` looks at
            ``$METAKIT_OMNIGLOT`` (same forms), then at the cache
            ``cache_dir("omniglot")``, where missing zips are downloaded from
            github.com/brendenlake/omniglot and verified by sha256. A set that ``root`` or the
            environment variable lacks also falls back to the cache.
        sets: ``"background"`` (30 alphabets, 964 characters), ``"evaluation"`` (20 alphabets, 659
            characters), both (a list, or ``"all"``), or ``"background_small1"`` /
            ``"background_small2"`` (the official 5-alphabet subsets).
        image_size: output side length; drawings are box-filtered from 105x105.
        download: fetch missing official zips; with ``False`` a missing set is an error that says
            where to get the file and where to put it (so is ``$METAKIT_OFFLINE``).

    Returns:
        An :class:`OmniglotDataset`: uint8 images ``[items, 1, image_size, image_size]``, ink 255
        on a 0 background; class names ``"Alphabet/characterNN"`` in sorted order, sets in the
        order given.
    """
    names = _normalise_sets(sets)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 1 <= image_size <= 105:
        raise MetakitError(f"omniglot: image_size must be an integer in 1..105, got {image_size!r}.")
    parts: list[tuple[str, _Decoded]] = []
    for set_name in names:
        source = _locate(set_name, root, download, only_set=len(names) == 1)
        parts.append((set_name, _load_set(source, image_size, set_name)))
    images, labels, cnames, groups, csets, ids = [], [], [], [], [], []
    for set_name, dec in parts:
        labels.append(torch.from_numpy(dec.labels) + len(cnames))
        images.append(torch.from_numpy(dec.images))
        cnames += dec.names
        groups += dec.groups
        csets += [set_name] * len(dec.names)
        ids += dec.ids
    return OmniglotDataset(
        name="omniglot",
        inputs=torch.cat(images).unsqueeze(1),
        labels=torch.cat(labels),
        class_names=cnames,
        class_groups=groups,
        class_sets=csets,
        class_ids=ids,
    )


def _pool_val_count(n: int, fractions: Sequence[float]) -> int:
    # The protocol fixes the test set, so only the train:val ratio of ``fractions`` applies.
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] + fractions[1] <= 0:
        raise MetakitError(
            f"split fractions must be three non-negative numbers (train, val, test) with train + val > 0, "
            f"got {list(fractions)}."
        )
    return int(round(n * fractions[1] / (fractions[0] + fractions[1])))


def _seeded_pick(items: Sequence, k: int, seed: int) -> set:
    perm = np.random.default_rng(seed).permutation(len(items))
    return {items[i] for i in perm[:k]}


def omniglot_splits(
    dataset: ClassDataset, split: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, ClassDataset]:
    """Omniglot's named splits (``group`` and ``class`` are generic and handled by the caller).

    * ``"lake"`` (Lake et al. 2015): all evaluation-set alphabets are the test set; the background
      alphabets are train, except ``round(n * f_val / (f_train + f_val))`` of them picked with
      ``seed`` for validation (4 of 30 with the default fractions). Needs both sets loaded.
    * ``"vinyals"`` (Vinyals et al. 2016): with both full sets loaded, the first 1,200 characters
      in official id order (all 964 background characters, then evaluation ids 965..1200) are the
      meta-training pool and the remaining 423 are the test set; validation characters are drawn
      from the pool with ``seed`` in the train:val ratio of ``fractions`` (150 with the defaults).
      With fewer characters loaded (only the background set, say) it is a "Vinyals-style" seeded
      character-level split by ``fractions``. Rotations (the protocol's extra classes) are added by
      the caller (``rotations: true``) after splitting, so a character and its rotations share a
      split.
    """
    sets = getattr(dataset, "class_sets", None)
    ids = getattr(dataset, "class_ids", None)
    if split == "lake":
        present = set(sets or [])
        if not {"background", "evaluation"} <= present:
            have = ", ".join(sorted(present)) or "unknown sets"
            raise MetakitError(
                f"split: lake needs both Omniglot sets (background for training, evaluation for "
                f"testing) but {have} is loaded; set sets: [background, evaluation] (downloads "
                f"{SETS['evaluation'].url} if needed) or use split: group."
            )
        background = sorted({g for g, s in zip(dataset.class_groups or [], sets) if s == "background"})
        val = _seeded_pick(background, _pool_val_count(len(background), fractions), seed)
        parts = {"train": [], "val": [], "test": []}
        for c, (group, s) in enumerate(zip(dataset.class_groups or [], sets)):
            parts["test" if s == "evaluation" else "val" if group in val else "train"].append(c)
        return {k: dataset.subset(v, f"{dataset.name}/{k}") for k, v in parts.items()}
    if split == "vinyals":
        full = (
            sets is not None and ids is not None
            and sets.count("background") == N_BACKGROUND and sets.count("evaluation") == N_EVALUATION
        )
        if not full:
            return class_split(dataset, fractions, seed)
        order = sorted(range(dataset.num_classes), key=lambda c: ids[c])
        pool, test = order[:VINYALS_TRAIN], order[VINYALS_TRAIN:]
        val = _seeded_pick(pool, _pool_val_count(len(pool), fractions), seed)
        parts = {"train": [c for c in pool if c not in val], "val": [c for c in pool if c in val], "test": test}
        return {k: dataset.subset(sorted(v), f"{dataset.name}/{k}") for k, v in parts.items()}
    raise unknown_name("Omniglot split", split, ["group", "class", "vinyals", "lake"])


def omniglot_status() -> str:
    """One line: where each Omniglot set is locally, or where it would be downloaded to."""
    parts = []
    for set_name in ("background", "evaluation"):
        where = None
        for location, origin in _user_locations(None):
            try:
                src = _find_in(location, set_name, origin)
            except MetakitError:
                src = None
            if src is not None:
                where = src.describe()
                break
        if where is None and _cache_zip(set_name).exists():
            where = f"{_cache_zip(set_name)} (cache)"
        parts.append(
            f"{set_name} at {where}" if where
            else f"{set_name} not local (downloads to {_cache_zip(set_name)})"
        )
    return "; ".join(parts)
