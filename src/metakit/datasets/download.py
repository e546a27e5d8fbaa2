"""Downloading dataset files: a known URL, a known sha256, an atomic rename, a clear offline error.

Every loader that fetches files goes through :func:`fetch`, so a file is either absent or
complete and verified; a user who cannot download places the same file by hand at the path the
error message names.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from metakit.errors import MetakitError
from metakit.utils import atomic_path, sha256_file

TIMEOUT_S = 60
console = Console(stderr=True)


def verify(path: Path, sha256: str | None, *, what: str) -> None:
    """Raise a one-line error if ``path``'s sha256 differs from ``sha256`` (``None`` skips)."""
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256:
        raise MetakitError(
            f"checksum mismatch for {what} at {path}: sha256 {got[:16]}..., expected "
            f"{sha256[:16]}...; delete the file and download it again, or place the official file there."
        )


def fetch(url: str, dest: str | os.PathLike, sha256: str | None, *, what: str) -> Path:
    """Return ``dest``, downloading ``url`` there first if it is missing.

    The download goes to a temporary file beside ``dest`` and is renamed only after its sha256
    matched, so an interrupted or corrupt download never appears at ``dest``. A file already at
    ``dest`` (for example placed by hand) is verified too.
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, sha256, what=what)
        return dest
    if os.environ.get("METAKIT_OFFLINE"):
        raise MetakitError(
            f"{what} is not at {dest} and METAKIT_OFFLINE is set; download {url} and place it there."
        )
    try:
        with atomic_path(dest) as tmp:
            _download(url, tmp, what)
            verify(tmp, sha256, what=f"{what} (downloaded from {url})")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetakitError(
            f"could not download {what} from {url} ({reason}); download it by hand and place it at {dest}."
        ) from None
    return dest


def _download(url: str, target: Path, what: str) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "metakit"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp, open(target, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"downloading {what}", total=total)
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                progress.advance(task, len(chunk))
