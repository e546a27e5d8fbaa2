"""CIFAR-FS (Bertinetto et al., ICLR 2019) and the CIFAR-100 machinery it shares with FC100.

CIFAR-FS is CIFAR-100 (Krizhevsky 2009: 100 classes x 600 images, 32x32 RGB, train and test
sets together) split by class into 64 train / 16 val / 20 test classes (:data:`BERTINETTO_SPLIT`,
the class lists of Bertinetto et al.'s ``splits/bertinetto/{train,val,test}.txt``). Classes are
grouped by CIFAR-100 superclass. About 184 MB in memory at 32px.

Layouts read (in this order of preference within a folder):

* **MetaOptNet pickles** ``CIFAR_FS_train.pickle``, ``CIFAR_FS_val.pickle``,
  ``CIFAR_FS_test.pickle`` (Lee et al. 2019): dicts with ``data`` uint8 ``[n, 32, 32, 3]`` and
  ``labels`` (CIFAR-100 fine label ids);
* **r2d2 folders** (Bertinetto et al.'s release, also learn2learn's zip): ``cifar100/data/<class>/
  *.png`` with ``cifar100/splits/bertinetto/{train,val,test}.txt`` (one class name per line);
* **the official CIFAR-100** ``cifar-100-python.tar.gz`` (or its extracted ``cifar-100-python/``
  with ``train``, ``test``, ``meta``) with the embedded Bertinetto class lists. This one has a
  stable official source: when nothing is found it is downloaded from
  https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into ``cache_dir("cifar100")`` (shared
  with FC100), verified by sha256 (:data:`CIFAR100_SHA256`) and read straight from the archive,
  so there is never a half-extracted folder.

Files of every layout are checked against the published class lists, so a mislabelled file fails
with one line instead of silently changing the split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from metakit.datasets.download import fetch
from metakit.datasets.imagesets import (
    SPLITS,
    Decoded,
    ImageBenchmark,
    ImageSetDataset,
    archive_fix,
    as_text,
    assemble,
    check_memory,
    dataset_dir,
    decode_files,
    find_archive,
    load_pickle,
    order_classes,
    partial_layout,
    read_archive,
    stat_identity,
    str_keys,
)
from metakit.errors import MetakitError

__all__ = [
    "BERTINETTO_SPLIT",
    "CIFAR100_FINE",
    "CIFAR100_SHA256",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_URL",
    "ENV_VAR",
    "cifarfs_status",
    "load_cifarfs",
]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_TARBALL = "cifar-100-python.tar.gz"
#: sha256 of the official archive (169,001,437 bytes), as recorded by TensorFlow Datasets
#: (url_checksums/cifar100.csv) and Keras (keras/datasets/cifar100.py); the md5 on the official
#: page, eb9058c3a382ffc7106e4002c42a8d85, is the first-party value it was cross-checked with.
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
CIFAR100_SIZE = 169_001_437
CIFAR100_MEMBERS = ("meta", "train", "test")
CIFAR100_IMAGES = 60_000

#: CIFAR-100's 20 superclasses (coarse labels, in label order) and their 5 classes each, with the
#: names of the official python version's ``meta`` file.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
#: The 100 fine label names in label order (CIFAR-100 numbers them alphabetically).
CIFAR100_FINE: tuple[str, ...] = tuple(sorted(c for cs in CIFAR100_SUPERCLASSES.values() for c in cs))
FINE_TO_COARSE: dict[str, str] = {c: s for s, cs in CIFAR100_SUPERCLASSES.items() for c in cs}

#: Bertinetto et al.'s CIFAR-FS split (the class lists of their splits/bertinetto/*.txt; identical
#: in torchmeta's cifar-fs assets and in the MetaOptNet-derived class lists of later work).
BERTINETTO_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin",
        "elephant", "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion",
        "lizard", "lobster", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree",
        "pear", "pine_tree", "plate", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal",
        "shrew", "skunk", "skyscraper", "snake", "spider", "squirrel", "streetcar", "sunflower", "tank",
        "tiger", "train", "trout", "tulip", "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
        "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
        "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ),
}
_BERTINETTO_OF = {c: s for s, cs in BERTINETTO_SPLIT.items() for c in cs}

NAME = "cifarfs"
DISPLAY = "CIFAR-FS"
ENV_VAR = "METAKIT_CIFARFS"


# --------------------------------------------------------------------------------------------
# A CIFAR-100-derived dataset: what differs between CIFAR-FS and FC100


@dataclass(frozen=True)
class CifarVariant:
    """What distinguishes one CIFAR-100-derived dataset from another.

    Attributes:
        name: registry and cache name.
        display: name in messages.
        env_var: environment variable naming its folder.
        split_of: published split of a fine class name.
        split_rule: how the split is defined (named in errors).
        metaoptnet_prefix: MetaOptNet pickle prefix (``CIFAR_FS`` -> ``CIFAR_FS_train.pickle``).
        r2d2: whether Bertinetto et al.'s folder layout is read.
        subdirs: usual folder names inside a root.
    """

    name: str
    display: str
    env_var: str
    split_of: Callable[[str], str]
    split_rule: str
    metaoptnet_prefix: str
    r2d2: bool
    subdirs: tuple[str, ...]

    def pickle_names(self) -> list[str]:
        """The MetaOptNet pickle file names, train/val/test."""
        return [f"{self.metaoptnet_prefix}_{s}.pickle" for s in SPLITS]

    def wants(self) -> str:
        """The files a user may place, for messages."""
        alt = ", or r2d2's cifar100/data/ with cifar100/splits/bertinetto/" if self.r2d2 else ""
        return f"{CIFAR100_TARBALL} (or MetaOptNet's {', '.join(self.pickle_names())}{alt})"

    def benchmark(self) -> ImageBenchmark:
        """The shared loading path for this variant: its own folder, then CIFAR-100's shared cache."""
        return ImageBenchmark(
            self.name, self.display, self.env_var, self.subdirs, _probe(self), self.wants(),
            get=f"the archive from {CIFAR100_URL} (download is off)", n_images=CIFAR100_IMAGES, native_size=32,
            shared_cache="cifar100",
        )


