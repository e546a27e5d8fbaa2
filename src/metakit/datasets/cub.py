"""CUB-200-2011 (Wah et al. 2011): 11,788 photos of 200 bird species, with the usual few-shot split.

The few-shot split (Hilliard et al. 2018; made standard by Chen et al., ICLR 2019, "A Closer Look
at Few-shot Classification", ``filelists/CUB/write_CUB_filelist.py``) takes the 200 classes in
their official order (``001.Black_footed_Albatross`` ... ``200.Common_Yellowthroat``) and puts
class index ``i`` (0-based) in **train if i % 2 == 0** (100 classes), **val if i % 4 == 1** (50)
and **test if i % 4 == 3** (50). torchmeta's CUB assets and mmfewshot use the same rule.
(Meta-Dataset's 140/30/30 split is a different protocol and not what ``published`` means here.)

Photos are of varying size; they are resized to ``image_size`` squares with PIL (aspect ratio not
kept, as in the usual 84x84 benchmarks). About 250 MB in memory at 84px.

Layouts read:

* the official archive ``CUB_200_2011.tgz`` (read straight from the archive, no extraction);
* its extracted ``CUB_200_2011/`` folder: ``images/<class>/<file>.jpg``, ``classes.txt``
  (``<class id> <class>``), ``images.txt`` (``<image id> <class>/<file>.jpg``) and
  ``image_class_labels.txt`` (``<image id> <class id>``).

The archive has a stable official home, CaltechDATA (https://data.caltech.edu/records/65de6-vp158,
DOI 10.22002/D1.20098); when nothing is found it is downloaded from there into
``cache_dir("cub")`` (1.1 GB) and verified by sha256 (:data:`CUB_SHA256`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from metakit.datasets.download import fetch
from metakit.datasets.imagesets import (
    IMAGE_ERRORS,
    Decoded,
    ImageBenchmark,
    ImageSetDataset,
    archive_fix,
    check_memory,
    decode_file,
    decode_image,
    find_archive,
    partial_layout,
    progress,
    read_archive,
)
from metakit.errors import MetakitError

__all__ = ["CUB_SHA256", "CUB_URL", "ENV_VAR", "cub_split_of", "cub_status", "load_cub"]

NAME = "cub"
DISPLAY = "CUB-200-2011"
ENV_VAR = "METAKIT_CUB"
FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
#: sha256 of the official archive (1,150,585,339 bytes), as recorded by TensorFlow Datasets
#: (url_checksums/caltech_birds2011.txt) and torchvision's prototype CUB200 dataset; its md5,
#: 97eceeb196236b17998738112f37df78, is the value torchmeta checks.
CUB_SHA256 = "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081"
N_IMAGES = 11_788
METADATA = ("classes.txt", "images.txt", "image_class_labels.txt")
SUBDIRS = (FOLDER, "cub", "CUB", "cubirds200")


def cub_split_of(class_id: int) -> str:
    """The few-shot split of official class ``class_id`` (1..200): Chen et al.'s index rule."""
    i = class_id - 1
    return "train" if i % 2 == 0 else "val" if i % 4 == 1 else "test"


@dataclass(frozen=True)
class _Source:
    layout: str  # "tgz" or "dir"
    path: Path  # the archive, or the CUB_200_2011 folder
    origin: str
    check_sha256: bool = False

    def files(self) -> list[Path]:
        if self.layout == "tgz":
            return [self.path]
        return [self.path / m for m in METADATA] + sorted(p for p in (self.path / "images").rglob("*") if p.is_file())

    def describe(self) -> str:
        return f"{'archive' if self.layout == 'tgz' else 'folder'} {self.path} ({self.origin})"


