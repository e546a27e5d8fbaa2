"""PASCAL-5i and COCO-20i, the field's few-shot segmentation benchmarks, with their published folds.

Neither can be downloaded here; place the files by hand (``docs`` and the README give the layout)
and point ``dataset.root`` at them. Each image becomes one scene of a :class:`SceneSet`; a class
of the split counts as present where it has at least ``min_pixels`` pixels (after resizing),
and the instances of a class are the connected components of its mask.

**PASCAL-5i** (Shaban et al. 2017; the folds of PANet, PFENet and HSNet): VOC 2012's 20 classes in
4 folds of 5; fold ``i`` tests classes ``5i+1 .. 5i+5`` (1-based VOC labels: fold 0 is aeroplane,
bicycle, bird, boat, bottle) and trains on the other 15. Layout::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClassAug/<id>.png       # SBD-augmented labels: 0 background, 1..20, 255 boundary
    ROOT/ImageSets/Segmentation/train_aug.txt (or trainaug.txt, or train.txt)  # training image ids
    ROOT/ImageSets/Segmentation/val.txt      # the 1,449 val ids: test (and validation) images

Training scenes are the training images that hold a training class; the pixels of the fold's
test classes there are background (PANet's setting). Test scenes are the val images that hold a
test class. As in HSNet, the val split is the test split (the protocol has no third part).
255 (object boundaries) counts as background here, where HSNet leaves it out of the IoU, so
figures are slightly lower than the protocol's.

**COCO-20i** (Nguyen and Todorovic 2019, in HSNet's and PFENet's form): COCO's 80 categories,
indexed 0..79 in order of category id; fold ``i`` tests the interleaved classes ``c`` with
``c % 4 == i`` (HSNet's ``class_ids_val = [fold + 4 * v for v in range(20)]``; fold 0 is person,
airplane, boat, parking meter, ...), training on the other 60. Layout::

    ROOT/annotations/instances_train2014.json   # training images
    ROOT/annotations/instances_val2014.json     # test (and validation) images
    ROOT/train2014/<file_name>  ROOT/val2014/<file_name>

Polygons are drawn with PIL; run-length masks (``iscrowd: 1``) are decoded here, uncompressed
(a list of counts, as COCO's instance files hold them) and compressed (COCO's string form), so
pycocotools is not needed. Later annotations paint over earlier ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from metakit.errors import MetakitError
from metakit.segmentation.fss import _open
from metakit.segmentation.scenes import SceneSet, segmentation_spec

__all__ = [
    "COCO_FOLDS", "PASCAL_CLASSES", "coco20i_spec", "coco20i_status", "coco_fold_classes", "decode_rle",
    "load_coco20i", "load_pascal5i", "pascal5i_spec", "pascal5i_status", "pascal_fold_classes",
]

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
COCO_FOLDS = 4
_PASCAL_TRAIN_LISTS = ("train_aug.txt", "trainaug.txt", "train.txt")


def pascal_fold_classes(fold: int) -> tuple[list[int], list[int]]:
    """PASCAL-5i fold ``fold``'s (training, test) classes as 1-based VOC labels."""
    _check_fold(fold)
    test = [5 * fold + i for i in range(1, 6)]
    return [c for c in range(1, 21) if c not in test], test


def coco_fold_classes(fold: int) -> tuple[list[int], list[int]]:
    """COCO-20i fold ``fold``'s (training, test) classes as indices 0..79 (category-id order), HSNet's interleaving."""
    _check_fold(fold)
    test = [fold + COCO_FOLDS * v for v in range(20)]
    return [c for c in range(80) if c not in test], test


def _check_fold(fold: int) -> None:
    if fold not in range(COCO_FOLDS):
        raise MetakitError(f"fold must be 0, 1, 2 or 3 (the benchmark's 4 folds), got {fold!r}.")


def _check_split(name: str, split: str) -> None:
    if split != "published":
        raise MetakitError(f"{name} has its published folds only; set dataset.split: published and dataset.fold: 0..3, got split {split!r}.")


