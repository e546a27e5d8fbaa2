"""``metakit serve RUN_DIR`` on a segmentation run: upload a few images with masks and a query, get its overlay.

The segmentation plugin's ``serve_run`` hook (:func:`metakit.segmentation.cli.serve_segmentation`) runs
:func:`metakit.serve.serve` (the same socket, host check, limits and error answers as a
classification run) with the app :func:`create_segmentation_app` builds:

* ``GET /``: a page with one form: support images, their masks (in the same order) and a query
  image; sending it shows the query's overlay (the predicted mask tinted red). No script.
* ``GET /health``: the run, learner, dataset, ``kind: segmentation``, input shape and limits.
* ``POST /overlay``: the same multipart fields as the form (``support``, ``mask``, ``query``
  file parts); the answer is the first query's overlay as a PNG.
* ``POST /predict``: the same fields, any number of queries; JSON with, per query, its ``file``
  name, ``foreground`` (the share of its pixels predicted), ``boxes`` (connected components:
  ``box`` [x0, y0, x1, y1] and ``score``) and base64 PNGs of its ``mask`` and ``overlay``.

Masks are checked as ``metakit segment predict`` checks them: the image's size, binary (0/255 or
0/1), not empty. Every refusal is a 4xx answer ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from metakit.errors import MetakitError
from metakit.segmentation.metrics import detect_instances
from metakit.segmentation.predict import _tensor, overlay, segment_images
from metakit.serve import ServeLimits
from metakit.serve.app import UploadError, check_image, error_handlers, read_body, read_form

__all__ = ["SegmentationModel", "create_segmentation_app", "segmentation_app"]

_ROUTES = "GET / (the page), GET /health, POST /overlay and POST /predict"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class SegmentationModel:
    """A segmentation run's learner, ready to adapt: ``fit`` on support images and masks, then ``segment`` queries."""

    name: str
    learner: Any
    config: Any
    input_shape: tuple[int, int, int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, run_dir: str, checkpoint: str = "best") -> SegmentationModel:
        """The learner of ``run_dir`` with its ``checkpoint`` weights."""
        from metakit.runs import load_run_config, load_weights
        from metakit.segmentation.experiment import build_seg_experiment

        exp = build_seg_experiment(load_run_config(run_dir))
        exp.learner.load_state_dict(load_weights(run_dir, checkpoint))
        exp.learner.eval()
        return cls(str(run_dir), exp.learner, exp.config, tuple(exp.task.input_shape))  # type: ignore[arg-type]

    @property
    def mode(self) -> str:
        """PIL mode of the run's images."""
        return "RGB" if self.input_shape[0] == 3 else "L"

    def segment(self, support: list[np.ndarray], masks: list[np.ndarray], queries: list[np.ndarray]) -> list[torch.Tensor]:
        """Foreground probabilities of each query at its own size, adapted to ``support`` and its ``masks``."""
        channels, height, width = self.input_shape
        x = torch.stack([_tensor(p, (height, width), channels) for p in support])
        y = torch.stack([torch.nn.functional.interpolate(torch.from_numpy(m)[None, None].float(), size=(height, width),
                                                         mode="nearest")[0, 0] for m in masks])
        with self.lock:  # fit changes the learner: one request adapts and predicts at a time
            self.learner.fit(x, y)
            return [segment_images(self.learner, (height, width), channels, q) for q in queries]


def _decode(name: str, data: bytes, mode: str, limits: ServeLimits) -> np.ndarray:
    check_image(name, data, limits)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(400, f"{name} could not be decoded; upload PNG or JPEG files.") from None


def _mask(name: str, data: bytes, image: str, shape: tuple[int, ...], limits: ServeLimits) -> np.ndarray:
    values = _decode(name, data, "L", limits)
    if values.shape != shape[:2]:
        raise UploadError(400, f"mask {name} is {values.shape[1]}x{values.shape[0]} but its image {image} is "
                               f"{shape[1]}x{shape[0]}; upload masks at their images' size, in the images' order.")
    found = set(np.unique(values).tolist())
    if not (found <= {0, 255} or found <= {0, 1}):
        raise UploadError(400, f"mask {name} is not binary; save it with only 0 and 255 (or 0 and 1).")
    if not found - {0}:
        raise UploadError(400, f"mask {name} has no foreground pixels; draw the object in it.")
    return values > 0


