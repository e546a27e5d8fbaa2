"""N-way K-shot segmentation episodes (1-way by default), in metakit's :class:`~metakit.episodes.Episode` layout.

An episode picks ``ways`` classes, then for each of them ``shots + queries`` scenes where it is
visible, no scene used twice. ``support_x`` / ``query_x`` are float images ``[n, C, H, W]`` in
[0, 1], ordered class by class as every metakit episode is. ``support_y`` / ``query_y`` are label
maps ``[n, H, W]`` (float): 0 is background and ``i`` in ``1..ways`` the episode's ``i``-th class.
A support image is labelled with its own class only (PANet's N-way protocol, and what a user's
one-class masks give); a query image with every episode class it shows. At 1 way the label maps
are the binary masks, so the trainer, :func:`sample_batch` and
:class:`~metakit.episodes.FixedEpisodes` work on them unchanged. ``classes`` holds the episode's
class indices within the split, which mIoU accumulates over. ``instances`` of the query scenes
(kept on the sampler side, see :meth:`SegmentationEpisodes.sample_with_instances`) give AP50.
"""

from __future__ import annotations

import torch

from metakit.episodes import Episode
from metakit.errors import MetakitError
from metakit.segmentation.scenes import SceneSet

__all__ = ["SegmentationEpisodes"]


class SegmentationEpisodes:
    """Draws ``ways``-way ``shots``-shot episodes with ``queries`` query images per class from one :class:`SceneSet`.

    Classes visible in fewer than ``shots + queries`` scenes are left out (listed in
    :attr:`skipped`); with ``strict`` (a user's own data, where a short class is a mistake) any
    such class is an error instead.

    ``labels`` is ``"episode"`` (the episode's classes, the few-shot task) or ``"all"`` (every
    object with its class in the split, for supervised training).

    Raises:
        MetakitError: an unknown ``labels``, ``ways``, ``shots`` or ``queries`` below 1, fewer usable classes than
            ``ways``, or a short class (the short classes are named): any with ``strict``, else
            when every class is short.
    """

    task_type = "segmentation"

    #: Draws of ``ways`` classes tried before giving up on finding scenes enough for all of them.
    _TRIES = 100

    def __init__(
        self, scenes: SceneSet, shots: int, queries: int, strict: bool = False, ways: int = 1, labels: str = "episode"
    ) -> None:
        if labels not in ("episode", "all"):
            raise MetakitError(f"segmentation episodes label 'episode' classes or 'all' of them, got {labels!r}.")
        if shots < 1 or queries < 1 or ways < 1:
            raise MetakitError(
                f"segmentation episodes need ways >= 1, shots >= 1 and queries >= 1, got {ways}, {shots} and {queries}."
            )
        self.scenes, self.shots, self.queries, self.ways = scenes, int(shots), int(queries), int(ways)
        self.labels = labels
        need = self.shots + self.queries
        occ = scenes.occurrences()
        self.classes = [c for c in range(scenes.num_classes) if len(occ[c]) >= need]
        short = [c for c in range(scenes.num_classes) if len(occ[c]) < need]
        if short and (strict or not self.classes):
            named = ", ".join(f"{scenes.class_names[c]!r} ({len(occ[c])})" for c in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise MetakitError(
                f"{scenes.name}: {shots}-shot {queries}-query episodes need {need} images per class, but "
                f"{'these classes have' if self.classes else 'every class has'} fewer: {named}{more}; lower shots or queries, or add images to these classes."
            )
        if len(self.classes) < self.ways:
            raise MetakitError(
                f"{scenes.name}: {ways}-way episodes need {ways} classes with {need} images each, but {len(self.classes)} "
                f"have them; lower ways, shots or queries."
            )
        #: Classes left out because they have fewer than ``shots + queries`` images (names).
        self.skipped = [scenes.class_names[c] for c in short]

    def _draw(self, generator: torch.Generator) -> tuple[list[int], torch.Tensor]:
        """The episode's classes and its scenes ``[ways, shots + queries]``, class by class."""
        occ = self.scenes.occurrences()
        need = self.shots + self.queries
        for _ in range(self._TRIES):
            order = torch.randperm(len(self.classes), generator=generator)[: self.ways] if self.ways > 1 else \
                torch.randint(len(self.classes), (1,), generator=generator)
            chosen = [self.classes[int(i)] for i in order]
            used: set[int] = set()
            picked = []
            for cls in chosen:
                # A scene shows several classes: one already taken for another class is not reused.
                pool = torch.as_tensor([s for s in occ[cls] if s not in used], dtype=torch.long)
                if len(pool) < need:
                    break
                take = pool[torch.randperm(len(pool), generator=generator)[:need]]
                used.update(take.tolist())
                picked.append(take)
            else:
                return chosen, torch.stack(picked)
        raise MetakitError(
            f"{self.scenes.name}: no {self.ways} classes with {need} scenes each that no other class of the episode uses; "
            f"lower ways, shots or queries."
        )

    def _labels(self, scenes: torch.Tensor, chosen: list[int]) -> torch.Tensor:
        """Label maps ``[n, H, W]`` of ``scenes``: ``i + 1`` where ``chosen[i]`` is, 0 elsewhere."""
        out = torch.zeros(len(scenes), *self.scenes.labels.shape[1:])
        for i, cls in enumerate(chosen):
            out += (i + 1) * self.scenes.mask(scenes, cls)
        return out

    def _episode(self, chosen: list[int], picked: torch.Tensor) -> Episode:
        k = self.shots
        support, query = picked[:, :k].reshape(-1), picked[:, k:].reshape(-1)
        if self.labels == "all":
            support_y, query_y = (self.scenes.labels[support] + 1).float(), (self.scenes.labels[query] + 1).float()
        else:
            # Each support image is labelled with its own class: as one-class masks (fss-folder, a
            # user's annotations) are.
            support_y = torch.cat([(i + 1) * self.scenes.mask(picked[i, :k], cls) for i, cls in enumerate(chosen)])
            query_y = self._labels(query, chosen)
        return Episode(
            support_x=self.scenes.images[support].float() / 255, support_y=support_y,
            query_x=self.scenes.images[query].float() / 255, query_y=query_y,
            ways=self.ways, shots=k, queries=self.queries, classes=torch.tensor(chosen),
        )

    def sample(self, generator: torch.Generator) -> Episode:
        """One episode, using only ``generator`` for randomness."""
        return self._episode(*self._draw(generator))

    def sample_with_instances(self, generator: torch.Generator) -> tuple[Episode, torch.Tensor]:
        """The episode :meth:`sample` draws from this generator state, and its queries' instance maps.

        The instance map ``[ways * queries, H, W]`` keeps only the objects of the episode's
        classes (others are 0); ``query_y`` says which class each one is.
        """
        chosen, picked = self._draw(generator)
        episode = self._episode(chosen, picked)
        query = picked[:, self.shots:].reshape(-1)
        keep = torch.isin(self.scenes.labels[query], torch.tensor(chosen))
        return episode, self.scenes.instances[query] * keep
