"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, "MAML", section 5.1).

Each task is ``y = A * sin(x - phase)`` with ``A ~ U[0.1, 5]`` and ``phase ~ U[0, pi]``; its
support and query inputs are drawn from ``x ~ U[-5, 5]``. Tasks are generated on the fly, so
there are no files and no train/test class split: every task is new.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from metakit.episodes import Episode
from metakit.errors import MetakitError

__all__ = ["SinusoidTasks", "sinusoid_status"]


def _range(name: str, value: Sequence[float], *, allow_point: bool) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MetakitError(f"sinusoid: {name} must be two numbers [low, high], got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or high < low or (high == low and not allow_point):
        need = "low <= high" if allow_point else "low < high"
        raise MetakitError(f"sinusoid: {name} must be a finite range [low, high] with {need}, got {[low, high]}.")
    return low, high


class SinusoidTasks:
    """The MAML sinusoid task distribution: a :class:`~metakit.episodes.TaskSource`.

    Args:
        shots: support points per task (K).
        queries: query points per task.
        amplitude: ``(low, high)`` of the uniform amplitude ``A`` (a single value if equal).
        phase: ``(low, high)`` of the uniform phase, in radians.
        x_range: ``(low, high)`` of the uniform inputs ``x``.

    Episodes hold float32 ``support_x``/``support_y`` of shape ``[shots, 1]`` and
    ``query_x``/``query_y`` of shape ``[queries, 1]``, with ``ways=1`` and ``classes=None``.
    """

    task_type = "regression"
    ways = 1

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
    ) -> None:
        for label, value in (("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetakitError(f"sinusoid: {label} must be an integer >= 1, got {value!r}.")
        self.shots, self.queries = int(shots), int(queries)
        self.amplitude = _range("amplitude", amplitude, allow_point=True)
        self.phase = _range("phase", phase, allow_point=True)
        self.x_range = _range("x_range", x_range, allow_point=False)

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, amplitude={self.amplitude}, "
            f"phase={self.phase}, x_range={self.x_range})"
        )

    @staticmethod
    def function(x: torch.Tensor, amplitude: float, phase: float) -> torch.Tensor:
        """The task's target ``amplitude * sin(x - phase)`` (for plotting the true curve)."""
        return amplitude * torch.sin(x - phase)

    def _uniform(self, bounds: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        low, high = bounds
        return torch.rand(shape, generator=generator, dtype=torch.float32) * (high - low) + low

    def sample_task(self, generator: torch.Generator) -> tuple[float, float]:
        """Draw one task's ``(amplitude, phase)`` using only ``generator``."""
        u_amplitude, u_phase = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        (a_low, a_high), (p_low, p_high) = self.amplitude, self.phase
        return a_low + u_amplitude * (a_high - a_low), p_low + u_phase * (p_high - p_low)

    def make_episode(self, amplitude: float, phase: float, generator: torch.Generator) -> Episode:
        """Support and query points of the task ``(amplitude, phase)``, inputs drawn with ``generator``."""
        x = self._uniform(self.x_range, (self.shots + self.queries, 1), generator)
        y = self.function(x, amplitude, phase)
        return Episode(
            support_x=x[: self.shots],
            support_y=y[: self.shots],
            query_x=x[self.shots :],
            query_y=y[self.shots :],
            ways=1,
            shots=self.shots,
            queries=self.queries,
            classes=None,
        )

    def sample(self, generator: torch.Generator) -> Episode:
        """Draw one task and its points; the result depends only on ``generator``'s state."""
        amplitude, phase = self.sample_task(generator)
        return self.make_episode(amplitude, phase, generator)


def sinusoid_status() -> str:
    """One line for ``metakit datasets``: sinusoid tasks need no files."""
    return "generated on the fly (no files)"
