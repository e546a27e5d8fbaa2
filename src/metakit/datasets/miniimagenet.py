"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split.

100 ImageNet classes, 600 images each, 84x84 RGB; the published split is 64 train / 16 val / 20
test classes (:data:`RAVI_SPLIT`, the classes of Ravi & Larochelle's ``train.csv``/``val.csv``/
``test.csv`` at github.com/twitter/meta-learning-lstm, ``data/miniImagenet``). About 1.3 GB in
memory at 84px (60,000 x 3 x 84 x 84 bytes).

There is no stable official download (the images are ImageNet's, under its research terms), so
the files are placed by hand, in either of the two usual layouts:

* **pickles**: ``mini-imagenet-cache-train.pkl``, ``-val.pkl`` and ``-test.pkl``, each a dict
  with ``image_data`` (uint8 ``[n, 84, 84, 3]``) and ``class_dict`` (wnid -> list of row
  indices), as distributed with learn2learn and Gidaris & Komodakis' code;
* **CSV + images**: Ravi & Larochelle's ``train.csv``, ``val.csv``, ``test.csv`` (header
  ``filename,label``; rows such as ``n0153282900000005.jpg,n01532829``) beside an ``images/``
  folder holding those files (as produced by their ``mini_imagenet.py`` script).

Each file's classes are checked against :data:`RAVI_SPLIT`, so a Vinyals-split CSV or a renamed
file cannot silently become the "published" split.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metakit.datasets.imagesets import (
    SPLITS,
    Decoded,
    ImageBenchmark,
    ImageSetDataset,
    check_memory,
    decode_files,
    fill_resized,
    load_pickle,
    partial_layout,
    str_keys,
)
from metakit.errors import MetakitError

__all__ = ["ENV_VAR", "RAVI_SPLIT", "load_miniimagenet", "miniimagenet_status"]

NAME = "miniimagenet"
DISPLAY = "miniImageNet"
ENV_VAR = "METAKIT_MINIIMAGENET"
N_IMAGES = 60_000
PICKLES = {s: f"mini-imagenet-cache-{s}.pkl" for s in SPLITS}
CSVS = {s: f"{s}.csv" for s in SPLITS}
SUBDIRS = ("mini-imagenet", "miniimagenet", "miniImageNet", "miniImagenet", "mini_imagenet")
WANTS = (
    "mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl and mini-imagenet-cache-test.pkl "
    "(or images/ with Ravi & Larochelle's train.csv, val.csv, test.csv)"
)
GET = (
    "them from the copies distributed with learn2learn or Gidaris & Komodakis' FewShotWithoutForgetting, "
    "or build images/ from ImageNet (image-net.org, research terms) with the CSVs at "
    "github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
)

#: Ravi & Larochelle (ICLR 2017) split: the wnids of their train.csv / val.csv / test.csv
#: (cross-checked against open-mmlab/mmfewshot's mini_imagenet.py lists).
RAVI_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747",
        "n02074367", "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551",
        "n02108915", "n02111277", "n02113712", "n02120079", "n02165456", "n02457408", "n02606052",
        "n02687172", "n02747177", "n02795169", "n02823428", "n02966193", "n03017168", "n03047690",
        "n03062245", "n03207743", "n03220513", "n03337140", "n03347037", "n03400231", "n03476684",
        "n03527444", "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548", "n04296562",
        "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
        "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560",
        "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
        "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
        "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
        "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
        "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
    ),
}
_RAVI_OF = {wnid: s for s, wnids in RAVI_SPLIT.items() for wnid in wnids}


@dataclass(frozen=True)
class _Source:
    layout: str  # "pickle" or "csv"
    folder: Path
    origin: str

    def files(self) -> list[Path]:
        if self.layout == "pickle":
            return [self.folder / PICKLES[s] for s in SPLITS]
        images = self.folder / "images"
        return [self.folder / CSVS[s] for s in SPLITS] + sorted(p for p in images.iterdir() if p.is_file())

    def describe(self) -> str:
        what = "pickles" if self.layout == "pickle" else "CSVs + images/"
        return f"{what} at {self.folder} ({self.origin})"


def _probe(path: Path, origin: str) -> _Source | None:
    if not path.is_dir():
        return None
    pickles = [PICKLES[s] for s in SPLITS if (path / PICKLES[s]).is_file()]
    if len(pickles) == len(SPLITS):
        return _Source("pickle", path, origin)
    csvs = [CSVS[s] for s in SPLITS if (path / CSVS[s]).is_file()]
    has_images = (path / "images").is_dir()
    if len(csvs) == len(SPLITS) and has_images:
        return _Source("csv", path, origin)
    if pickles:
        raise partial_layout(DISPLAY, origin, path, pickles, [PICKLES[s] for s in SPLITS if PICKLES[s] not in pickles])
    if csvs or (has_images and any(path.glob("*.csv"))):
        missing = [CSVS[s] for s in SPLITS if CSVS[s] not in csvs] + ([] if has_images else ["images/"])
        raise partial_layout(DISPLAY, origin, path, csvs + (["images/"] if has_images else []), missing)
    return None


MINIIMAGENET = ImageBenchmark(NAME, DISPLAY, ENV_VAR, SUBDIRS, _probe, WANTS, GET, N_IMAGES)


def _check_class(wnid: str, split: str, what: str) -> None:
    published = _RAVI_OF.get(wnid)
    if published != split:
        where = f"the Ravi & Larochelle split puts it in {published}" if published else "it is not a miniImageNet class"
        raise MetakitError(
            f"{what} lists class {wnid!r} as {split}, but {where}; use the Ravi & Larochelle files "
            f"(github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet)."
        )