def _probe(path: Path, origin: str) -> _Source | None:
    archive = find_archive(DISPLAY, path, origin, ARCHIVE)
    if archive is not None:
        return _Source("tgz", archive, origin, check_sha256=origin == "cache")
    if not path.is_dir():
        return None
    if (path / "images").is_dir() or any((path / m).is_file() for m in METADATA):
        have = [m for m in (*METADATA, "images/") if (path / m.rstrip("/")).exists()]
        missing = [m for m in (*METADATA, "images/") if m not in have]
        if missing:
            raise partial_layout(DISPLAY, origin, path, have, missing)
        return _Source("dir", path, origin)
    return None


CUB = ImageBenchmark(
    NAME, DISPLAY, ENV_VAR, SUBDIRS, _probe,
    wants=f"{ARCHIVE} (or its extracted {FOLDER}/ folder)",
    get="it from https://data.caltech.edu/records/65de6-vp158 (download is off)",
    n_images=N_IMAGES,
)


def _cache_archive() -> Path:
    return CUB.caches()[0] / ARCHIVE


def _download() -> _Source:
    dest = _cache_archive()
    # CUB_SHA256 is read here, at call time, so a test can stand in a small archive.
    fetch(CUB_URL, dest, CUB_SHA256, what=f"CUB-200-2011 ({ARCHIVE}, 1.1 GB)")
    return _Source("tgz", dest, "download")


# --------------------------------------------------------------------------------------------
# Decoding

_LINE = re.compile(r"^\s*(\d+)\s+(\S.*?)\s*$")