async def _parse(request: Request, limits: ServeLimits) -> dict[str, list[tuple[str, bytes]]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UploadError(415, "POST multipart/form-data with support, mask and query image files.")
    form = await read_form(request, await read_body(request, limits), limits, "support, mask and query image files")
    parts: dict[str, list[tuple[str, bytes]]] = {"support": [], "mask": [], "query": []}
    try:
        for key, value in form.multi_items():
            if key not in parts:
                raise UploadError(400, f"unexpected field {key[:60]!r}; send support, mask and query image files.")
            if not isinstance(value, UploadFile):
                raise UploadError(400, f"field {key!r} must be an image file; upload it as a file part.")
            parts[key].append((value.filename or f"{key} {len(parts[key]) + 1}", await value.read()))
    finally:
        await form.close()
    if not parts["support"]:
        raise UploadError(400, "no support images; upload at least one image of the object with its mask.")
    if len(parts["mask"]) != len(parts["support"]):
        raise UploadError(400, f"{len(parts['support'])} support image(s) but {len(parts['mask'])} mask(s); upload one "
                               f"mask per support image, in the same order.")
    if not parts["query"]:
        raise UploadError(400, "no query image; upload an image to segment.")
    if sum(len(v) for v in parts.values()) > limits.max_files:
        raise UploadError(413, f"more than {limits.max_files} files in one request; send fewer.")
    return parts


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _run(model: SegmentationModel, parts: dict[str, list[tuple[str, bytes]]], limits: ServeLimits) -> list[dict[str, Any]]:
    start = time.perf_counter()
    support = [_decode(n, d, model.mode, limits) for n, d in parts["support"]]
    masks = [_mask(mn, md, sn, s.shape, limits) for (sn, _), (mn, md), s in zip(parts["support"], parts["mask"], support, strict=True)]
    queries = [_decode(n, d, model.mode, limits) for n, d in parts["query"]]
    try:
        probs = model.segment(support, masks, queries)
    except MetakitError as exc:
        raise UploadError(400, str(exc)) from None
    out = []
    for (name, _), pixels, p in zip(parts["query"], queries, probs, strict=True):
        mask = (p >= 0.5).numpy()
        scores, boxes = detect_instances(p)
        out.append({
            "file": name, "foreground": round(float(mask.mean()), 4),
            "boxes": [{"box": [int(v) for v in b.tolist()], "score": round(float(s), 4)} for s, b in zip(scores, boxes, strict=True)],
            "mask": _png(mask.astype(np.uint8) * 255), "overlay": _png(overlay(pixels, mask)),
            "seconds": round(time.perf_counter() - start, 4),
        })
    return out


def _page(info: dict[str, Any]) -> str:
    title = html.escape(f"{info['run']}: {info['learner']} on {info['dataset']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>metakit serve - segmentation</title></head>
<body><h1>Few-shot segmentation</h1><p>{title}</p>
<form method="post" action="/overlay" enctype="multipart/form-data">
<p><label>Support images (a few images of one object) <input type="file" name="support" accept="image/*" multiple required></label></p>
<p><label>Their masks, in the same order (white = object) <input type="file" name="mask" accept="image/png" multiple required></label></p>
<p><label>Query image <input type="file" name="query" accept="image/*" required></label></p>
<p><button type="submit">Show the overlay</button></p>
</form></body></html>
"""


def create_segmentation_app(
    model: SegmentationModel, limits: ServeLimits | None = None, checkpoint: str = "best",
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The web app serving a segmentation ``model`` (see the module's routes)."""
    limits = limits or ServeLimits()
    config = model.config
    info = {
        "run": config.name, "run_dir": model.name, "learner": config.learner.name, "dataset": config.dataset.name,
        "kind": "segmentation", "checkpoint": checkpoint, "input_shape": list(model.input_shape), "limits": limits.to_dict(),
    }
    app = FastAPI(title="metakit serve", summary="Few-shot segmentation with a trained metakit run.", docs_url=None,
                  redoc_url=None)
    app.state.info = info
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    error_handlers(app, _ROUTES)
    page = _page(info)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_HEADERS)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The run being served and the upload limits."""
        return info

    @app.post("/overlay")
    async def overlay_png(request: Request) -> Response:
        """The first query's overlay (PNG) after adapting to the uploaded support images and masks."""
        parts = await _parse(request, limits)
        rows = await run_in_threadpool(_run, model, {**parts, "query": parts["query"][:1]}, limits)
        return Response(rows[0]["overlay"], media_type="image/png", headers=_HEADERS)

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """Masks, overlays (base64 PNG) and boxes of every query."""
        parts = await _parse(request, limits)
        rows = await run_in_threadpool(_run, model, parts, limits)
        for row in rows:
            row["mask"] = base64.b64encode(row["mask"]).decode()
            row["overlay"] = base64.b64encode(row["overlay"]).decode()
        return {"support": len(parts["support"]), "queries": rows}

    return app


def segmentation_app(run_dir: str, checkpoint: str, limits: ServeLimits, allowed_hosts: list[str] | None) -> FastAPI:
    """The app of a segmentation run, as :func:`metakit.serve.serve` builds it."""
    return create_segmentation_app(SegmentationModel.load(run_dir, checkpoint), limits, checkpoint, allowed_hosts)

