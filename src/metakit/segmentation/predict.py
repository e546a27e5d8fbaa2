"""Masks for your own images from a trained segmentation run: ``metakit segment predict``.

The support folder holds a few images of one class with their masks, in the fss-folder
convention (``<n>.jpg`` with the mask ``<n>.png`` beside it, checked the same way). The learner
adapts to them, then segments each query image. For each query it writes ``<name>_mask.png``
(0/255, the query's own size) and ``<name>_overlay.png`` (the mask tinted red on the image). The
instances' boxes (connected components of the mask, with their mean probability) go to
``boxes.json``.

A support folder of class folders (``SUPPORT/<class>/<n>.jpg`` + ``<n>.png``, each mask marking
its folder's class) is an N-way support set: every query pixel gets background or one of the
classes. The mask PNG then holds the class's number (1..N, in the order of ``classes`` in
``boxes.json``; 0 background), the overlay tints each class in its own colour, and each box names
its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from metakit.errors import MetakitError
from metakit.segmentation.fss import _IMAGE_SUFFIXES, _open, _read_mask
from metakit.segmentation.metrics import detect_instances

__all__ = ["overlay", "predict_folder", "segment_images"]

_QUERY_SUFFIXES = (*_IMAGE_SUFFIXES, ".png")

#: Overlay tints of classes 1, 2, ...: red first, as a one-class mask is.
_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220), (255, 120, 0), (140, 70, 20))


def _tensor(pixels: np.ndarray, size: tuple[int, int], channels: int) -> torch.Tensor:
    """uint8 ``[H, W(, C)]`` -> float ``[C, size]`` in [0, 1], resized as the loaders resize."""
    img = torch.from_numpy(pixels.copy()).float().reshape(pixels.shape[0], pixels.shape[1], channels).permute(2, 0, 1)
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0] / 255


def _support(folder: Path, size: tuple[int, int], channels: int, threshold: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Support images and label maps from one class's folder, or from a folder of class folders (N-way).

    Returns the images ``[K, C, H, W]``, label maps ``[K, H, W]`` (class ``i`` of the returned names is ``i + 1``)
    and the class names (``[]`` for one class).
    """
    if not folder.is_dir():
        raise MetakitError(f"--support {folder} is not a folder; pass a folder of <n>.jpg images with <n>.png masks.")
    has_images = any(p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.iterdir())
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(q.suffix.lower() in _IMAGE_SUFFIXES for q in p.iterdir()))
    if has_images or not classes:
        images, masks = _one_class(folder, size, channels, threshold)
        return images, masks, []
    parts = [_one_class(folder / c, size, channels, threshold) for c in classes]
    images = torch.cat([x for x, _ in parts])
    labels = torch.cat([m * (i + 1) for i, (_, m) in enumerate(parts)])
    return images, labels, classes


