"""Episodes: N-way K-shot tasks with a support set and a query set.

An :class:`EpisodeSampler` draws classification episodes from a :class:`ClassDataset` split;
anything with ``task_type`` and ``sample(generator)`` (a :class:`TaskSource`, e.g. the sinusoid
task distribution) is used the same way; a :class:`MetaDatasetSampler` draws Meta-Dataset's
variable-way variable-shot episodes. An :class:`Episode` is one task; a :class:`MetaBatch`
stacks episodes as ``[tasks, N*K, ...]`` tensors (Torchmeta's layout). :class:`FixedEpisodes` are the validation/test episodes: each is
drawn from its own seed, so the same seed gives the same episodes for every learner and run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import torch

from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError

#: ``transform(images, generator) -> images`` on float images ``[n, C, H, W]``.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class _Tasks:
    """The fields an :class:`Episode` and a :class:`MetaBatch` share; see those classes."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    queries: int
    classes: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Self:
        """Move every tensor to ``device``."""
        return replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            classes=None if self.classes is None else self.classes.to(device),
        )


@dataclass
class Episode(_Tasks):
    """One task: a support set ``[N·K, ...]`` and a query set ``[N·Q, ...]``.

    Support and query items are ordered class by class; classification labels are remapped to
    ``0..ways-1``. ``shots`` is 0 when classes have different numbers of support items
    (:class:`MetaDatasetSampler`). ``classes`` holds each label's class index within the split
    (``None`` for regression), which pretraining-style learners use as global labels. Per-task
    code (adaptation, evaluation, continual learning) takes an ``Episode``; a learner's
    ``meta_step`` takes a :class:`MetaBatch`.
    """

    #: An episode has no task dimension (:attr:`MetaBatch.batched` is ``True``).
    batched: ClassVar[bool] = False

    @property
    def num_tasks(self) -> int:
        """1: an episode is one task."""
        return 1

    def tasks(self) -> Iterator[Episode]:
        """Yield this episode: code that walks a meta-batch's tasks takes a single episode too."""
        yield self


@dataclass
class MetaBatch(_Tasks):
    """A meta-batch: the tasks of one meta-step stacked as ``[tasks, N·K, ...]`` tensors (Torchmeta's layout).

    Every task has the same ``ways``, ``shots`` and ``queries``; ``classes`` is ``[tasks, ways]``.
    Made by :func:`collate` (or :func:`sample_batch`); ``batch[i]`` is task ``i`` as an :class:`Episode`.
    """

    #: The tensors have a leading ``[tasks]`` dimension.
    batched: ClassVar[bool] = True

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return self.support_x.shape[0]

    def __getitem__(self, i: int) -> Episode:
        """The ``i``-th task."""
        return Episode(
            support_x=self.support_x[i],
            support_y=self.support_y[i],
            query_x=self.query_x[i],
            query_y=self.query_y[i],
            ways=self.ways,
            shots=self.shots,
            queries=self.queries,
            classes=None if self.classes is None else self.classes[i],
        )

    def tasks(self) -> Iterator[Episode]:
        """Iterate over the tasks."""
        for i in range(self.num_tasks):
            yield self[i]


def collate(episodes: Sequence[Episode]) -> MetaBatch:
    """Stack episodes of the same shape into a meta-batch ``[tasks, N*K, ...]``."""
    first = episodes[0]
    return MetaBatch(
        support_x=torch.stack([e.support_x for e in episodes]),
        support_y=torch.stack([e.support_y for e in episodes]),
        query_x=torch.stack([e.query_x for e in episodes]),
        query_y=torch.stack([e.query_y for e in episodes]),
        ways=first.ways,
        shots=first.shots,
        queries=first.queries,
        classes=None if first.classes is None else torch.stack([e.classes for e in episodes]),
    )