def _scene_set(name: str, items: Iterable[tuple[np.ndarray, np.ndarray]], classes: Sequence[int],
               class_names: list[str], min_pixels: int) -> SceneSet:
    """One split from (image ``[H, W, C]`` uint8, label map ``[H, W]`` of dataset class ids) pairs.

    Only ``classes`` are kept (as indices into ``class_names``); every other label is background.
    Images where none of them has ``min_pixels`` pixels are dropped.
    """
    from metakit.segmentation.metrics import connected_components

    lookup = np.full(256 if max(classes, default=0) < 256 else max(classes) + 1, -1, dtype=np.int64)
    for i, c in enumerate(classes):
        lookup[c] = i
    images, labels, instances = [], [], []
    for pixels, label_map in items:
        mapped = torch.from_numpy(lookup[np.clip(label_map, 0, len(lookup) - 1)])
        present = [c for c in mapped.unique().tolist() if c >= 0 and int((mapped == c).sum()) >= min_pixels]
        if not present:
            continue
        inst = torch.zeros_like(mapped)
        for c in present:
            comps = connected_components(mapped == c)
            inst = torch.where(comps > 0, comps + inst.max(), inst)
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
        labels.append(mapped)
        instances.append(inst)
    if not images:
        raise MetakitError(f"{name}: no image holds a class of this split; check the files under dataset.root.")
    return SceneSet(name=name, images=torch.stack(images), labels=torch.stack(labels), instances=torch.stack(instances),
                    class_names=class_names, min_pixels=min_pixels)


