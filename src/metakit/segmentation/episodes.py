"""1-way K-shot segmentation episodes, in metakit's :class:`~metakit.episodes.Episode` layout.

An episode picks one class, then ``shots + queries`` distinct scenes where that class is visible.
``support_x`` / ``query_x`` are float images ``[n, C, H, W]`` in [0, 1]; ``support_y`` / ``query_y``
are the class's binary masks ``[n, H, W]`` (float 0/1), so the trainer, :func:`sample_batch` and
:class:`~metakit.episodes.FixedEpisodes` work on them unchanged. ``classes`` holds the episode's
class index within the split, which mIoU accumulates over. ``instances`` of the query scenes
(kept on the sampler side, see :meth:`SegmentationEpisodes.sample_with_instances`) give AP50.
"""

from __future__ import annotations

import torch

from metakit.episodes import Episode
from metakit.errors import MetakitError
from metakit.segmentation.scenes import SceneSet

__all__ = ["SegmentationEpisodes"]


class SegmentationEpisodes:
    """Draws 1-way ``shots``-shot episodes with ``queries`` query images from one :class:`SceneSet`.

    Classes visible in fewer than ``shots + queries`` scenes are left out (listed in
    :attr:`skipped`); with ``strict`` (a user's own data, where a short class is a mistake) any
    such class is an error instead.

    Raises:
        MetakitError: ``shots`` or ``queries`` below 1, or a short class (the short classes are
            named): any with ``strict``, else when every class is short.
    """

    task_type = "segmentation"
    ways = 1

    def __init__(self, scenes: SceneSet, shots: int, queries: int, strict: bool = False) -> None:
        if shots < 1 or queries < 1:
            raise MetakitError(f"segmentation episodes need shots >= 1 and queries >= 1, got {shots} and {queries}.")
        self.scenes, self.shots, self.queries = scenes, int(shots), int(queries)
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
        #: Classes left out because they have fewer than ``shots + queries`` images (names).
        self.skipped = [scenes.class_names[c] for c in short]

    def _draw(self, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        cls = self.classes[int(torch.randint(len(self.classes), (), generator=generator))]
        pool = torch.as_tensor(self.scenes.occurrences()[cls])
        picked = pool[torch.randperm(len(pool), generator=generator)[: self.shots + self.queries]]
        return cls, picked

    def _episode(self, cls: int, picked: torch.Tensor) -> Episode:
        images = self.scenes.images[picked].float() / 255
        masks = self.scenes.mask(picked, cls)
        k = self.shots
        return Episode(
            support_x=images[:k], support_y=masks[:k], query_x=images[k:], query_y=masks[k:],
            ways=1, shots=k, queries=self.queries, classes=torch.tensor([cls]),
        )

    def sample(self, generator: torch.Generator) -> Episode:
        """One episode, using only ``generator`` for randomness."""
        return self._episode(*self._draw(generator))

    def sample_with_instances(self, generator: torch.Generator) -> tuple[Episode, torch.Tensor]:
        """The episode :meth:`sample` draws from this generator state, and its queries' instance maps.

        The instance map ``[queries, H, W]`` keeps only the episode class's objects (others are 0).
        """
        cls, picked = self._draw(generator)
        episode = self._episode(cls, picked)
        query = picked[self.shots:]
        inst = self.scenes.instances[query] * (self.scenes.labels[query] == cls)
        return episode, inst
