"""The FastAPI application behind ``metakit serve`` (see :mod:`metakit.serve` for the API).

Kept apart from :mod:`metakit.serve` because it imports FastAPI at module level: only code that
has checked for the ``serve`` extra imports it.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from metakit.errors import MetakitError
from metakit.predict import FewShotModel
from metakit.serve.limits import ServeLimits

__all__ = ["UploadError", "check_image", "classification_app", "create_app", "error_handlers", "read_body", "read_form"]

# The page's three files, served from memory with these types.
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}

# The page loads nothing from elsewhere; thumbnails are blob: URLs of the user's own files.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

_MAX_CLASS_NAME = 100
_SUPPORT_PREFIX = "support:"


class UploadError(Exception):
    """A request the server refuses: an HTTP status and one line saying what is wrong and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Items:
    """One request's support set and queries, before they are decoded."""

    classes: list[str] = field(default_factory=list)
    support: list[tuple[str, Any]] = field(default_factory=list)  # (class, raw item)
    queries: list[tuple[str, Any]] = field(default_factory=list)  # (name shown, raw item)


def _page_files() -> dict[str, bytes]:
    root = resources.files("metakit.serve") / "static"
    return {name: (root / name).read_bytes() for name in _STATIC}


def _field_name(raw: str) -> str:
    # Browsers escape these three characters in multipart field names (HTML's form encoding).
    return raw.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


def _check_class_name(name: str) -> str:
    clean = name.strip()
    if not clean:
        raise UploadError(400, "a class has no name; type a name for every class.")
    if len(clean) > _MAX_CLASS_NAME:
        raise UploadError(400, f"class name {clean[:40]!r}... is longer than {_MAX_CLASS_NAME} characters; shorten it.")
    return clean


def _check_sets(items: _Items, what: str, limits: ServeLimits) -> None:
    """The checks shared by image and text requests: classes, support per class, queries, counts."""
    have = {c for c, _ in items.support}
    for name in items.classes:
        if name not in have:
            raise UploadError(400, f"class {name!r} has no support {what}s; add at least one, or remove the class.")
    if len(items.classes) < 2:
        got = f" (got only {items.classes[0]!r})" if items.classes else ""
        raise UploadError(400, f"give support {what}s for at least 2 classes{got}; few-shot classification needs "
                               f"classes to choose between.")
    if not items.queries:
        raise UploadError(400, f"no query {what}s; add at least one {what} to label.")
    total = len(items.support) + len(items.queries)
    if total > limits.max_files:
        raise UploadError(413, f"{total} {what}s in one request, above the limit of {limits.max_files}; send fewer "
                               f"(or restart metakit serve with a larger --max-files).")


def _declare(items: _Items, name: str, declared: set[str], explicit: set[str] | None = None) -> None:
    """Add class ``name`` once; naming it twice explicitly (two class fields, two JSON keys) is a mistake."""
    if explicit is not None:
        if name in explicit:
            raise UploadError(400, f"class {name!r} is named twice; give each class a different name.")
        explicit.add(name)
    if name not in declared:
        declared.add(name)
        items.classes.append(name)


