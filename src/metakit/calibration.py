"""Uncertainty: expected calibration error, negative log-likelihood, reliability diagrams.

A classifier is calibrated when, among the predictions it makes with confidence p, a fraction p
is correct. ECE (Naeini et al. 2015; Guo et al. 2017) bins the query predictions of all test
episodes by confidence (15 equal-width bins) and averages |accuracy - confidence| weighted by the
bin's share of predictions. NLL is the mean negative log-probability of the true class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


BINS = 15


@dataclass
class Calibration:
    """Running calibration statistics over many episodes' query predictions."""

    bins: int = BINS
    counts: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    nll_sum: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.bins
            self.confidence = [0.0] * self.bins
            self.correct = [0.0] * self.bins

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add predictions ``probs`` ``[n, classes]`` (rows sum to 1) for true ``labels`` ``[n]``."""
        probs = probs.detach().double()
        conf, pred = probs.max(-1)
        hit = (pred == labels).double()
        # Confidence 1.0 belongs to the last bin.
        idx = (conf * self.bins).long().clamp_(max=self.bins - 1)
        counts = torch.bincount(idx, minlength=self.bins)
        conf_sum = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, conf)
        hit_sum = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, hit)
        for b in range(self.bins):
            self.counts[b] += int(counts[b])
            self.confidence[b] += float(conf_sum[b])
            self.correct[b] += float(hit_sum[b])
        true_p = probs.gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(1e-12)
        self.nll_sum += float(-true_p.log().sum())
        self.n += len(labels)

    def ece(self) -> float:
        """Expected calibration error (0 = perfectly calibrated)."""
        if self.n == 0:
            return float("nan")
        return sum(abs(self.correct[b] - self.confidence[b]) for b in range(self.bins) if self.counts[b]) / self.n

    def nll(self) -> float:
        """Mean negative log-likelihood of the true class."""
        return self.nll_sum / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """ECE, NLL and the per-bin reliability data."""
        return {
            "ece": self.ece(),
            "nll": self.nll(),
            "bins": [
                {"count": c, "confidence": s / c if c else None, "accuracy": a / c if c else None}
                for c, s, a in zip(self.counts, self.confidence, self.correct)
            ],
        }


def reliability_diagram(curves: Mapping[str, Mapping[str, Any]], title: str = "reliability") -> Any:
    """The figure of accuracy against confidence per bin for each named ``Calibration.to_dict()`` result.

    Reports save it through :func:`metakit.runs.write_report`.
    """
    from metakit.runs import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    # Past ten curves the default colour cycle repeats; tab20 and a marker per decade keep them apart.
    many = len(curves) > 10
    for i, (name, data) in enumerate(curves.items()):
        pts = [(b["confidence"], b["accuracy"]) for b in data["bins"] if b["count"]]
        if pts:
            xs, ys = zip(*pts)
            style = {"color": plt.get_cmap("tab20")(i % 20), "marker": "osd^"[i // 20 % 4]} if many else {"marker": "o"}
            ax.plot(xs, ys, label=f"{name} (ECE {100 * data['ece']:.1f}%)", **style)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
