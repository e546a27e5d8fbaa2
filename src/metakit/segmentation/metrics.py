"""Few-shot segmentation metrics as the field reports them, plus instances and boxes from masks.

* **mIoU** (PANet, HSNet): for each class, intersection and union are *summed over all of that
  class's episodes*, then IoU = I / U per class, then the mean over classes. Not the mean of
  per-episode IoUs, which would weigh a small object as much as a large one.
* **FB-IoU**: foreground and background IoU, each summed over every episode of every class,
  then their mean (HSNet's ``compute_fb_iou``).
* **Instances and boxes**: the connected components (8-connected) of a predicted mask are the
  instances; their bounding boxes are scored by **AP50** against the ground-truth instances
  (VOC all-point interpolated average precision at box IoU >= 0.5). This is a simple detector,
  not a proposal-based one such as DE-ViT: touching objects of one class merge into one box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "IoUAccumulator", "average_precision", "box_iou", "boxes_of", "connected_components", "detect_instances",
]


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a bool mask ``[H, W]``: int64 ``[H, W]``, ``0`` background, ``1..n`` in raster order.

    Every foreground pixel starts with its own label and repeatedly takes the largest label in its
    3x3 neighbourhood until nothing changes, so each component ends up with one label.
    """
    mask = mask.bool()
    h, w = mask.shape
    if not mask.any():
        return torch.zeros(h, w, dtype=torch.int64)
    fg = mask.float()[None, None]
    labels = (torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w)) * fg
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.flatten().long()
    # Renumber 1..n in the order the components first appear in raster order.
    seen = flat[flat > 0]
    uniq, first = [], set()
    for v in seen.tolist():
        if v not in first:
            first.add(v)
            uniq.append(v)
    lookup = torch.zeros(h * w + 1, dtype=torch.int64)
    lookup[torch.tensor(uniq)] = torch.arange(1, len(uniq) + 1)
    return lookup[flat].reshape(h, w)


def boxes_of(instances: torch.Tensor) -> torch.Tensor:
    """Boxes ``[n, 4]`` (x0, y0, x1, y1; x1/y1 exclusive) of instances ``1..n`` of an instance map ``[H, W]``."""
    n = int(instances.max().item()) if instances.numel() else 0
    out = torch.zeros(max(n, 0), 4, dtype=torch.float32)
    for i in range(1, n + 1):
        ys, xs = torch.nonzero(instances == i, as_tuple=True)
        if len(ys):
            out[i - 1] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    keep = (out[:, 2] > out[:, 0]) if n else torch.zeros(0, dtype=torch.bool)
    return out[keep]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``[n, m]`` between boxes ``a`` ``[n, 4]`` and ``b`` ``[m, 4]`` (x0, y0, x1, y1, exclusive ends)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


