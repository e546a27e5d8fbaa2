"""The ``fss-folder`` layout (FSS-1000's): ``ROOT/<class>/<n>.jpg`` with its binary mask ``<n>.png`` beside it.

This is how a user brings their own segmentation data, and what :func:`export_fss` writes from the
embedded scenes so the format can be seen. Splits are by class: ``ROOT/splits/{train,val,test}.txt``
(one class folder name a line) when that folder exists, else seeded ``fractions`` of the classes.
Every problem with the files is one line naming the file and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from metakit.errors import MetakitError
from metakit.segmentation.scenes import SceneSet, segmentation_spec

__all__ = ["ExportSummary", "export_fss", "fss_folder_status", "fss_spec", "load_fss_folder"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_SPLITS = ("train", "val", "test")


def _open(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise MetakitError(f"{path} is not a readable image ({type(exc).__name__}); replace or remove it.") from None


def _read_mask(path: Path, size: tuple[int, int], image: Path, threshold: int | None) -> np.ndarray:
    """The mask at ``path`` as bool ``[H, W]``, after the checks the issue lists (size, binary, empty)."""
    with Image.open(path) as im:
        if im.size != size:
            raise MetakitError(
                f"mask {path} is {im.size[0]}x{im.size[1]} but its image {image.name} is {size[0]}x{size[1]}; "
                f"save the mask at the image's size."
            )
    values = _open(path, "L")
    if threshold is None:
        found = np.unique(values)
        if not (set(found.tolist()) <= {0, 255} or set(found.tolist()) <= {0, 1}):
            shown = ", ".join(str(v) for v in found[:6]) + (", ..." if len(found) > 6 else "")
            raise MetakitError(
                f"mask {path} is not binary (values {shown}); save it with only 0 and 255, "
                f"or set the dataset option threshold (e.g. threshold: 128, pixels >= it are foreground)."
            )
        fg = values > 0
    else:
        fg = values >= threshold
    if not fg.any():
        raise MetakitError(f"mask {path} has no foreground pixels; draw the object in it or remove {image.name} and the mask.")
    return fg


def _class_splits(root: Path, classes: list[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    folder = root / "splits"
    if folder.is_dir():
        out = {}
        for split in _SPLITS:
            path = folder / f"{split}.txt"
            if not path.is_file():
                raise MetakitError(f"{folder} has no {split}.txt; write one class folder name a line in it (or remove {folder}).")
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise MetakitError(f"{path} names class(es) with no folder in {root}: {', '.join(unknown[:5])}; fix the names.")
            out[split] = names
        return out
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise MetakitError(f"fractions must be three non-negative numbers (train, val, test), got {list(fractions)}.")
    perm = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    total = sum(fractions)
    n_tr = round(len(classes) * fractions[0] / total)
    n_va = round(len(classes) * fractions[1] / total)
    return {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}


def load_fss_folder(
    root: str | Path,
    image_size: int = 64,
    channels: int = 3,
    threshold: int | None = None,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    split: str = "class",
) -> dict[str, SceneSet]:
    """Load an ``fss-folder`` dataset as ``train``/``val``/``test`` :class:`SceneSet` s.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: images and masks are resized to this square size (masks by nearest pixel).
        channels: 3 (RGB) or 1 (grey).
        threshold: ``None`` (default): masks must be binary (0/255 or 0/1). A number: mask pixels
            ``>= threshold`` are foreground, for masks saved with anti-aliased edges.
        fractions, split_seed: the seeded class split, used when ``root/splits`` does not exist.
        split: ``class``, the only split of this layout (its classes have no groups); a config
            must say so (``dataset.split: class``), since a config's default is ``group``.

    Each image is one scene with one object: its class's mask (instances are the mask's
    connected components, see :func:`metakit.segmentation.metrics.connected_components`).

    Raises:
        MetakitError: a missing root, an image without a mask, a mask of another size, a
            non-binary mask (without ``threshold``), an empty mask, or a split with no class.
    """
    from metakit.segmentation.metrics import connected_components

    if split != "class":
        raise MetakitError(f"fss-folder splits by class (no groups); set dataset.split: class, got {split!r}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MetakitError(f"fss-folder root {root} is not a folder; set dataset.root to a folder of <class>/<n>.jpg + <n>.png.")
    if channels not in (1, 3):
        raise MetakitError(f"channels must be 1 or 3, got {channels}.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "splits" and not p.name.startswith("."))
    classes = [p.name for p in class_dirs]
    if not classes:
        raise MetakitError(f"{root} has no class folders; put each class's images and masks in ROOT/<class>/.")
    splits = _class_splits(root, classes, fractions, split_seed)
    mode = "RGB" if channels == 3 else "L"
    out = {}
    for split in _SPLITS:
        names = splits[split]
        if not names:
            raise MetakitError(f"the {split} split of {root} has no class; give it classes (splits/{split}.txt or fractions).")
        images, labels, instances = [], [], []
        for c, name in enumerate(names):
            folder = root / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            for image_path in files:
                mask_path = image_path.with_suffix(".png")
                if not mask_path.is_file():
                    raise MetakitError(f"image {image_path} has no mask {mask_path.name} beside it; add the mask or remove the image.")
                pixels = _open(image_path, mode)
                fg = _read_mask(mask_path, (pixels.shape[1], pixels.shape[0]), image_path, threshold)
                img = torch.from_numpy(pixels.copy()).float().reshape(pixels.shape[0], pixels.shape[1], channels)
                img = F.interpolate(img.permute(2, 0, 1)[None], size=(image_size, image_size), mode="bilinear",
                                    align_corners=False, antialias=True)[0]
                mask = F.interpolate(torch.from_numpy(fg)[None, None].float(), size=(image_size, image_size), mode="nearest")[0, 0] > 0.5
                images.append(img.round().clamp(0, 255).to(torch.uint8))
                labels.append(torch.where(mask, c, -1))
                instances.append(connected_components(mask))
        if not images:
            raise MetakitError(f"the {split} classes of {root} hold no .jpg images; add <n>.jpg files with <n>.png masks.")
        out[split] = SceneSet(
            name=f"fss-folder/{split}", images=torch.stack(images), labels=torch.stack(labels).long(),
            instances=torch.stack(instances), class_names=list(names), min_pixels=1, strict=True,
        )
    return out


@dataclass
class ExportSummary:
    """What :func:`export_fss` wrote."""

    out: Path
    classes: dict[str, list[str]]
    images: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"out": str(self.out), "classes": self.classes, "images": self.images}


def _folder_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def export_fss(sets: dict[str, SceneSet], out: str | Path, per_class: int | None = None) -> ExportSummary:
    """Write scene sets in the ``fss-folder`` layout, with ``splits/{train,val,test}.txt`` keeping their split.

    Every (scene, class) pair where the class is visible becomes ``<class>/<n>.jpg`` plus its
    mask ``<n>.png`` (0 and 255), at most ``per_class`` per class. ``out`` must not exist yet.
    """
    out = Path(out)
    if out.exists():
        raise MetakitError(f"{out} already exists; choose a new folder for the export.")
    taken: set[str] = set()
    written: dict[str, list[str]] = {}
    count = 0
    for split, scenes in sets.items():
        written[split] = []
        for c, scene_ids in scenes.occurrences().items():
            if not scene_ids:
                continue  # a class hidden in every scene would be an empty folder
            folder_name = _folder_name(scenes.class_names[c], taken)
            folder = out / folder_name
            folder.mkdir(parents=True)
            for n, i in enumerate(scene_ids[:per_class]):
                img = scenes.images[i].permute(1, 2, 0).numpy()
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{n}.jpg", quality=95)
                mask = (scenes.labels[i] == c).numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(folder / f"{n}.png")
                count += 1
            written[split].append(folder_name)
        (out / "splits").mkdir(parents=True, exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in written[split]), encoding="utf-8")
    return ExportSummary(out=out, classes=written, images=count)


def fss_folder_status() -> str:
    """One line for ``metakit datasets``: this dataset is the user's own folder."""
    return "your own folder: set dataset.root (ROOT/<class>/<n>.jpg + <n>.png)"


def fss_spec() -> Any:
    """The ``fss-folder`` dataset as :mod:`metakit.datasets` lists it."""
    return segmentation_spec(
        "fss-folder", "your own few-shot segmentation data in FSS-1000's layout: ROOT/<class>/<n>.jpg with mask <n>.png",
        "a folder you provide (dataset.root)", "yours", "metakit.segmentation.fss:fss_folder", splits=("class",),
    )
