"""Masks for your own images from a trained segmentation run: ``metakit segment predict``.

The support folder holds a few images of one class with their masks, in the fss-folder
convention (``<n>.jpg`` with the mask ``<n>.png`` beside it, checked the same way). The learner
adapts to them, then segments each query image. For each query it writes ``<name>_mask.png``
(0/255, the query's own size) and ``<name>_overlay.png`` (the mask tinted red on the image). The
instances' boxes (connected components of the mask, with their mean probability) go to
``boxes.json``.
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


def _tensor(pixels: np.ndarray, size: tuple[int, int], channels: int) -> torch.Tensor:
    """uint8 ``[H, W(, C)]`` -> float ``[C, size]`` in [0, 1], resized as the loaders resize."""
    img = torch.from_numpy(pixels.copy()).float().reshape(pixels.shape[0], pixels.shape[1], channels).permute(2, 0, 1)
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0] / 255


def _support(folder: Path, size: tuple[int, int], channels: int, threshold: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    mode = "RGB" if channels == 3 else "L"
    if not folder.is_dir():
        raise MetakitError(f"--support {folder} is not a folder; pass a folder of <n>.jpg images with <n>.png masks.")
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
    """The image (uint8 ``[H, W]`` or ``[H, W, 3]``) as RGB with the mask's pixels tinted half red."""
    rgb = np.asarray(Image.fromarray(pixels).convert("RGB"), dtype=np.float32)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    return rgb.round().astype(np.uint8)


def segment_images(learner: Any, size: tuple[int, int], channels: int, pixels: np.ndarray) -> torch.Tensor:
    """Foreground probabilities of one image (uint8 ``[H, W(, C)]``) at its own size, from a learner already fitted."""
    probs = learner.predict(_tensor(pixels, size, channels)[None])
    # Back to the image's own size, so the mask lines up with the image the user gave.
    return F.interpolate(probs[:, None], size=pixels.shape[:2], mode="bilinear", align_corners=False)[0, 0]


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
    support_x, support_y = _support(Path(support), (height, width), channels, threshold)
    learner.fit(support_x, support_y)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    boxes: dict[str, list[dict[str, Any]]] = {}
    mode = "RGB" if channels == 3 else "L"
    for path in queries:
        pixels = _open(path, mode)
        full = segment_images(learner, (height, width), channels, pixels)
        mask = (full >= 0.5).numpy()
        # Names from the path under --query, so a/1.jpg and b/1.jpg do not overwrite each other.
        name = "_".join(path.relative_to(query).with_suffix("").parts) if query.is_dir() else path.stem
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}_mask.png")
        Image.fromarray(overlay(pixels, mask)).save(out / f"{name}_overlay.png")
        scores, found = detect_instances(full)
        boxes[name] = [{"box": [int(v) for v in b.tolist()], "score": round(float(s), 4)} for s, b in zip(scores, found, strict=True)]
    result = {"out": str(out), "support_images": len(support_x), "queries": boxes}
    write_json(out / "boxes.json", result)
    return result
