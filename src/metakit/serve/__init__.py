"""``metakit serve``: a web page (and a JSON API) that adapts a trained run to your classes.

The page lets you name a few classes, drop a few support images (or type support sentences, for a
text run) under each, drop query items, and shows each query's predicted label with a bar per
class. Programs use the same endpoints:

* ``GET /health``: the run's name, learner, dataset, kind of input (``image``/``text``), checkpoint
  and the upload limits.
* ``POST /predict``: for an image run, ``multipart/form-data`` with one ``support:<class>`` file
  part per support image and one ``query`` file part per query image (``class`` text parts may
  declare the classes in order, so a class left without images is reported, not silently
  dropped)::

      curl -F support:cat=@cat1.jpg -F support:cat=@cat2.jpg -F support:dog=@dog1.jpg \\
           -F query=@unknown.jpg http://127.0.0.1:8000/predict

  For a text run, JSON: ``{"support": {"<class>": ["sentence", ...], ...}, "query": ["...", ...]}``.
  The answer is JSON: ``classes`` (in support order) and, per query, its ``label``, ``probability``
  and ``probabilities`` (aligned with ``classes``). Bad uploads get a 4xx status and
  ``{"error": "<one line>"}``.

Predictions come from :mod:`metakit.predict` (``FewShotModel.fit`` then its ``outputs``,
``decide`` and ``probabilities``), so a query gets the label ``model.predict`` gives it. Uploads
are bounded before anything is decoded: the request's total size, the number of files, and each
image's pixel count, read from its header (decompression bombs are refused, never decoded).

The web server needs the ``serve`` extra (FastAPI, Uvicorn, python-multipart); this module imports
none of it, so ``metakit serve`` without the extra fails in one line.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from metakit.errors import MetakitError
from metakit.serve.limits import ServeLimits

__all__ = ["LOCAL_HOSTS", "SERVE_EXTRA_HINT", "ServeLimits", "bind_socket", "is_local_host", "require_serve_extra", "serve"]

SERVE_EXTRA_HINT = "metakit serve needs the serve extra: pip install 'metakit[serve]'"

#: Host names that only this machine can reach (the Host header the page accepts when bound to one).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def require_serve_extra() -> None:
    """Fail in one line unless FastAPI, Uvicorn and python-multipart can be imported."""
    import importlib

    for module in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MetakitError(SERVE_EXTRA_HINT) from None
    # python-multipart installs as `python_multipart` (and, for older code, `multipart`).
    for module in ("python_multipart", "multipart"):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue
    raise MetakitError(SERVE_EXTRA_HINT)


def is_local_host(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port), ready for the server to listen on.

    Binding here, before the model is loaded, makes a port that is taken fail at once in one line.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MetakitError(f"--port must be an integer from 0 to 65535 (0: any free port), got {port!r}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MetakitError(f"--host {host} is not an address of this machine ({exc.strerror}); use 127.0.0.1.") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # A server restarted right away may find its old port in TIME_WAIT; reuse is safe for listening.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise MetakitError(f"port {port} on {host} is already in use; pick another with --port (0: any free port).") from None
        raise MetakitError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host or --port.") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str = "best",
    limits: ServeLimits | None = None,
    announce: Any = print,
    build: Any = None,
) -> int:
    """Serve the prediction page and API for ``run_dir`` until interrupted; returns the exit status.

    Args:
        run_dir: a directory written by ``metakit train`` (an image or text classification run).
        host: the address to listen on; anything but a loopback address gets a warning, as the
            page has no authentication.
        port: the TCP port (0: any free port; the address is printed).
        checkpoint: ``best`` or ``last``.
        limits: upload limits (:class:`ServeLimits`).
        announce: called with each line to show the user (the URL, the warning).
        build: ``f(run_dir, checkpoint, limits, allowed_hosts) -> FastAPI``, the app of a domain's
            run (its plugin's ``serve_run`` hook passes one); default: a classification run's,
            :func:`metakit.serve.app.create_app` on :func:`metakit.predict.load`.

    Raises:
        MetakitError: the serve extra is missing, the port is taken, the run cannot be loaded or
            does not take images or sentences.
    """
    require_serve_extra()
    limits = limits or ServeLimits()
    if checkpoint not in ("best", "last"):
        raise MetakitError(f"--checkpoint must be 'best' or 'last', got {checkpoint!r}.")
    if not Path(run_dir).is_dir():
        raise MetakitError(f"run directory {run_dir} does not exist; pass the --out of a metakit train run.")
    import uvicorn
    from PIL import Image

    from metakit.serve.app import classification_app

    local = is_local_host(host)
    if not local:
        announce(f"warning: listening on {host}, so other machines can reach this page and API; it has no "
                 f"authentication, so bind to 127.0.0.1 unless the network is trusted.")
    sock = bind_socket(host, port)
    try:
        # The Host check stops other web sites from reaching a local server by DNS rebinding. Starlette's
        # check cannot parse bracketed IPv6 hosts ([::1]:8000), so an IPv6 socket goes without it.
        checked = local and sock.family == socket.AF_INET
        app = (build or classification_app)(run_dir, checkpoint, limits, list(LOCAL_HOSTS) if checked else None)
        # Pillow's own guard then agrees with ours: an image past it raises instead of warning.
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        info = app.state.info
        announce(f"metakit serve: {info['run']} ({info['learner']} on {info['dataset']}, {info['kind']} inputs, "
                 f"{checkpoint} checkpoint) at {_url(sock)} - Ctrl+C to stop")
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            # Uvicorn re-raises a Ctrl+C that arrives before or after its own handler is in place.
            pass
        # Ctrl+C during serving ends uvicorn's run normally: either way, stopping is the normal end.
        announce("metakit serve: stopped")
    finally:
        sock.close()
    return 0