async def read_body(request: Request, limits: ServeLimits) -> bytes:
    """The request body, refused with 413 as soon as it passes the size limit (before any parsing)."""
    too_big = UploadError(413, f"the upload is larger than {limits.max_upload_mb:g} MB; send fewer or smaller files "
                               f"(or restart metakit serve with a larger --max-upload-mb).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes:
            raise too_big
    return bytes(body)


async def read_form(request: Request, body: bytes, limits: ServeLimits, fields: str) -> Any:
    """The multipart form in ``body`` (read by :func:`read_body`); ``fields`` names what to send, for the errors."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        # +1 so that one file too many reaches the caller's own check and message.
        return await Request(request.scope, replay).form(max_files=limits.max_files + 1,
                                                         max_fields=limits.max_files + 100)
    except StarletteHTTPException as exc:
        if "files" in str(exc.detail).lower():
            raise UploadError(413, f"more than {limits.max_files} files in one request; send fewer (or restart "
                                   f"metakit serve with a larger --max-files).") from None
        raise UploadError(400, f"the upload is not valid multipart/form-data ({exc.detail}); send {fields}.") from None


async def _parse_multipart(request: Request, body: bytes, limits: ServeLimits) -> _Items:
    form = await read_form(request, body, limits, "support:<class> and query file fields")
    items = _Items()
    declared: set[str] = set()
    explicit: set[str] = set()
    try:
        for raw_key, value in form.multi_items():
            key = _field_name(raw_key)
            if key == "class":
                if not isinstance(value, str):
                    raise UploadError(400, "field 'class' must be a class name (text), not a file.")
                _declare(items, _check_class_name(value), declared, explicit)
            elif key.startswith(_SUPPORT_PREFIX):
                name = _check_class_name(key[len(_SUPPORT_PREFIX):])
                if not isinstance(value, UploadFile):
                    raise UploadError(400, f"field {key!r} must be an image file; upload it as a file part.")
                _declare(items, name, declared)
                items.support.append((name, (value.filename or f"support image of {name}", await value.read())))
            elif key == "query":
                if not isinstance(value, UploadFile):
                    raise UploadError(400, "field 'query' must be an image file; upload it as a file part.")
                label = value.filename or f"query {len(items.queries) + 1}"
                items.queries.append((label, (label, await value.read())))
            else:
                raise UploadError(400, f"unexpected field {key[:60]!r}; send support:<class> image files, query image "
                                       f"files and optionally class fields.")
    finally:
        await form.close()
    _check_sets(items, "image", limits)
    return items


def _parse_text(body: bytes, limits: ServeLimits) -> _Items:
    shape = 'send {"support": {"<class>": ["sentence", ...], ...}, "query": ["sentence", ...]}'

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.loads would keep the last of two equal keys silently, dropping a class's sentences.
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise UploadError(400, f"key {key[:60]!r} appears twice in a JSON object; give each class a different name.")
            seen[key] = value
        return seen

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=no_repeats)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UploadError(400, f"the request body is not valid UTF-8 JSON; {shape}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("support"), dict) or "query" not in data:
        raise UploadError(400, f"the JSON needs a 'support' object and a 'query' list; {shape}.")
    extra = sorted(set(data) - {"support", "query"})
    if extra:
        raise UploadError(400, f"unexpected key {extra[0]!r} in the JSON; {shape}.")
    items = _Items()
    declared: set[str] = set()
    explicit: set[str] = set()

    def sentence(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise UploadError(400, f"{where} is not a non-empty string; give sentences as strings.")
        if len(value) > limits.max_text_chars:
            raise UploadError(413, f"{where} has {len(value)} characters, above the limit of {limits.max_text_chars}; "
                                   f"shorten it.")
        return value

    for raw_name, texts in data["support"].items():
        name = _check_class_name(raw_name)
        _declare(items, name, declared, explicit)
        if not isinstance(texts, list):
            raise UploadError(400, f"support of class {name!r} must be a list of sentences; {shape}.")
        # Counted before each sentence is checked, so a huge list is refused without walking it.
        if len(items.support) + len(texts) > limits.max_files:
            raise UploadError(413, f"more than {limits.max_files} support sentences in one request; send fewer (or "
                                   f"restart metakit serve with a larger --max-files).")
        items.support.extend((name, sentence(t, f"support sentence {i + 1} of class {name!r}")) for i, t in enumerate(texts))
    queries = data["query"]
    if not isinstance(queries, list):
        raise UploadError(400, f"'query' must be a list of sentences; {shape}.")
    if len(queries) > limits.max_files:
        raise UploadError(413, f"{len(queries)} query sentences, above the limit of {limits.max_files}; send fewer.")
    items.queries = [(q, sentence(q, f"query sentence {i + 1}")) for i, q in enumerate(queries)]
    _check_sets(items, "sentence", limits)
    return items


def check_image(name: str, data: bytes, limits: ServeLimits) -> None:
    """Refuse an uploaded image that is empty, unreadable or over the pixel limit, reading only its header."""
    if not data:
        raise UploadError(400, f"{name} is empty (0 bytes); upload the image file itself.")
    try:
        # Opening reads only the header: the size is known before a single pixel is decoded.
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise UploadError(413, f"{name} has more pixels than {limits.max_megapixels:g} megapixels allow (a possible "
                               f"decompression bomb); upload a smaller image.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(400, f"{name} is not an image this server can read; upload PNG, JPEG, GIF, BMP, TIFF "
                               f"or WebP files.") from None
    if width * height > limits.max_pixels:
        raise UploadError(413, f"{name} is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), above the "
                               f"limit of {limits.max_megapixels:g}; shrink it (or restart metakit serve with a larger "
                               f"--max-megapixels).")


def _decode_image(name: str, data: bytes, model: FewShotModel, limits: ServeLimits) -> torch.Tensor:
    """One uploaded image as the uint8 tensor the run's dataset would hold, after the size checks."""
    from metakit.datasets.folder import preprocess_image

    check_image(name, data, limits)
    try:
        return preprocess_image(data, model.spec.image_options)
    except MetakitError as exc:
        raise UploadError(400, f"{name}: {exc}") from None


@dataclass
class _Server:
    """The model and its lock: ``fit`` changes the model, so one request adapts and predicts at a time."""

    model: FewShotModel
    limits: ServeLimits
    lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, items: _Items) -> dict[str, Any]:
        start = time.perf_counter()
        if self.model.spec.kind == "image":
            support_x: Sequence[Any] = [_decode_image(n, d, self.model, self.limits) for _, (n, d) in items.support]
            query_x: Sequence[Any] = [_decode_image(n, d, self.model, self.limits) for _, (n, d) in items.queries]
        else:
            support_x = [text for _, text in items.support]
            query_x = [text for _, text in items.queries]
        labels = [c for c, _ in items.support]
        with self.lock:
            try:
                self.model.fit(list(support_x), labels)
                outputs = self.model.outputs(list(query_x))
                predictions = self.model.decide(outputs, k=1)
                probs = self.model.probabilities(outputs)
                classes = self.model.classes
            except MetakitError as exc:
                raise UploadError(400, str(exc)) from None
        key = "file" if self.model.spec.kind == "image" else "text"
        rows = []
        for (name, _), pred, p in zip(items.queries, predictions, probs.tolist()):
            rows.append({key: name, "label": pred.label, "probability": pred.probability,
                         "probabilities": [float(v) if math.isfinite(v) else 0.0 for v in p]})
        counts = {c: labels.count(c) for c in classes}
        return {"classes": classes, "support": counts, "predictions": rows,
                "seconds": round(time.perf_counter() - start, 4)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def error_handlers(app: FastAPI, routes: str) -> None:
    """Answer every failure as ``{"error": "<one line>"}``: refused uploads, unknown ``routes``, internal errors."""

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods answer in the same {"error": ...} shape as everything else.
        return _error(exc.status_code, f"{exc.detail}: this server has {routes}.")

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                           f"please report it with the metakit serve output.")


