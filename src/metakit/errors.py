"""The one exception type users see.

Every problem caused by the user's input (names, specs, files, configs) raises
:class:`MetakitError` with a single line saying what is wrong and how to fix it; the CLI prints
that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MetakitError(Exception):
    """A user-facing error: the message is one line naming the problem and the fix."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> MetakitError:
    """Build the error for an unknown ``kind`` called ``name``, suggesting the closest valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return MetakitError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")
