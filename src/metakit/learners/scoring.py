"""Scoring a learner on fixed episodes: adapt to each support set, score the query predictions.

The floor below :mod:`metakit.evaluation`, which builds a run's experiment and writes its report:
a learner that scores itself (P>M>F choosing its fine-tuning rate on validation episodes) imports
this module, never the run layer that builds learners. :mod:`metakit.evaluation` re-exports
these names.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from metakit.calibration import Calibration
from metakit.episodes import Episode
from metakit.errors import MetakitError

if TYPE_CHECKING:
    from rich.progress import Progress

    from metakit.learners.base import Learner

__all__ = ["EvalResult", "evaluate_learner", "mean_ci95"]


@dataclass
class EvalResult:
    """Scores of one learner on one set of fixed episodes."""

    metric: str
    mean: float
    ci95: float
    std: float
    episodes: int
    ways: int
    shots: int
    queries: int
    median_adapt_seconds: float
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``accuracy 0.9512 ± 0.0031 (5-way 1-shot, 15 queries, 1000 episodes)``.

        ``ways`` / ``shots`` of 0 mean they varied between episodes (Meta-Dataset episodes).
        """
        ways = f"{self.ways}-way" if self.ways else "variable-way"
        shots = f"{self.shots}-shot" if self.shots else "variable-shot"
        queries = f"{self.queries} queries/class" if self.ways else "up to 10 queries/class"
        return f"{self.metric} {self.mean:.4f} ± {self.ci95:.4f} ({ways} {shots}, {queries}, {self.episodes} episodes)"


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, 95% CI half-width ``1.96 * std / sqrt(N)`` and sample std of ``values``."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, 1.96 * std / math.sqrt(len(values)), std


def evaluate_learner(
    learner: Learner,
    episodes: Sequence[Episode],
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    description: str = "evaluating",
) -> EvalResult:
    """Adapt ``learner`` to each episode's support set and score its query predictions.

    The learner is put in eval mode; adaptation runs under ``torch.no_grad()`` (learners with an
    inner optimisation loop re-enable gradients themselves).
    """
    was_training = learner.training
    learner.eval()
    scores, times = [], []
    task = progress.add_task(description, total=len(episodes)) if progress is not None else None
    first: Episode | None = None
    shapes: set[tuple[int, int, int]] = set()
    calibration = Calibration() if learner.task.task_type == "classification" else None
    with torch.no_grad():
        for episode in episodes:
            episode = episode.to(device)
            first = first or episode
            shapes.add((episode.ways, episode.shots, episode.queries))
            start = time.perf_counter()
            predict = learner.adapt(episode.support_x, episode.support_y, episode.ways)
            times.append(time.perf_counter() - start)
            outputs = predict(episode.query_x)
            if not torch.isfinite(outputs).all():
                # Diverged weights (e.g. a huge train.lr) give NaN scores and break calibration.
                raise MetakitError(
                    "the learner's predictions are NaN or infinite: its weights diverged; lower train.lr "
                    "or set train.grad_clip, and train again."
                )
            scores.append(learner.score(outputs, episode.query_y))
            if calibration is not None:
                calibration.update(learner.probabilities(outputs).cpu(), episode.query_y.cpu())
            if task is not None:
                progress.advance(task)
    learner.train(was_training)
    mean, ci, std = mean_ci95(scores)
    return EvalResult(
        metric=learner.metric,
        mean=mean,
        ci95=ci,
        std=std,
        episodes=len(scores),
        # Variable-way / variable-shot episodes (Meta-Dataset) are recorded as 0.
        ways=first.ways if first and len({s[0] for s in shapes}) == 1 else 0,
        shots=first.shots if first and len({s[1] for s in shapes}) == 1 else 0,
        queries=first.queries if first and len({s[2] for s in shapes}) == 1 else 0,
        median_adapt_seconds=statistics.median(times),
        calibration=calibration.to_dict() if calibration is not None else None,
    )
