"""Embedding cache for frozen image encoders: every image goes through the encoder once.

A frozen pretrained encoder (``backbone: pretrained``, or ``timm`` / ``torchvision`` /
``open_clip`` with ``freeze: true``) maps an image to the same vector every time, so running it
inside every episode wastes nearly all of a run's time: 1,000 test episodes of 5-way 1-shot with
15 queries per class push 80,000 images through it. Here, as the text datasets do with sentence
embeddings (:mod:`metakit.text.embeddings`), each distinct image is embedded once and the run
works on vectors.

**Design (the least invasive one).** :func:`metakit.experiment.build_experiment` builds the
backbone as usual; when the backbone says ``cache_features`` (on by default for a frozen
encoder, ``backbone.cache: false`` turns it off), it hands the class splits to
:meth:`FeatureCache.featurize`, which returns the same :class:`~metakit.datasets.ClassDataset`
splits (same classes, labels, groups, item order) holding float32 feature vectors instead of
images. The learner is then built on the backbone's trainable ``head`` alone (a
:func:`~metakit.backbones.projection`, or the identity when there is none), with the task's
input shape set to the feature size, exactly as text runs put ``identity`` or ``projection`` on
sentence embeddings. Episodes, training, evaluation, ``compare`` and checkpoints need no
change: they already handle feature-vector datasets. A run rebuilt for ``metakit evaluate``
finds its vectors in the cache, so evaluating 1,000 episodes never runs the encoder (the tests
count its calls). Cross-domain targets go through the same cache
(:meth:`~metakit.experiment.Experiment.featurize`), and ``metakit predict`` re-attaches the
encoder in front of the head so it still takes image files.

**Keys.** Vectors are stored under ``cache_dir("image-embeddings", <model>, <encoder key>)``,
where the encoder key is a sha256 of :meth:`~metakit.pretrained.PretrainedBackbone.cache_id`:
library and model name, a sha256 over the encoder's weights, input size, interpolation,
normalisation and torch version. Inside that folder every image is keyed by a BLAKE2b digest of
its own bytes, shape and dtype, so a vector is reused by any split, dataset or run that holds
the same image (another split seed, a cross-domain target). Each embedding pass writes one new
shard file per 4,096 images (``keys`` and ``vectors`` arrays, NumPy ``.npz``, no pickle) to a
temporary name and renames it, so an interrupted pass leaves nothing half-written and keeps the
shards it finished; an unreadable shard is ignored and its images embedded again. Only the shards'
small key arrays are read up front; a shard's vectors are read when one of its images is needed,
so a run on one dataset does not load the vectors of another that shares the encoder.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError
from metakit.utils import atomic_path, cache_dir

__all__ = ["EmbedStats", "FeatureCache", "image_keys"]

#: Images per forward pass when embedding (16 measured fastest on a CPU: 92-112 images/s at 128 px, 1 thread, vs 53-55 at 64).
BATCH_SIZE = 16
#: Images per shard file: an interrupted embedding pass keeps the shards it finished.
SHARD_SIZE = 4096
_KEY_BYTES = 16


@dataclass
class EmbedStats:
    """What the cache did for one run: images looked up, images embedded now, time spent embedding."""

    images: int = 0
    embedded: int = 0
    seconds: float = 0.0
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def images_per_second(self) -> float | None:
        """Embedding rate of this run's encoder passes (``None`` when everything came from the cache)."""
        return self.embedded / self.seconds if self.embedded and self.seconds > 0 else None

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain data for JSON."""
        return {
            "images": self.images, "embedded": self.embedded, "embed_seconds": round(self.seconds, 3),
            "images_per_second": None if self.images_per_second is None else round(self.images_per_second, 2),
            "threads": self.threads,
        }


def image_keys(images: torch.Tensor) -> np.ndarray:
    """One 16-byte BLAKE2b digest per item of ``images`` ``[n, ...]`` over its bytes, shape and dtype."""
    arr = images.detach().cpu().contiguous().numpy()
    prefix = f"{arr.dtype.str}|{'x'.join(map(str, arr.shape[1:]))}|".encode()
    out = np.empty((len(arr), _KEY_BYTES), dtype=np.uint8)
    for i in range(len(arr)):
        h = hashlib.blake2b(prefix, digest_size=_KEY_BYTES)
        h.update(arr[i].tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


class FeatureCache:
    """Embeds images with a frozen encoder once and serves their vectors from disk afterwards.

    Args:
        backbone: a frozen :class:`~metakit.pretrained.PretrainedBackbone` (or anything with
            ``encode(images) -> [n, d]``, ``cache_id()``, ``model_name``, ``feature_dim`` and an
            optional trainable ``head``).
        batch_size: images per forward pass.
        progress: show a progress bar while embedding (only when stderr is a terminal).
    """

    def __init__(self, backbone: nn.Module, batch_size: int = BATCH_SIZE, progress: bool = True) -> None:
        if getattr(backbone, "frozen", False) is not True:
            raise MetakitError("the feature cache needs a frozen encoder (backbone freeze: true).")
        self.backbone = backbone
        self.dim = int(backbone.feature_dim)
        self.batch_size = int(batch_size)
        self.progress = progress
        key = hashlib.sha256(backbone.cache_id().encode()).hexdigest()[:24]
        self.folder = cache_dir("image-embeddings", _slug(backbone.model_name), key)
        self.stats = EmbedStats()
        #: The image shape of the data this cache was built for (what ``metakit predict`` decodes to).
        self.image_shape: tuple[int, ...] | None = None
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._rows: dict[Path, int] = {}
        self._loaded: dict[Path, np.ndarray | None] = {}

    # -- the store --------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path, name: str) -> np.ndarray | None:
        """One array of a shard (an ``.npz`` reads members on demand), or ``None`` if unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return data[name]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def _keys_index(self) -> dict[bytes, tuple[Path, int]]:
        """Where each cached image's vector is: ``key -> (shard, row)``, from the shards' small key arrays only."""
        if self._index is None:
            self._index, self._rows = {}, {}
            for path in sorted(self.folder.glob("shard-*.npz")):
                keys = self._read(path, "keys")
                if keys is None or keys.ndim != 2 or keys.shape[1] != _KEY_BYTES or keys.dtype != np.uint8:
                    continue  # unreadable shard: its images are embedded again
                self._rows[path] = len(keys)
                for row, k in enumerate(keys):
                    self._index[k.tobytes()] = (path, row)
        return self._index

    def _vectors(self, path: Path) -> np.ndarray | None:
        """A shard's vectors, read once and only when one of its images is asked for (``None`` if bad)."""
        if path not in self._loaded:
            vectors = self._read(path, "vectors")
            ok = (
                vectors is not None and vectors.dtype == np.float32 and vectors.shape == (self._rows.get(path), self.dim)
                and bool(np.isfinite(vectors).all())
            )
            self._loaded[path] = vectors if ok else None
        return self._loaded[path]

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:20]
        path = self.folder / f"shard-{name}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors)  # a file object: np.savez would append ".npz" to the name
        return path

    # -- embedding --------------------------------------------------------------------------

    def _encode(self, images: torch.Tensor, what: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, vectors)`` for chunks of ``images``, so a long pass is stored as it goes."""
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        was = self.backbone.training
        self.backbone.eval()
        start_time = time.perf_counter()
        with Progress(console=console, transient=True, disable=not (self.progress and console.is_terminal)) as bar:
            task = bar.add_task(f"embedding {what} with {self.backbone.model_name} ({len(images)} images)", total=len(images))
            for start in range(0, len(images), SHARD_SIZE):
                parts = []
                with torch.inference_mode():
                    for i in range(start, min(start + SHARD_SIZE, len(images)), self.batch_size):
                        x = images[i : min(i + self.batch_size, start + SHARD_SIZE)]
                        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
                        parts.append(self.backbone.encode(x).float().cpu().numpy())
                        bar.advance(task, len(x))
                out = np.concatenate(parts).astype(np.float32, copy=False)
                if out.shape[1:] != (self.dim,) or not np.isfinite(out).all():
                    raise MetakitError(
                        f"the encoder {self.backbone.model_name} produced NaN, infinite or misshaped features for {what}."
                    )
                yield start, out
        seconds = time.perf_counter() - start_time
        self.backbone.train(was)
        self.stats.embedded += len(images)
        self.stats.seconds += seconds
        self.stats.threads = torch.get_num_threads()
        if self.progress and console.is_terminal:
            console.print(
                f"embedded {len(images):,} images of {what} with {self.backbone.model_name} in {seconds:.1f} s "
                f"({len(images) / max(seconds, 1e-9):.1f} images/s, {torch.get_num_threads()} threads); cached in {self.folder}"
            )

    def embed(self, images: torch.Tensor, what: str = "images") -> torch.Tensor:
        """Features ``float32 [n, d]`` of ``images`` ``[n, C, H, W]`` (uint8 or floats in [0, 1]).

        Images already in the cache are looked up; the others are embedded and stored as new
        shards of up to ``SHARD_SIZE`` images, each written as soon as it is computed.
        """
        if images.dim() != 4:
            raise MetakitError(f"{what}: the feature cache embeds images [n, C, H, W], got shape {list(images.shape)}.")
        keys = image_keys(images)
        index = self._keys_index()
        found: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            kb = k.tobytes()
            if kb in found or kb in missing:
                continue
            where = index.get(kb)
            vectors = None if where is None else self._vectors(where[0])
            if vectors is None:
                missing[kb] = i
            else:
                found[kb] = vectors[where[1]]
        if missing:
            rows = list(missing.values())
            new_keys = list(missing)
            for start, vectors in self._encode(images[torch.as_tensor(rows, dtype=torch.long)], what):
                chunk = new_keys[start : start + len(vectors)]
                path = self._write_shard(keys[rows[start : start + len(vectors)]], vectors)
                self._rows[path], self._loaded[path] = len(vectors), vectors
                for row, (kb, v) in enumerate(zip(chunk, vectors)):
                    found[kb], index[kb] = v, (path, row)
        self.stats.images += len(images)
        if not len(keys):
            return torch.zeros((0, self.dim), dtype=torch.float32)
        return torch.from_numpy(np.stack([found[k.tobytes()] for k in keys]))

    def featurize(self, dataset: ClassDataset) -> ClassDataset:
        """``dataset`` with each image replaced by its feature vector (classes, labels, groups unchanged)."""
        if dataset.inputs.dim() != 4:
            raise MetakitError(
                f"dataset {dataset.name!r} holds feature vectors, not images; a pretrained image backbone needs images."
            )
        if self.image_shape is None:
            self.image_shape = tuple(dataset.inputs.shape[1:])
        return ClassDataset(
            name=dataset.name,
            inputs=self.embed(dataset.inputs, dataset.name),
            labels=dataset.labels,
            class_names=list(dataset.class_names),
            class_groups=None if dataset.class_groups is None else list(dataset.class_groups),
        )

    # -- what the learner gets ----------------------------------------------------------------

    def head_backbone(self) -> nn.Module:
        """The learner's backbone on cached vectors: the encoder's trainable ``head``, or the identity."""
        head = getattr(self.backbone, "head", None)
        module = head if head is not None else nn.Flatten()
        with torch.no_grad():
            was = module.training
            module.eval()
            module.out_dim = int(module(torch.zeros(2, self.dim)).shape[-1])
            module.train(was)
        return module

    def attach_encoder(self, learner: nn.Module) -> None:
        """Put the encoder back in front of ``learner``'s head so it takes images (for ``metakit predict``).

        The head module is shared with the backbone, so the learner's trained head weights are kept.
        """
        learner.backbone = self.backbone