def _one_class(folder: Path, size: tuple[int, int], channels: int, threshold: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    mode = "RGB" if channels == 3 else "L"
    images, masks = [], []
    for image_path in sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        mask_path = image_path.with_suffix(".png")
        if not mask_path.is_file():
            raise MetakitError(f"image {image_path} has no mask {mask_path.name} beside it; add the mask or remove the image.")
        pixels = _open(image_path, mode)
        fg = _read_mask(mask_path, (pixels.shape[1], pixels.shape[0]), image_path, threshold)
        images.append(_tensor(pixels, size, channels))
        masks.append(F.interpolate(torch.from_numpy(fg)[None, None].float(), size=size, mode="nearest")[0, 0])
    if not images:
        raise MetakitError(f"--support {folder} holds no .jpg images; put <n>.jpg images with their <n>.png masks in it.")
    return torch.stack(images), torch.stack(masks)


def _queries(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MetakitError(f"--query {path} not found; pass an image or a folder of images.")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in _QUERY_SUFFIXES and p.is_file())
    if not found:
        raise MetakitError(f"--query {path} holds no .jpg or .png images.")
    return found


def overlay(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image (uint8 ``[H, W]`` or ``[H, W, 3]``) as RGB with the mask's pixels tinted half red.

    A label map (ints, 0 background) tints class ``i`` in the ``i``-th colour instead.
    """
    rgb = np.asarray(Image.fromarray(pixels).convert("RGB"), dtype=np.float32)
    labels = mask.astype(np.int64)
    for i in range(1, int(labels.max(initial=0)) + 1):
        where = labels == i
        rgb[where] = 0.5 * rgb[where] + 0.5 * np.array(_COLOURS[(i - 1) % len(_COLOURS)], dtype=np.float32)
    return rgb.round().astype(np.uint8)


def segment_images(learner: Any, size: tuple[int, int], channels: int, pixels: np.ndarray) -> torch.Tensor:
    """Probabilities of one image (uint8 ``[H, W(, C)]``) at its own size, from a learner already fitted.

    Foreground probabilities ``[H, W]`` for one class; ``[N + 1, H, W]`` (background, then the classes) for N.
    """
    probs = learner.predict(_tensor(pixels, size, channels)[None])
    # Back to the image's own size, so the mask lines up with the image the user gave.
    if probs.dim() == 3:
        return F.interpolate(probs[:, None], size=pixels.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    return F.interpolate(probs, size=pixels.shape[:2], mode="bilinear", align_corners=False)[0]


def predict_folder(
    run_dir: str | Path, support: str | Path, query: str | Path, out: str | Path, threshold: int | None = None,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Adapt the run's learner to ``support`` and write a mask, an overlay and boxes for every query image.

    Returns ``{"out": ..., "support_images": K, "queries": {name: [{"box": [x0, y0, x1, y1], "score": s}, ...]}}``,
    also written to ``OUT/boxes.json``. Boxes are in the query image's pixels (x1, y1 exclusive).
    """
    from metakit.runs import load_run_config, load_weights
    from metakit.segmentation.experiment import build_seg_experiment
    from metakit.utils import write_json

    exp = build_seg_experiment(load_run_config(run_dir))
    learner = exp.learner
    learner.load_state_dict(load_weights(run_dir, checkpoint))
    channels, height, width = exp.task.input_shape
    query = Path(query)
    queries = _queries(query)  # checked before anything is written
    support_x, support_y, classes = _support(Path(support), (height, width), channels, threshold)
    learner.fit(support_x, support_y)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    boxes: dict[str, list[dict[str, Any]]] = {}
    mode = "RGB" if channels == 3 else "L"
    for path in queries:
        pixels = _open(path, mode)
        full = segment_images(learner, (height, width), channels, pixels)
        # Names from the path under --query, so a/1.jpg and b/1.jpg do not overwrite each other.
        name = "_".join(path.relative_to(query).with_suffix("").parts) if query.is_dir() else path.stem
        if not classes:
            mask = (full >= 0.5).numpy()
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}_mask.png")
            Image.fromarray(overlay(pixels, mask)).save(out / f"{name}_overlay.png")
            found = [(None, *detect_instances(full))]
        else:
            labels = full.argmax(0)
            Image.fromarray(labels.numpy().astype(np.uint8)).save(out / f"{name}_mask.png")
            Image.fromarray(overlay(pixels, labels.numpy())).save(out / f"{name}_overlay.png")
            found = [(c, *detect_instances(full[i + 1], mask=labels == i + 1)) for i, c in enumerate(classes)]
        boxes[name] = [{**({"class": c} if c else {}), "box": [int(v) for v in b.tolist()], "score": round(float(s), 4)}
                       for c, scores, kept in found for s, b in zip(scores, kept, strict=True)]
    result = {"out": str(out), "support_images": len(support_x), **({"classes": classes} if classes else {}), "queries": boxes}
    write_json(out / "boxes.json", result)
    return result