def _resize(pixels: np.ndarray, label_map: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and label map (nearest) resized to ``size`` x ``size``."""
    image = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))
    labels = np.asarray(Image.fromarray(label_map.astype(np.int32)).resize((size, size), Image.NEAREST)).astype(np.int64)
    return image.reshape(size, size, -1), labels


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_pascal5i(
    root: str | Path, fold: int = 0, image_size: int = 128, min_pixels: int = 16, max_images: int | None = None,
    split: str = "published", split_seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict[str, SceneSet]:
    """PASCAL-5i fold ``fold`` as ``train``/``val``/``test`` scene sets (``val`` is the test fold, as in HSNet).

    Args:
        root: the VOC 2012 folder with ``JPEGImages``, ``SegmentationClassAug`` and
            ``ImageSets/Segmentation`` (see the module's layout).
        fold: 0..3.
        image_size: images and label maps are resized to this square size.
        min_pixels: a class counts as present in an image with at least this many pixels.
        max_images: read at most this many images of each list (in list order), for a quick look.
        split: ``published``, the only split (the folds).
        split_seed, fractions: unused (the folds fix the split); accepted because every config passes them.

    Raises:
        MetakitError: a missing folder, list or file, named with the fix.
    """
    _check_split("pascal-5i", split)
    train_classes, test_classes = pascal_fold_classes(fold)
    root = Path(root).expanduser()
    lists = root / "ImageSets" / "Segmentation"
    for folder in (root / "JPEGImages", root / "SegmentationClassAug", lists):
        if not folder.is_dir():
            raise MetakitError(f"pascal-5i: {folder} is missing; set dataset.root to your VOC2012 folder laid out as "
                               f"JPEGImages/, SegmentationClassAug/ and ImageSets/Segmentation/ (see the README).")
    train_list = next((lists / n for n in _PASCAL_TRAIN_LISTS if (lists / n).is_file()), None)
    if train_list is None or not (lists / "val.txt").is_file():
        raise MetakitError(f"pascal-5i: {lists} needs val.txt and one of {', '.join(_PASCAL_TRAIN_LISTS)} (image ids, one a line).")

    def items(ids: list[str]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for image_id in ids[:max_images]:
            label_path = root / "SegmentationClassAug" / f"{image_id}.png"
            image_path = root / "JPEGImages" / f"{image_id}.jpg"
            for path in (image_path, label_path):
                if not path.is_file():
                    raise MetakitError(f"pascal-5i: {path} is missing; place it there or remove {image_id} from the image list.")
            pixels = _open(image_path, "RGB")
            with Image.open(label_path) as im:
                label_map = np.asarray(im if im.mode in ("P", "L") else im.convert("L")).astype(np.int64)
            if label_map.shape != pixels.shape[:2]:
                raise MetakitError(f"pascal-5i: {label_path} is not the size of {image_path.name}; use the SegmentationClassAug labels.")
            yield _resize(pixels, label_map, image_size)

    def names(classes: list[int]) -> list[str]:
        return [PASCAL_CLASSES[c - 1] for c in classes]

    test_ids = _read_ids(lists / "val.txt")
    test = _scene_set(f"pascal-5i-{fold}/test", items(test_ids), test_classes, names(test_classes), min_pixels)
    train = _scene_set(f"pascal-5i-{fold}/train", items(_read_ids(train_list)), train_classes, names(train_classes), min_pixels)
    return {"train": train, "val": test, "test": test}


# -- COCO -------------------------------------------------------------------------------------


def _rle_counts(counts: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' ``rleFrString``)."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(segmentation: dict[str, Any]) -> np.ndarray:
    """A COCO run-length mask (``{"size": [h, w], "counts": list or str}``) as bool ``[h, w]``.

    Runs alternate background/foreground starting with background, over the pixels in column-major
    (Fortran) order, as COCO defines them.
    """
    h, w = (int(v) for v in segmentation["size"])
    counts = segmentation["counts"]
    runs = _rle_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != h * w:
        raise MetakitError(f"a run-length mask's runs cover {sum(runs)} pixels, not {h}x{w}; the annotation file is damaged.")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(w, h).T


def _coco_mask(annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
    seg = annotation.get("segmentation")
    if isinstance(seg, dict):
        return decode_rle(seg)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in seg or []:
        if len(polygon) >= 6:
            draw.polygon([(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _coco_items(root: Path, part: str, max_images: int | None, image_size: int) -> tuple[list[str], Iterable[tuple[np.ndarray, np.ndarray]]]:
    """Category names (id order) and the (image, label map of class indices 0..79) pairs of ``part`` (train2014, val2014)."""
    path = root / "annotations" / f"instances_{part}.json"
    if not path.is_file():
        raise MetakitError(f"coco-20i: {path} is missing; set dataset.root to a folder with annotations/instances_{part}.json and {part}/ (see the README).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        images = data["images"]
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MetakitError(f"coco-20i: {path} is not a COCO instances file ({type(exc).__name__}: {exc}); use the official file.") from None
    if len(categories) != 80:
        raise MetakitError(f"coco-20i: {path} has {len(categories)} categories, COCO has 80; use the official instances file.")
    index = {int(c["id"]): i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)

    def items() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for info in sorted(images, key=lambda im: int(im["id"]))[:max_images]:
            anns = by_image.get(int(info["id"]), [])
            if not anns:
                continue
            image_path = root / part / info["file_name"]
            if not image_path.is_file():
                raise MetakitError(f"coco-20i: {image_path} is missing; place the {part} images in {root / part}.")
            pixels = _open(image_path, "RGB")
            height, width = pixels.shape[:2]
            label_map = np.full((height, width), 255, dtype=np.int64)  # 255: no class of the 80
            for ann in anns:
                mask = _coco_mask(ann, height, width)
                if mask.shape != (height, width):
                    raise MetakitError(f"coco-20i: an annotation of {info['file_name']} in {path} is not the image's size.")
                label_map[mask] = index[int(ann["category_id"])]
            yield _resize(pixels, label_map, image_size)

    return [str(c["name"]) for c in categories], items()


def load_coco20i(
    root: str | Path, fold: int = 0, image_size: int = 128, min_pixels: int = 16, max_images: int | None = None,
    split: str = "published", split_seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict[str, SceneSet]:
    """COCO-20i fold ``fold`` as ``train``/``val``/``test`` scene sets (train2014 / val2014; ``val`` is ``test``).

    Arguments as :func:`load_pascal5i`; ``root`` holds ``annotations/`` and the image folders.
    """
    _check_split("coco-20i", split)
    train_classes, test_classes = coco_fold_classes(fold)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MetakitError(f"coco-20i: {root} is not a folder; set dataset.root to your COCO 2014 folder (see the README).")
    names, test_items = _coco_items(root, "val2014", max_images, image_size)
    test = _scene_set(f"coco-20i-{fold}/test", test_items, test_classes, [names[c] for c in test_classes], min_pixels)
    names, train_items = _coco_items(root, "train2014", max_images, image_size)
    train = _scene_set(f"coco-20i-{fold}/train", train_items, train_classes, [names[c] for c in train_classes], min_pixels)
    return {"train": train, "val": test, "test": test}


def pascal5i_status() -> str:
    """One line for ``metakit datasets``."""
    return "place VOC2012 (JPEGImages, SegmentationClassAug, ImageSets/Segmentation) by hand; set dataset.root"


def coco20i_status() -> str:
    """One line for ``metakit datasets``."""
    return "place COCO 2014 (annotations/instances_*.json, train2014/, val2014/) by hand; set dataset.root"


def pascal5i_spec() -> Any:
    """The ``pascal-5i`` dataset as :mod:`metakit.datasets` lists it."""
    return segmentation_spec(
        "pascal-5i", "PASCAL-5i few-shot segmentation (VOC 2012 + SBD labels), 4 folds of 5 classes (dataset.fold)",
        "VOC2012 and SegmentationClassAug, placed by hand (no download)", "VOC: Flickr terms; SBD: research use",
        "metakit.segmentation.published:pascal5i", splits=("published",),
    )


def coco20i_spec() -> Any:
    """The ``coco-20i`` dataset as :mod:`metakit.datasets` lists it."""
    return segmentation_spec(
        "coco-20i", "COCO-20i few-shot segmentation (COCO 2014 instances), 4 interleaved folds of 20 classes (dataset.fold)",
        "COCO 2014 images and instances_*.json, placed by hand (no download)", "COCO: CC BY 4.0 annotations; Flickr images",
        "metakit.segmentation.published:coco20i", splits=("published",),
    )