def as_batch(tasks: Episode | MetaBatch) -> MetaBatch:
    """``tasks`` as a meta-batch (a single episode becomes a batch of one task)."""
    return tasks if isinstance(tasks, MetaBatch) else collate([tasks])


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
            # Name the classes: with your own data the fix is often to add items to a few of them.
            short = sorted((c for c, n in enumerate(sizes) if n < shots + queries), key=lambda c: (sizes[c], c))
            named = ", ".join(f"{dataset.class_names[c]!r} ({sizes[c]})" for c in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise MetakitError(
                f"impossible episode spec: shots + queries = {shots} + {queries} = {shots + queries} "
                f"but the smallest class of {dataset.name!r} has {smallest} items; {len(short)} class(es) have fewer: "
                f"{named}{more}; lower shots or queries, or give those classes more items (or remove them)."
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
        return _gather(self.dataset, self.transform, generator, classes, support_idx, query_idx, k, q)


def _as_float(items: torch.Tensor) -> torch.Tensor:
    # uint8 images become [0, 1]; feature vectors (e.g. sentence embeddings) keep their values.
    return items.float().div_(255) if items.dtype == torch.uint8 else items.float()


def _gather(
    dataset: ClassDataset,
    transform: Transform | None,
    generator: torch.Generator,
    classes: torch.Tensor,
    support_idx: torch.Tensor,
    query_idx: torch.Tensor,
    shots: int | torch.Tensor,
    queries: int,
) -> Episode:
    """The episode of the drawn items, class by class, labels ``0..N-1``; ``shots`` per class or one for all.

    Both samplers end here, so the support set is transformed before the query set (the order
    in which they draw from ``generator``).
    """
    support_x = _as_float(dataset.inputs[support_idx])
    query_x = _as_float(dataset.inputs[query_idx])
    if transform is not None:
        support_x = transform(support_x, generator)
        query_x = transform(query_x, generator)
    labels = torch.arange(len(classes))
    return Episode(
        support_x=support_x,
        support_y=labels.repeat_interleave(shots),
        query_x=query_x,
        query_y=labels.repeat_interleave(queries),
        ways=len(classes),
        shots=shots if isinstance(shots, int) else 0,
        queries=queries,
        classes=classes,
    )


class MetaDatasetSampler:
    """Variable-way, variable-shot episodes: the Meta-Dataset sampler (Triantafillou et al., ICLR 2020, Sec. 3.2).

    Each episode draws, using only the generator:

    * ways ``N`` uniform in ``min_ways..min(max_ways, classes in the split)`` (5..50), classes at
      random (the paper's flat sampling; its ImageNet and Omniglot hierarchies are not used);
    * queries per class ``q = min(max_queries, min_c floor(|c| / 2))`` (10 unless a class is small),
      the same for every class;
    * a support budget ``|S| = min(max_support, sum_c ceil(beta * min(max_support_per_class, |c| - q)))``
      with ``beta ~ U(0, 1]`` (at most 500 support images in all);
    * shots per class ``k_c = min(floor(R_c * (|S| - N)) + 1, |c| - q)`` with
      ``R_c ∝ exp(alpha_c) * |c|`` and ``alpha_c ~ U[log 0.5, log 2]``: imbalanced, at least one each.

    Episodes keep metakit's layout (support and query items class by class, labels ``0..N-1``);
    ``ways`` is the episode's own N, ``shots`` is 0 (it differs by class) and ``queries`` is ``q``.
    The sampler's own ``ways`` attribute is the most ways it can draw. Episodes of different
    sizes do not stack into one tensor, so the trainer runs a meta-batch of them task by task
    (:func:`meta_step_each`).

    Args:
        dataset: the split's classes.
        transform: optional augmentation applied to support and query images.
        min_ways, max_ways, max_support, max_queries, max_support_per_class: the paper's
            constants (5, 50, 500, 10, 100).
    """

    task_type = "classification"
    #: Episodes differ in ways and shots (evaluation and training treat them one by one).
    variable = True

    def __init__(
        self,
        dataset: ClassDataset,
        transform: Transform | None = None,
        min_ways: int = 5,
        max_ways: int = 50,
        max_support: int = 500,
        max_queries: int = 10,
        max_support_per_class: int = 100,
    ) -> None:
        if dataset.num_classes < min_ways:
            raise MetakitError(
                f"the metadataset sampler draws at least {min_ways} classes but split {dataset.name!r} has only "
                f"{dataset.num_classes}; use episodes.sampler: standard or a larger split."
            )
        sizes = dataset.class_sizes()
        short = [c for c, n in enumerate(sizes) if n < 2]
        if short:
            named = ", ".join(repr(dataset.class_names[c]) for c in short[:5])
            raise MetakitError(
                f"the metadataset sampler needs at least 2 items per class (one support, one query) but "
                f"{len(short)} class(es) of {dataset.name!r} have 1: {named}; give them more items or remove them."
            )
        self.dataset, self.transform = dataset, transform
        self.min_ways, self.max_support = int(min_ways), int(max_support)
        self.max_queries, self.max_support_per_class = int(max_queries), int(max_support_per_class)
        self.ways = min(int(max_ways), dataset.num_classes)
        self.shots, self.queries = 0, int(max_queries)
        self._sizes = torch.tensor(sizes, dtype=torch.float64)

    def sample(self, generator: torch.Generator) -> Episode:
        """Draw one episode; the result depends only on ``generator``'s state."""
        n = int(torch.randint(self.min_ways, self.ways + 1, (1,), generator=generator))
        classes = torch.randperm(self.dataset.num_classes, generator=generator)[:n]
        size = self._sizes[classes]
        q = int(min(self.max_queries, int(torch.floor(size.min() / 2))))
        beta = 1.0 - float(torch.rand((), generator=generator, dtype=torch.float64))  # U(0, 1]
        budget = int(min(self.max_support, torch.ceil(beta * torch.clamp(size - q, max=self.max_support_per_class)).sum()))
        alpha = torch.empty(n, dtype=torch.float64).uniform_(math.log(0.5), math.log(2.0), generator=generator)
        share = alpha.exp() * size
        share = share / share.sum()
        shots = torch.minimum(torch.floor(share * (budget - n)) + 1, size - q).long()
        support, query = [], []
        for c, k in zip(classes.tolist(), shots.tolist()):
            items = self.dataset.items_of(c)
            pick = items[torch.randperm(len(items), generator=generator)[: k + q]]
            support.append(pick[:k])
            query.append(pick[k:])
        # Shots differ by class, so the episode records none (shots=0).
        return _gather(self.dataset, self.transform, generator, classes, torch.cat(support), torch.cat(query), shots, q)


def meta_step_each(
    step: Callable[[MetaBatch], dict[str, float]], episodes: Sequence[Episode], params: Sequence[torch.nn.Parameter]
) -> dict[str, float]:
    """One meta-step over tasks that cannot be stacked (different ways or shots), one task at a time.

    ``step`` (a learner's ``meta_step``) runs on each task as a meta-batch of one; the ``.grad``
    each writes is collected and the mean over tasks is left in ``.grad``, which is what one
    step on the stacked meta-batch would write (every built-in meta-loss is a mean over tasks).
    Metrics are averaged over tasks.
    """
    if not episodes:
        raise MetakitError("a meta-batch needs at least one task.")
    totals: list[torch.Tensor | None] = [None] * len(params)
    metrics = []
    for episode in episodes:
        for p in params:
            p.grad = None  # a learner may assign .grad rather than accumulate into it (Reptile)
        metrics.append(step(as_batch(episode)))
        for i, p in enumerate(params):
            if p.grad is not None:
                totals[i] = p.grad.detach().clone() if totals[i] is None else totals[i].add_(p.grad)
    for p, total in zip(params, totals):
        p.grad = None if total is None else total / len(episodes)
    return {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}


def sample_batch(source: TaskSource, tasks: int, generator: torch.Generator) -> MetaBatch:
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

    def batches(self, size: int) -> Iterator[MetaBatch]:
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