def _table(text: str, name: str, where: str) -> dict[int, str]:
    """``<id> <value>`` lines as a dict."""
    out: dict[int, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise MetakitError(
                f"{DISPLAY} {where}: {name} line {n} is not '<id> <value>'; replace the file with the official one."
            )
        out[int(m.group(1))] = m.group(2)
    return out


@dataclass
class _Metadata:
    classes: dict[int, str]  # class id -> folder name
    images: dict[int, str]  # image id -> "<class>/<file>.jpg"
    labels: dict[int, int]  # image id -> class id


def _metadata(texts: dict[str, str], where: str) -> _Metadata:
    classes = _table(texts["classes.txt"], "classes.txt", where)
    images = _table(texts["images.txt"], "images.txt", where)
    raw_labels = _table(texts["image_class_labels.txt"], "image_class_labels.txt", where)
    try:
        labels = {k: int(v) for k, v in raw_labels.items()}
    except ValueError:
        raise MetakitError(
            f"{DISPLAY} {where}: image_class_labels.txt has a non-numeric class id; replace it."
        ) from None
    for image_id, rel in images.items():
        class_id = labels.get(image_id)
        if class_id not in classes or rel.split("/", 1)[0] != classes[class_id]:
            raise MetakitError(
                f"{DISPLAY} {where}: image {image_id} ({rel}) does not match its class in image_class_labels.txt / "
                f"classes.txt; the metadata files are not from one release."
            )
    return _Metadata(classes, images, labels)


def _assemble(meta: _Metadata, pixels: dict[str, np.ndarray], image_size: int, where: str) -> Decoded:
    class_ids = sorted({meta.labels[i] for i in meta.images})
    index = {cid: k for k, cid in enumerate(class_ids)}
    image_ids = sorted(meta.images)
    missing = [meta.images[i] for i in image_ids if meta.images[i] not in pixels]
    if missing:
        raise MetakitError(
            f"{DISPLAY} {where}: images.txt lists {len(missing)} image(s) that are not there "
            f"(first: images/{missing[0]}); use the complete official archive."
        )
    out = np.empty((len(image_ids), 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(image_ids), dtype=np.int64)
    for k, image_id in enumerate(image_ids):
        out[k] = pixels.pop(meta.images[image_id])
        labels[k] = index[meta.labels[image_id]]
    return Decoded(out, labels, [meta.classes[c] for c in class_ids], [cub_split_of(c) for c in class_ids])


def _decode_tgz(src: _Source, image_size: int) -> Decoded:
    fix = archive_fix(ARCHIVE, src.origin)
    texts: dict[str, str] = {}
    pixels: dict[str, np.ndarray] = {}
    prefix = f"{FOLDER}/images/"
    with progress(f"decoding {DISPLAY} ({N_IMAGES} images)", N_IMAGES) as update:

        def visit(member: str, f: IO[bytes]) -> None:
            # Images are decoded as they stream past (the metadata files may come before or after them).
            name = member.removeprefix("./")
            if name.startswith(prefix):
                try:
                    pixels[name[len(prefix):]] = decode_image(f.read(), image_size)
                except IMAGE_ERRORS as exc:
                    raise MetakitError(f"{DISPLAY} {src.path}: cannot decode {member} ({exc}); {fix}.") from None
                if len(pixels) % 256 == 0:
                    update(len(pixels))
            elif name in (f"{FOLDER}/{m}" for m in METADATA):
                texts[name.rsplit("/", 1)[1]] = f.read().decode("utf-8")

        sha256 = CUB_SHA256 if src.check_sha256 else None
        read_archive(DISPLAY, src.path, fix, visit, sha256, what=f"CUB-200-2011 ({ARCHIVE})")
    missing = [m for m in METADATA if m not in texts]
    if missing:
        raise MetakitError(f"{DISPLAY} {src.path} holds no {FOLDER}/{', '.join(missing)}; {fix}.")
    return _assemble(_metadata(texts, str(src.path)), pixels, image_size, str(src.path))


def _decode_dir(src: _Source, image_size: int, max_memory_gb: float | None) -> Decoded:
    texts = {}
    for m in METADATA:
        try:
            texts[m] = (src.path / m).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MetakitError(
                f"{DISPLAY}: cannot read {src.path / m} ({exc}); replace it with the official file."
            ) from None
    meta = _metadata(texts, str(src.path))
    check_memory(DISPLAY, len(meta.images), image_size, max_memory_gb)
    pixels: dict[str, np.ndarray] = {}
    with progress(f"decoding {DISPLAY} ({len(meta.images)} images)", len(meta.images)) as update:
        for k, rel in enumerate(meta.images.values()):
            path = src.path / "images" / rel
            if not path.is_file():
                continue  # reported by _assemble with the count of missing files
            pixels[rel] = decode_file(DISPLAY, path, image_size)
            if k % 256 == 0:
                update(k)
    return _assemble(meta, pixels, image_size, str(src.path))


def load_cub(
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    download: bool = True,
    max_memory_gb: float | None = None,
) -> ImageSetDataset:
    """Load CUB-200-2011's 200 classes with the Chen et al. 100/50/50 few-shot split recorded.

    Args:
        root, image_size, download, max_memory_gb: as for every benchmark (:mod:`metakit.datasets.imagesets`).
            ``root`` may be ``CUB_200_2011.tgz``, a folder holding it, the extracted
            ``CUB_200_2011/`` folder or its parent; ``None`` looks at ``$METAKIT_CUB``, then at
            ``cache_dir("cub")``, where a missing archive (1.1 GB) is downloaded from
            CaltechDATA. Photos are resized (not cropped) to squares; about 250 MB of memory are
            needed at 84px.

    Returns:
        An :class:`ImageSetDataset`: uint8 RGB ``[n, 3, image_size, image_size]``; classes are the
        official folder names in official order; ``class_splits`` holds the few-shot split.
    """
    src = CUB.locate(root, image_size, _download if download else None)
    if src.layout == "tgz":
        # The archive's image count is only known once it is read: check the published one.
        check_memory(DISPLAY, N_IMAGES, image_size, max_memory_gb)
        return CUB.load(src, image_size, max_memory_gb, lambda: _decode_tgz(src, image_size))
    return CUB.load(src, image_size, max_memory_gb, lambda: _decode_dir(src, image_size, max_memory_gb))


def cub_status() -> str:
    """One line: where CUB-200-2011 is, or where it would be downloaded to."""
    return CUB.status(f"not local (first use downloads {ARCHIVE}, 1.1 GB, to {_cache_archive()})")