CIFARFS = CifarVariant(
    name=NAME,
    display=DISPLAY,
    env_var=ENV_VAR,
    split_of=lambda c: _BERTINETTO_OF[c],
    split_rule="the Bertinetto et al. split",
    metaoptnet_prefix="CIFAR_FS",
    r2d2=True,
    subdirs=("cifar100", "cifarfs", "cifar-fs", "CIFAR-FS", "CIFAR_FS", "cifar-100-python"),
)


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR-derived dataset's files are.

    Attributes:
        layout: ``"tar"`` (official archive), ``"dir"`` (extracted ``cifar-100-python/``),
            ``"metaoptnet"`` (split pickles) or ``"r2d2"`` (class folders + split files).
        path: the archive, or the folder holding the layout's files.
        origin: ``"root"``, ``"$METAKIT_..."``, ``"cache"`` or ``"download"``.
        check_sha256: verify the archive against :data:`CIFAR100_SHA256` before decoding (files
            in metakit's cache; files a user supplies are only validated, so repacks work).
    """

    layout: str
    path: Path
    origin: str
    check_sha256: bool = False

    def files(self, variant: CifarVariant) -> list[Path]:
        """The files whose identity keys the decoded cache."""
        if self.layout == "tar":
            return [self.path]
        if self.layout == "dir":
            return [self.path / m for m in CIFAR100_MEMBERS]
        if self.layout == "metaoptnet":
            return [self.path / n for n in variant.pickle_names()]
        splits = self.path / "splits" / "bertinetto"
        return [splits / f"{s}.txt" for s in SPLITS] + sorted(p for p in (self.path / "data").rglob("*") if p.is_file())

    def describe(self) -> str:
        """For status lines."""
        what = {"tar": "CIFAR-100 archive", "dir": "CIFAR-100 python files", "metaoptnet": "MetaOptNet pickles",
                "r2d2": "r2d2 class folders"}[self.layout]
        return f"{what} at {self.path} ({self.origin})"


def _probe_cifar100(path: Path, origin: str, display: str) -> CifarSource | None:
    archive = find_archive(display, path, origin, CIFAR100_TARBALL)
    if archive is not None:
        return CifarSource("tar", archive, origin, check_sha256=origin == "cache")
    if not path.is_dir():
        return None
    for folder in (path / "cifar-100-python", path):
        if folder.name != "cifar-100-python" or not folder.is_dir():
            continue
        present = [m for m in CIFAR100_MEMBERS if (folder / m).is_file()]
        if len(present) == len(CIFAR100_MEMBERS):
            return CifarSource("dir", folder, origin)
        missing = [m for m in CIFAR100_MEMBERS if m not in present]
        raise partial_layout(display, origin, folder, present or ["nothing"], missing)
    return None


def _probe(variant: CifarVariant) -> Callable[[Path, str], CifarSource | None]:
    def probe(path: Path, origin: str) -> CifarSource | None:
        if path.is_dir():
            pickles = [n for n in variant.pickle_names() if (path / n).is_file()]
            if len(pickles) == len(SPLITS):
                return CifarSource("metaoptnet", path, origin)
            if pickles:
                missing = [n for n in variant.pickle_names() if n not in pickles]
                raise partial_layout(variant.display, origin, path, pickles, missing)
            if variant.r2d2 and (path / "splits" / "bertinetto").is_dir():
                split_files = [f"{s}.txt" for s in SPLITS if (path / "splits" / "bertinetto" / f"{s}.txt").is_file()]
                missing = [f"splits/bertinetto/{s}.txt" for s in SPLITS if f"{s}.txt" not in split_files]
                missing += [] if (path / "data").is_dir() else ["data/"]
                if missing:
                    have = [f"splits/bertinetto/{f}" for f in split_files]
                    raise partial_layout(variant.display, origin, path, have, missing)
                return CifarSource("r2d2", path, origin)
        return _probe_cifar100(path, origin, variant.display)

    return probe


def cifar100_tarball() -> Path:
    """Where the official archive is downloaded to (shared by CIFAR-FS and FC100)."""
    return dataset_dir("cifar100") / CIFAR100_TARBALL


def _download() -> CifarSource:
    dest = cifar100_tarball()
    # CIFAR100_SHA256 is read here, at call time, so a test can stand in a small archive.
    fetch(CIFAR100_URL, dest, CIFAR100_SHA256, what=f"CIFAR-100 ({CIFAR100_TARBALL}, 169 MB)")
    return CifarSource("tar", dest, "download")


# --------------------------------------------------------------------------------------------
# Reading the layouts


def _read_cifar100(src: CifarSource, display: str) -> tuple[np.ndarray, list[str]]:
    """Official CIFAR-100 (train + test): images ``[n, 3, 32, 32]`` and each item's fine class name."""
    fix = archive_fix(CIFAR100_URL, src.origin)
    blobs: dict[str, object] = {}
    if src.layout == "tar":

        def visit(member: str, f: IO[bytes]) -> None:
            parent, _, base = member.rpartition("/")
            if base in CIFAR100_MEMBERS and parent.endswith("cifar-100-python"):
                blobs[base] = load_pickle(f, f"{display} {src.path}:{member}", fix)

        sha256 = CIFAR100_SHA256 if src.check_sha256 else None
        read_archive(display, src.path, fix, visit, sha256, what=f"CIFAR-100 ({CIFAR100_TARBALL})")
        missing = [m for m in CIFAR100_MEMBERS if m not in blobs]
        if missing:
            raise MetakitError(f"{display} {src.path} holds no cifar-100-python/{', '.join(missing)}; {fix}.")
    else:
        for m in CIFAR100_MEMBERS:
            blobs[m] = load_pickle(src.path / m, f"{display} {src.path / m}", fix)
    meta = str_keys(blobs["meta"])
    fine_names = [as_text(n) for n in meta.get("fine_label_names", [])] if isinstance(meta, dict) else []
    if tuple(fine_names) != CIFAR100_FINE:
        raise MetakitError(f"{display} {src.path}: meta does not list CIFAR-100's 100 fine label names; {fix}.")
    images, classes = [], []
    for part in ("train", "test"):
        d = str_keys(blobs[part])
        try:
            data = np.asarray(d["data"])
            fine = np.asarray(d["fine_labels"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise MetakitError(f"{display} {src.path}: {part} lacks data / fine_labels; {fix}.") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(fine) != len(data):
            raise MetakitError(f"{display} {src.path}: {part} data is not uint8 [n, 3072] with one label each; {fix}.")
        if fine.size and (fine.min() < 0 or fine.max() >= len(CIFAR100_FINE)):
            raise MetakitError(f"{display} {src.path}: {part} has fine labels outside 0..99; {fix}.")
        images.append(data.reshape(-1, 3, 32, 32))  # CIFAR rows are channel-major: R, G, B planes
        classes += [CIFAR100_FINE[i] for i in fine]
    return np.concatenate(images), classes


def _read_metaoptnet(src: CifarSource, variant: CifarVariant) -> tuple[np.ndarray, list[str]]:
    images, classes = [], []
    for split, fname in zip(SPLITS, variant.pickle_names()):
        path = src.path / fname
        what = f"{variant.display} {path}"
        fix = f"replace it with MetaOptNet's {fname} (or use the official {CIFAR100_TARBALL})."
        d = str_keys(load_pickle(path, what, fix))
        if not isinstance(d, dict) or "data" not in d or "labels" not in d:
            raise MetakitError(f"{what} is not a MetaOptNet pickle (a dict with data and labels); {fix}")
        data = np.asarray(d["data"])
        labels = np.asarray(d["labels"], dtype=np.int64)
        if data.ndim != 4 or data.shape[1:] != (32, 32, 3) or data.dtype != np.uint8 or len(labels) != len(data):
            raise MetakitError(f"{what}: data is not uint8 [n, 32, 32, 3] with one label per image; {fix}")
        for fine in np.unique(labels):
            name = CIFAR100_FINE[fine] if 0 <= fine < len(CIFAR100_FINE) else None
            if name is None or variant.split_of(name) != split:
                where = f"{variant.split_rule} puts it in {variant.split_of(name)}" if name else "no class has it"
                raise MetakitError(f"{what} holds label {fine} ({name or '?'}) as {split}, but {where}; {fix}")
        images.append(data)
        classes += [CIFAR100_FINE[i] for i in labels]
    return np.concatenate(images), classes


def _read_r2d2(src: CifarSource, variant: CifarVariant, image_size: int, max_memory_gb: float | None) -> Decoded:
    info: dict[str, tuple[str, str | None]] = {}
    files: dict[str, list[Path]] = {}
    for split in SPLITS:
        split_file = src.path / "splits" / "bertinetto" / f"{split}.txt"
        try:
            names = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise MetakitError(
                f"{variant.display}: cannot read {split_file} ({exc}); replace it with Bertinetto et al.'s file."
            ) from None
        for name in names:
            if _BERTINETTO_OF.get(name) != split or name in info:
                if name in info:
                    where = f"it is also listed in {info[name][0]}.txt"
                elif name in _BERTINETTO_OF:
                    where = f"the Bertinetto et al. split puts it in {_BERTINETTO_OF[name]}"
                else:
                    where = "it is not a CIFAR-100 class"
                raise MetakitError(
                    f"{variant.display} {split_file} lists {name!r}, but {where}; use Bertinetto et al.'s split files."
                )
            folder = src.path / "data" / name
            images = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            if not images:
                raise MetakitError(
                    f"{variant.display}: {split_file.name} lists {name!r} but {folder} holds no images; "
                    f"place its images there."
                )
            info[name] = (split, FINE_TO_COARSE[name])
            files[name] = images
    names = order_classes(info)
    total = sum(len(v) for v in files.values())
    check_memory(variant.display, total, image_size, max_memory_gb)
    out = np.empty((total, 3, image_size, image_size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(files[n]) for n in names])
    decode_files(variant.display, [path for name in names for path in files[name]], out)
    return Decoded(out, labels, names, [info[n][0] for n in names], [info[n][1] for n in names])  # type: ignore[misc]


def _decode(src: CifarSource, variant: CifarVariant, image_size: int, max_memory_gb: float | None) -> Decoded:
    if src.layout == "r2d2":
        return _read_r2d2(src, variant, image_size, max_memory_gb)
    if src.layout == "metaoptnet":
        images, classes = _read_metaoptnet(src, variant)
        channels_last = True
    else:
        images, classes = _read_cifar100(src, variant.display)
        channels_last = False
    info = {c: (variant.split_of(c), FINE_TO_COARSE[c]) for c in set(classes)}
    what = f"{variant.display} {src.path}"
    return assemble(variant.display, images, channels_last, classes, info, image_size, max_memory_gb, what)


def load_cifar_variant(
    variant: CifarVariant,
    root: str | os.PathLike | None,
    image_size: int,
    download: bool,
    max_memory_gb: float | None,
) -> ImageSetDataset:
    """Load a CIFAR-100-derived dataset (the shared body of :func:`load_cifarfs` and ``load_fc100``)."""
    bench = variant.benchmark()
    src = bench.locate(root, image_size, _download if download else None, place=cifar100_tarball().parent)
    # Only the full official set is known in advance; other layouts are checked once read.
    if src.layout in ("tar", "dir"):
        check_memory(variant.display, CIFAR100_IMAGES, image_size, max_memory_gb)
    key = f"{src.layout}:{stat_identity(src.files(variant))}"
    return bench.load(src, image_size, max_memory_gb, lambda: _decode(src, variant, image_size, max_memory_gb), key)


def cifar_status(variant: CifarVariant) -> str:
    """One status line for a CIFAR-100-derived dataset."""
    return variant.benchmark().status(
        f"not local (first use downloads {CIFAR100_TARBALL}, 169 MB, to {cifar100_tarball()})"
    )


# --------------------------------------------------------------------------------------------
# CIFAR-FS


def load_cifarfs(
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool = True,
    max_memory_gb: float | None = None,
) -> ImageSetDataset:
    """Load CIFAR-FS: CIFAR-100's 100 classes (superclasses as groups), Bertinetto split recorded.

    Args:
        root, image_size, download, max_memory_gb: as for every benchmark (:mod:`metakit.datasets.imagesets`).
            ``root`` may be a folder holding a layout of the module docstring, a parent holding a
            ``cifar100/``, ``cifarfs/`` or ``cifar-100-python/`` folder, or the archive itself;
            ``None`` looks at ``$METAKIT_CIFARFS``, then at ``cache_dir("cifarfs")`` and
            ``cache_dir("cifar100")``. 32px is native (184 MB of memory); ``download`` fetches
            the official CIFAR-100 archive.

    Returns:
        An :class:`ImageSetDataset`: uint8 RGB ``[n, 3, image_size, image_size]``, 600 images per
        class from the official set (train and test together); classes numbered train, val, test
        (each alphabetical); ``class_splits`` holds the published split.
    """
    return load_cifar_variant(CIFARFS, root, image_size, download, max_memory_gb)


def cifarfs_status() -> str:
    """One line: where CIFAR-FS's files are, or where they would be downloaded to."""
    return cifar_status(CIFARFS)

