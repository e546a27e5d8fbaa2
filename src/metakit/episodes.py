"""Episodes: N-way K-shot tasks with a support set and a query set.

An :class:`EpisodeSampler` draws classification episodes from a :class:`ClassDataset` split;
anything with ``task_type`` and ``sample(generator)`` (a :class:`TaskSource`, e.g. the sinusoid
task distribution) is used the same way. Meta-batches stack episodes as ``[tasks, N*K, ...]``
tensors (Torchmeta's layout). :class:`FixedEpisodes` are the validation/test episodes: each is
drawn from its own seed, so the same seed gives the same episodes for every learner and run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError

#: ``transform(images, generator) -> images`` on float images ``[n, C, H, W]``.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Episode:
    """One task, or a meta-batch of tasks when the tensors have a leading ``[tasks]`` dimension.

    Support and query items are ordered class by class; classification labels are remapped to
    ``0..ways-1``. ``classes`` holds each label's class index within the split (``None`` for
    regression), which pretraining-style learners use as global labels.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    queries: int
    classes: torch.Tensor | None = None
    batched: bool = False

    @property
    def num_tasks(self) -> int:
        """Number of tasks (1 for a single episode)."""
        return self.support_x.shape[0] if self.batched else 1

    def __getitem__(self, i: int) -> Episode:
        """The ``i``-th task of a meta-batch."""
        if not self.batched:
            raise IndexError("a single episode has no task dimension")
        return replace(
            self,
            support_x=self.support_x[i],
            support_y=self.support_y[i],
            query_x=self.query_x[i],
            query_y=self.query_y[i],
            classes=None if self.classes is None else self.classes[i],
            batched=False,
        )

    def tasks(self) -> Iterator[Episode]:
        """Iterate over the tasks of a meta-batch (or yield the single episode)."""
        if not self.batched:
            yield self
            return
        for i in range(self.num_tasks):
            yield self[i]

    def to(self, device: torch.device | str) -> Episode:
        """Move every tensor to ``device``."""
        return replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            classes=None if self.classes is None else self.classes.to(device),
        )


def collate(episodes: Sequence[Episode]) -> Episode:
    """Stack single episodes of the same shape into a meta-batch ``[tasks, N*K, ...]``."""
    first = episodes[0]
    return Episode(
        support_x=torch.stack([e.support_x for e in episodes]),
        support_y=torch.stack([e.support_y for e in episodes]),
        query_x=torch.stack([e.query_x for e in episodes]),
        query_y=torch.stack([e.query_y for e in episodes]),
        ways=first.ways,
        shots=first.shots,
        queries=first.queries,
        classes=None if first.classes is None else torch.stack([e.classes for e in episodes]),
        batched=True,
    )


def as_batch(episode: Episode) -> Episode:
    """A meta-batch view of ``episode`` (a single episode becomes a batch of one task)."""
    return episode if episode.batched else collate([episode])


@runtime_checkable
class TaskSource(Protocol):
    """Anything that draws episodes: ``task_type`` plus ``sample(generator)``."""

    task_type: str
    ways: int
    shots: int
    queries: int

    def sample(self, generator: torch.Generator) -> Episode:
        """Draw one episode using only ``generator`` for randomness."""
        ...


class EpisodeSampler:
    """N-way K-shot Q-query classification episodes from one class split.

    Args:
        dataset: the split's classes (e.g. ``load_splits(...)["train"]``).
        ways: classes per episode (N).
        shots: support items per class (K).
        queries: query items per class (Q).
        transform: optional augmentation applied to support and query images.

    Impossible specs fail here, at construction, with the numbers that do not fit.
    """

    task_type = "classification"

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        transform: Transform | None = None,
    ) -> None:
        for label, value, low in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise MetakitError(f"{label} must be an integer >= {low}, got {value!r}.")
        if ways > dataset.num_classes:
            raise MetakitError(
                f"impossible episode spec: {ways}-way needs {ways} classes but split "
                f"{dataset.name!r} has only {dataset.num_classes}; lower ways or use a larger split."
            )
        sizes = dataset.class_sizes()
        smallest = min(sizes)
        if shots + queries > smallest:
            raise MetakitError(
                f"impossible episode spec: shots + queries = {shots} + {queries} = {shots + queries} "
                f"but the smallest class of {dataset.name!r} has {smallest} items; lower shots or queries."
            )
        self.dataset = dataset
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.transform = transform

    def sample(self, generator: torch.Generator) -> Episode:
        """Draw one episode; the result depends only on ``generator``'s state."""
        n, k, q = self.ways, self.shots, self.queries
        classes = torch.randperm(self.dataset.num_classes, generator=generator)[:n]
        picks = []
        for c in classes.tolist():
            items = self.dataset.items_of(c)
            picks.append(items[torch.randperm(len(items), generator=generator)[: k + q]])
        idx = torch.stack(picks)  # [n, k+q]
        support_idx, query_idx = idx[:, :k].reshape(-1), idx[:, k:].reshape(-1)
        support_x = _as_float(self.dataset.images[support_idx])
        query_x = _as_float(self.dataset.images[query_idx])
        if self.transform is not None:
            support_x = self.transform(support_x, generator)
            query_x = self.transform(query_x, generator)
        labels = torch.arange(n)
        return Episode(
            support_x=support_x,
            support_y=labels.repeat_interleave(k),
            query_x=query_x,
            query_y=labels.repeat_interleave(q),
            ways=n,
            shots=k,
            queries=q,
            classes=classes,
        )


def _as_float(items: torch.Tensor) -> torch.Tensor:
    # uint8 images become [0, 1]; feature vectors (e.g. sentence embeddings) keep their values.
    return items.float().div_(255) if items.dtype == torch.uint8 else items.float()


def sample_batch(source: TaskSource, tasks: int, generator: torch.Generator) -> Episode:
    """Draw a meta-batch of ``tasks`` episodes from ``source``."""
    return collate([source.sample(generator) for _ in range(tasks)])


def episode_seed(seed: int, index: int) -> int:
    """The seed of fixed episode ``index`` of the set identified by ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class FixedEpisodes(Sequence[Episode]):
    """A fixed, seeded set of episodes: identical across learners and runs for the same seed.

    Episode ``i`` is drawn from its own generator seeded by ``(seed, i)``, so sets can be read in
    any order or in chunks and a longer set extends a shorter one.
    """

    def __init__(self, source: TaskSource, count: int, seed: int) -> None:
        if count < 1:
            raise MetakitError(f"the number of fixed episodes must be >= 1, got {count}.")
        self.source, self.count, self.seed = source, int(count), int(seed)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        if not 0 <= index < self.count:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(episode_seed(self.seed, index))
        return self.source.sample(gen)

    def batches(self, size: int) -> Iterator[Episode]:
        """Yield the episodes in order as meta-batches of up to ``size`` tasks."""
        for start in range(0, self.count, size):
            yield collate([self[i] for i in range(start, min(start + size, self.count))])


def random_shift(pixels: int = 2) -> Transform:
    """An augmentation hook: translate each image by up to ``pixels`` (zero padding)."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        padded = torch.nn.functional.pad(images, (pixels,) * 4)
        shifts = torch.randint(0, 2 * pixels + 1, (n, 2), generator=generator).tolist()
        return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)])

    return apply
