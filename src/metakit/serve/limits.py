"""What one ``POST /predict`` of :mod:`metakit.serve` may carry.

Its own module so that the web app (:mod:`metakit.serve.app`) and the command that starts it
(:mod:`metakit.serve`) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metakit.errors import MetakitError

__all__ = ["ServeLimits"]


@dataclass(frozen=True)
class ServeLimits:
    """What one ``POST /predict`` may carry.

    Attributes:
        max_upload_mb: the request body's total size, in MB (10^6 bytes).
        max_files: support plus query items in one request (files, or sentences for a text run).
        max_megapixels: pixels of one image (width x height, from its header, before decoding), in
            millions: larger images are refused unread, so a small compressed file cannot expand
            into gigabytes in memory.
        max_text_chars: characters of one sentence (text runs).
    """

    max_upload_mb: float = 20.0
    max_files: int = 200
    max_megapixels: float = 40.0
    max_text_chars: int = 2000

    def __post_init__(self) -> None:
        for name, flag in (("max_upload_mb", "--max-upload-mb"), ("max_megapixels", "--max-megapixels")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise MetakitError(f"{flag} must be a number > 0 (and below 1000000), got {value!r}.")
        for name, flag in (("max_files", "--max-files"), ("max_text_chars", "max_text_chars")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise MetakitError(f"{flag} must be an integer >= 2 (a support item and a query), got {value!r}.")

    @property
    def max_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_pixels(self) -> int:
        """``max_megapixels`` in pixels."""
        return int(self.max_megapixels * 1_000_000)

    def to_dict(self) -> dict[str, Any]:
        """The limits as ``/health`` reports them."""
        return {"max_upload_mb": self.max_upload_mb, "max_files": self.max_files,
                "max_megapixels": self.max_megapixels, "max_text_chars": self.max_text_chars}