def _decode_pickles(src: _Source, image_size: int, max_memory_gb: float | None) -> Decoded:
    fix = "replace it with an intact copy of the original file"
    parts: list[tuple[str, np.ndarray, dict[str, list[int]]]] = []
    total = 0
    for split in SPLITS:
        path = src.folder / PICKLES[split]
        what = f"{DISPLAY} {path}"
        data = str_keys(load_pickle(path, what, fix))
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise MetakitError(
                f"{what} is not a miniImageNet cache (expected keys image_data, class_dict; got {keys}); {fix}."
            )
        images = np.asarray(data["image_data"])
        class_dict = {str(k): [int(i) for i in v] for k, v in str_keys(data["class_dict"]).items()}
        for wnid, rows in class_dict.items():
            _check_class(wnid, split, what)
            if rows and (min(rows) < 0 or max(rows) >= len(images)):
                raise MetakitError(
                    f"{what}: class_dict[{wnid!r}] indexes rows outside image_data (0..{len(images) - 1}); {fix}."
                )
        total += sum(len(r) for r in class_dict.values())
        check_memory(DISPLAY, total, image_size, max_memory_gb)
        resized = np.empty((len(images), 3, image_size, image_size), dtype=np.uint8)
        fill_resized(resized, images, channels_last=True, what=what)
        parts.append((split, resized, class_dict))
        del data, images
    names: list[str] = []
    splits: list[str] = []
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for split, resized, class_dict in parts:
        for wnid in sorted(class_dict):
            rows = np.asarray(class_dict[wnid], dtype=np.int64)
            chunks.append(resized[rows])
            labels.append(np.full(len(rows), len(names), dtype=np.int64))
            names.append(wnid)
            splits.append(split)
    empty = np.zeros((0, 3, image_size, image_size), dtype=np.uint8)
    return Decoded(
        np.concatenate(chunks) if chunks else empty,
        np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        names,
        splits,
    )


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetakitError(
            f"{DISPLAY} {path} is not a readable CSV ({exc}); replace it with Ravi & Larochelle's file."
        ) from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"] or any(len(r) != 2 for r in rows[1:]):
        raise MetakitError(
            f"{DISPLAY} {path} is not a Ravi & Larochelle split CSV (header filename,label and two columns per "
            f"row); replace it with the file from github.com/twitter/meta-learning-lstm."
        )
    return [(r[0].strip(), r[1].strip()) for r in rows[1:]]


def _decode_csv(src: _Source, image_size: int, max_memory_gb: float | None) -> Decoded:
    entries: list[tuple[str, str, str]] = []  # (split, wnid, filename)
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = src.folder / CSVS[split]
        for filename, wnid in _read_csv(path):
            _check_class(wnid, split, f"{DISPLAY} {path}")
            if seen.setdefault(wnid, split) != split:
                raise MetakitError(f"{DISPLAY}: class {wnid!r} is listed in both {seen[wnid]}.csv and {split}.csv.")
            entries.append((split, wnid, filename))
    check_memory(DISPLAY, len(entries), image_size, max_memory_gb)
    names = sorted(seen, key=lambda w: (SPLITS.index(seen[w]), w))
    index = {w: i for i, w in enumerate(names)}
    images = np.empty((len(entries), 3, image_size, image_size), dtype=np.uint8)
    labels = np.fromiter((index[wnid] for _, wnid, _ in entries), dtype=np.int64, count=len(entries))
    paths = [src.folder / "images" / filename for _, _, filename in entries]

    def missing(i: int) -> MetakitError:
        return MetakitError(
            f"{DISPLAY}: {CSVS[entries[i][0]]} lists {entries[i][2]} but {paths[i]} does not exist; "
            f"place all listed images in {src.folder / 'images'}."
        )

    decode_files(DISPLAY, paths, images, missing)
    return Decoded(images, labels, names, [seen[w] for w in names])


def load_miniimagenet(
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    max_memory_gb: float | None = None,
) -> ImageSetDataset:
    """Load miniImageNet's 100 classes with the Ravi & Larochelle split recorded.

    Args:
        root: the folder holding either layout (see the module docstring), or a parent holding a
            ``mini-imagenet/`` (or ``miniimagenet/``, ``miniImageNet/``) folder. ``None`` looks at
            ``$METAKIT_MINIIMAGENET``, then at ``cache_dir("miniimagenet")``. A missing dataset is
            a one-line error saying which files to put where.
        image_size: output side length (84 is the native size of both layouts' images).
        max_memory_gb: fail with one line if the decoded images would need more (default: 80% of
            physical memory; about 1.3 GB are needed at 84px).

    Returns:
        An :class:`ImageSetDataset`: uint8 RGB ``[n, 3, image_size, image_size]``; classes are
        wnids, numbered train, val, test (each sorted); ``class_splits`` holds the published split
        (``load_splits("miniimagenet", split="published")``).
    """
    src = MINIIMAGENET.locate(root, image_size)
    decode = _decode_pickles if src.layout == "pickle" else _decode_csv
    return MINIIMAGENET.load(src, image_size, max_memory_gb, lambda: decode(src, image_size, max_memory_gb))


def miniimagenet_status() -> str:
    """One line: where miniImageNet is, or which files to place where."""
    place = MINIIMAGENET.caches()[0]
    return MINIIMAGENET.status(f"not local (no official download): place {WANTS} in {place} (or set ${ENV_VAR})")