def classification_app(run_dir: str, checkpoint: str, limits: ServeLimits, allowed_hosts: Sequence[str] | None) -> FastAPI:
    """The app of a classification run: :func:`create_app` on the run loaded by :func:`metakit.predict.load`."""
    from metakit.predict import load

    return create_app(load(run_dir, checkpoint=checkpoint), limits=limits, checkpoint=checkpoint, allowed_hosts=allowed_hosts)


def create_app(
    model: FewShotModel,
    limits: ServeLimits | None = None,
    checkpoint: str = "best",
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The web app serving ``model``: the page at ``/``, ``GET /health`` and ``POST /predict``.

    Args:
        model: a loaded run (:func:`metakit.predict.load`) of image or text inputs.
        limits: upload limits (default :class:`~metakit.serve.ServeLimits`).
        checkpoint: which checkpoint ``model`` holds (reported by ``/health``).
        allowed_hosts: accept only requests whose ``Host`` header names one of these (for a
            server bound to 127.0.0.1: stops other web sites from reaching it by DNS rebinding);
            ``None`` accepts any.

    Raises:
        MetakitError: the run takes neither images nor sentences.
    """
    limits = limits or ServeLimits()
    kind = model.spec.kind
    if kind not in ("image", "text"):
        raise MetakitError(
            f"metakit serve labels images or sentences, but the run {model.name} was trained on {model.spec.dataset!r}, "
            f"whose items are prepared tensors; use the Python API (metakit.predict.load) for it."
        )
    config = model.config
    info = {
        "run": config.name if config is not None else str(model.name),
        "run_dir": str(model.name),
        "learner": config.learner.name if config is not None else type(model.learner).__name__,
        "dataset": model.spec.dataset,
        "kind": kind,
        "checkpoint": checkpoint,
        "input_shape": list(model.spec.shape),
        "limits": limits.to_dict(),
    }
    server = _Server(model, limits)
    page = _page_files()
    app = FastAPI(title="metakit serve", summary="Few-shot prediction with a trained metakit run.",
                  docs_url=None, redoc_url=None)
    app.state.info = info
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    error_handlers(app, "GET / (the page), GET /health and POST /predict")

    def static(name: str) -> Callable[[], Awaitable[Response]]:
        async def handler() -> Response:
            return Response(page[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

        return handler

    app.add_api_route("/", static("index.html"), methods=["GET"], include_in_schema=False)
    app.add_api_route("/static/app.js", static("app.js"), methods=["GET"], include_in_schema=False)
    app.add_api_route("/static/style.css", static("style.css"), methods=["GET"], include_in_schema=False)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The run being served and the upload limits."""
        return info

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """Adapt to the uploaded support set and label the queries (see metakit.serve for the format)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "image" and content_type != "multipart/form-data":
            raise UploadError(415, "this run labels images: POST multipart/form-data with support:<class> image files "
                                   "and query image files.")
        if kind == "text" and content_type != "application/json":
            raise UploadError(415, 'this run labels sentences: POST application/json {"support": {"<class>": '
                                   '["sentence", ...]}, "query": ["sentence", ...]}.')
        body = await read_body(request, limits)
        items = await _parse_multipart(request, body, limits) if kind == "image" else _parse_text(body, limits)
        return await run_in_threadpool(server.predict, items)

    return app