def detect_instances(
    probs: torch.Tensor, threshold: float = 0.5, min_pixels: int = 4, mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instances of a foreground probability map ``[H, W]``: ``(scores [n], boxes [n, 4])``.

    The components of ``mask`` (default ``probs >= threshold``) with at least ``min_pixels``
    pixels (smaller ones are speckle) are the instances; each one's score is its mean
    probability. An N-way prediction passes the pixels where its class is the most probable
    as ``mask``: with three or more labels the winner can have a probability below 0.5.
    """
    comps = connected_components(probs >= threshold if mask is None else mask)
    scores, keep = [], []
    for i in range(1, int(comps.max()) + 1):
        inside = comps == i
        if int(inside.sum()) >= min_pixels:
            keep.append(i)
            scores.append(probs[inside].mean())
    if not keep:
        return torch.zeros(0), torch.zeros(0, 4)
    kept = torch.zeros_like(comps)
    for new, old in enumerate(keep, start=1):
        kept[comps == old] = new
    return torch.stack(scores).float(), boxes_of(kept)


def average_precision(
    detections: Sequence[tuple[torch.Tensor, torch.Tensor]], truths: Sequence[torch.Tensor], iou: float = 0.5
) -> float:
    """VOC all-point average precision of ``detections`` against ``truths``, over a set of images.

    Args:
        detections: per image, ``(scores [n], boxes [n, 4])``.
        truths: per image, ground-truth boxes ``[m, 4]``.
        iou: a detection is a true positive when its box IoU with a not yet matched truth is at least this.

    Returns:
        AP in [0, 1]; ``nan`` when there is no ground-truth box at all.
    """
    total = sum(len(t) for t in truths)
    if total == 0:
        return math.nan
    flat = [(float(s), img, box) for img, (scores, boxes) in enumerate(detections) for s, box in zip(scores, boxes, strict=True)]
    flat.sort(key=lambda d: -d[0])  # stable: equal scores keep image order, so results are deterministic
    matched = [torch.zeros(len(t), dtype=torch.bool) for t in truths]
    tp = []
    for _, img, box in flat:
        t = truths[img]
        hit = False
        if len(t):
            overlaps = box_iou(box[None], t)[0]
            overlaps[matched[img]] = -1
            best = int(overlaps.argmax())
            if overlaps[best] >= iou:
                matched[img][best] = True
                hit = True
        tp.append(hit)
    if not tp:
        return 0.0
    hits = torch.tensor(tp, dtype=torch.float64)
    cum_tp = hits.cumsum(0)
    recall = cum_tp / total
    precision = cum_tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    # All-point interpolation: precision made non-increasing, integrated over recall steps.
    mrec = torch.cat([torch.zeros(1, dtype=torch.float64), recall, torch.ones(1, dtype=torch.float64)])
    mpre = torch.cat([torch.zeros(1, dtype=torch.float64), precision, torch.zeros(1, dtype=torch.float64)])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = torch.maximum(mpre[i], mpre[i + 1])
    steps = torch.nonzero(mrec[1:] != mrec[:-1]).flatten()
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


@dataclass
class IoUAccumulator:
    """Intersections and unions summed per class (mIoU) and for foreground/background (FB-IoU)."""

    intersection: dict[str, float] = field(default_factory=dict)
    union: dict[str, float] = field(default_factory=dict)
    fb_intersection: list[float] = field(default_factory=lambda: [0.0, 0.0])  # background, foreground
    fb_union: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def update(self, cls: str, predicted: torch.Tensor, truth: torch.Tensor, fb: bool = True) -> None:
        """Add one episode's query masks (bool ``[n, H, W]`` or ``[H, W]``) of class ``cls``.

        ``fb=False`` leaves FB-IoU out: an N-way episode adds each class here, then its foreground
        (any class) once with :meth:`update_fb`.
        """
        p, t = predicted.bool(), truth.bool()
        self.intersection[cls] = self.intersection.get(cls, 0.0) + float((p & t).sum())
        self.union[cls] = self.union.get(cls, 0.0) + float((p | t).sum())
        if fb:
            self.update_fb(p, t)

    def update_fb(self, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        """Add predicted and true foreground (bool, any class) to FB-IoU only."""
        p, t = predicted.bool(), truth.bool()
        for k, (pp, tt) in enumerate(((~p, ~t), (p, t))):
            self.fb_intersection[k] += float((pp & tt).sum())
            self.fb_union[k] += float((pp | tt).sum())

    def add(self, other: IoUAccumulator) -> None:
        """Add everything ``other`` has summed (another seed's episodes) to these sums."""
        for c in other.intersection:
            self.intersection[c] = self.intersection.get(c, 0.0) + other.intersection[c]
            self.union[c] = self.union.get(c, 0.0) + other.union[c]
        for k in range(2):
            self.fb_intersection[k] += other.fb_intersection[k]
            self.fb_union[k] += other.fb_union[k]

    def per_class(self) -> dict[str, float]:
        """IoU of each class seen (a class whose masks and predictions are all empty counts as 1)."""
        return {c: self.intersection[c] / self.union[c] if self.union[c] else 1.0 for c in self.intersection}

    def miou(self) -> float:
        """Mean over classes of the per-class IoU; ``nan`` before any update."""
        ious = list(self.per_class().values())
        return sum(ious) / len(ious) if ious else math.nan

    def fb_iou(self) -> float:
        """Mean of background and foreground IoU over everything seen; ``nan`` before any update."""
        if not self.fb_union[0] and not self.fb_union[1]:
            return math.nan
        return sum(i / u if u else 1.0 for i, u in zip(self.fb_intersection, self.fb_union, strict=True)) / 2
