"""Your own arrays as a few-shot dataset (``dataset.name: arrays``): features, tabular data or images.

One ``.npz`` file (``np.savez(path, x=..., y=...)``) holds:

* ``x``: the items. Floating-point (or other numeric) arrays ``[N, ...]`` are feature vectors used
  as they are (use a vector backbone such as ``mlp`` or ``projection``); uint8 ``[N, C, H, W]``
  or ``[N, H, W]`` are images (``conv4`` and friends), channels-last ``[N, H, W, C]`` is transposed.
* ``y``: ``N`` labels: strings or integers.
* ``class_names`` (optional): names in class-index order, when ``y`` holds integers ``0..K-1``
  (or the class order, when ``y`` holds names).
* ``groups`` (optional): ``N`` group labels, one group per class, for ``split: group``.

The file is read with ``allow_pickle=False``: it can hold numbers and strings only, never code.
Save string labels as a string array (``np.array(labels, dtype=str)``), not as Python objects.
In Python, :meth:`ClassDataset.from_tensors <metakit.datasets.base.ClassDataset.from_tensors>`
does the same from arrays or tensors in memory.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError

__all__ = ["ARRAY_KEYS", "arrays_status", "load_arrays"]

#: The arrays an ``.npz`` may hold; ``x`` and ``y`` are required.
ARRAY_KEYS = ("x", "y", "class_names", "groups")

_SAVE_HINT = "save it with np.savez(path, x=items, y=labels)"


def load_arrays(path: str | os.PathLike | None = None) -> ClassDataset:
    """Load ``x``, ``y`` and optionally ``class_names`` and ``groups`` from an ``.npz`` (see the module docs).

    Args:
        path: the ``.npz`` file (``dataset.path`` in configs).

    Returns:
        A :class:`ClassDataset` named ``"arrays"``: images (uint8) or float32 features, with the
        class names of ``class_names`` or of the labels themselves.

    Raises:
        MetakitError: a missing or unreadable file, a missing array, pickled (object) arrays, or
            shapes and labels that do not fit; one line naming the file and the fix.
    """
    if path is None:
        raise MetakitError(f"dataset arrays needs path: set dataset.path to your .npz file ({_SAVE_HINT}).")
    file = Path(path).expanduser()
    if not file.is_file():
        raise MetakitError(f"arrays file {file} does not exist; set dataset.path to your .npz file.")
    try:
        with np.load(file, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise MetakitError(f"{file} holds a single array, not an .npz with x and y; {_SAVE_HINT}.")
            present = list(z.files)
            missing = [k for k in ("x", "y") if k not in present]
            if missing:
                raise MetakitError(
                    f"{file} has no array {missing[0]!r} (it holds {', '.join(present) or 'nothing'}); {_SAVE_HINT}."
                )
            arrays = {k: _read(z, k, file) for k in ARRAY_KEYS if k in present}
    except MetakitError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            raise MetakitError(
                f"{file} is not an .npz file (NumPy would read it as a pickle, which metakit never loads: it could run "
                f"code); {_SAVE_HINT}."
            ) from None
        raise MetakitError(f"{file} is not a readable .npz file ({type(exc).__name__}); {_SAVE_HINT}.") from None
    names = arrays.get("class_names")
    if names is not None and names.ndim != 1:
        raise MetakitError(f"{file}: class_names must be a 1-D array of names, got shape {list(names.shape)}.")
    try:
        return ClassDataset.from_tensors(
            arrays["x"], arrays["y"], class_names=None if names is None else names.tolist(),
            groups=arrays.get("groups"), name="arrays",
        )
    except MetakitError as exc:
        raise MetakitError(f"{file}: {exc}") from None


def _read(z: np.lib.npyio.NpzFile, key: str, file: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise MetakitError(
                f"{file}: {key!r} is an array of Python objects, which would need unpickling; save it as numbers "
                f"or strings (e.g. np.array(labels, dtype=str))."
            ) from None
        raise


def arrays_status() -> str:
    """One line for ``metakit datasets``."""
    return "your arrays: set dataset.path to an .npz with x and y (np.savez); nothing is cached"
