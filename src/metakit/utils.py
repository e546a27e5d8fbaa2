"""Small shared helpers: atomic writes, safe checkpoint loading, seeding, cache location, thread count."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metakit.errors import MetakitError

CACHE_ENV = "METAKIT_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) metakit's cache directory, ``$METAKIT_CACHE`` or ``~/.cache/metakit``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "metakit"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the previous version in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; use what a plain open() would
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` log, one a line; a missing file is empty.

    Lines that are not a JSON object are left out: a process killed mid-write leaves its last line
    cut short, and that must not stop a resume or a report.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def keep_jsonl(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a ``.jsonl`` log atomically with only the records ``keep`` accepts (e.g. up to a resume point)."""
    if Path(path).exists():
        write_text(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r)))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture every global RNG state a run depends on (restored by :func:`set_rng_state`).

    Only tensors and plain Python values, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)`` (NumPy arrays would be refused there).
    """
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            # int64: torch has no full uint32 support; every MT19937 word fits exactly.
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])


_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


def load_checkpoint(path: str | os.PathLike, fix: str, keys: Sequence[str] = ()) -> Any:
    """Load a file written by :func:`torch_save` without ever running code from it.

    ``weights_only=True`` lets the file hold only tensors and plain Python data, so a crafted
    pickle cannot execute anything. Any failure (truncated or foreign file, or a pickle that asks
    for functions or classes) becomes one :class:`~metakit.errors.MetakitError` line naming the
    file and ending with ``fix`` (e.g. ``"re-run training"``). With ``keys``, the content must be a
    dict holding them.
    """
    path = Path(path)
    if not path.is_file():
        raise MetakitError(f"checkpoint {path} not found; {fix}.")
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing them; the error says it all.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every failure mode of a bad file: one line, never a traceback
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused:
            raise MetakitError(
                f"checkpoint {path} was refused: loading it would run code ({refused.group(1).rstrip('.')}), which no "
                f"metakit checkpoint does, so it was not written by metakit or was tampered with; {fix}."
            ) from None
        raise MetakitError(f"checkpoint {path} is corrupt or not a metakit checkpoint ({type(exc).__name__}); {fix}.") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise MetakitError(f"checkpoint {path} is not a metakit checkpoint (no {missing[0]!r} entry); {fix}.")
    return obj


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None`` keeps torch's default); return the count in use.

    Raises:
        MetakitError: ``threads`` is below 1 (configs reject that first, naming their key).
    """
    if threads is not None:
        if int(threads) < 1:
            raise MetakitError(f"threads must be >= 1, or null for torch's default; got {threads}.")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The torch device a config's ``device`` names: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.

    ``auto`` is CUDA when available, else the CPU. A device this machine lacks fails here, in one
    line, rather than as torch's assertion deep inside the first ``.to(device)``.

    Raises:
        MetakitError: an unknown device string, or a device that is not available.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    fix = f"use {key}=cpu, or {key}=auto to take a GPU only when there is one"
    match = re.fullmatch(r"cuda(?::([0-9]+))?", text)
    if match:
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "torch sees no GPU"
            raise MetakitError(f"{key}={name} but no CUDA device is available ({why}); {fix}.")
        index, count = int(match.group(1) or 0), torch.cuda.device_count()
        if index >= count:
            raise MetakitError(f"{key}={name} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); {fix}.")
        return torch.device(text)
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MetakitError(f"{key}=mps but no Apple MPS device is available; {fix}.")
        return torch.device("mps")
    raise MetakitError(f"unknown {key} {name!r}; use cpu, cuda, cuda:N, mps or auto.")
