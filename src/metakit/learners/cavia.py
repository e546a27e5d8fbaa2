"""CAVIA — fast context adaptation (Zintgraf, Shiarlis, Kurin, Hofmann & Whiteson, ICML 2019).

The network is split into *global* parameters θ, shared by all tasks and learned only in the
outer loop, and *local* context parameters φ, a small vector reset to zero for every task and the
only thing the inner loop adapts. The context conditions the network through FiLM,
``h' = h * (1 + γ(φ)) + β(φ)`` per channel, either on the backbone's output features or, as in
the paper's image classifiers, inside the backbone after block ``film_at`` so that the layers
above can turn the modulation into a task-specific decision. Adapting a handful of numbers
instead of the whole network makes the inner loop cheap and less prone to overfitting.

For classification the head is global too, so a task's labels can only be told apart through
the context. How far one inner step moves the FiLM scales is the inner lr times the squared size
of the FiLM weights, so the right inner lr depends on their initialisation: with PyTorch's
default one, the paper's 1.0 barely moves the context and meta-training sits at chance for
hundreds of steps (see ``configs/omniglot-cavia.yaml`` for the measured alternatives).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metakit.errors import MetakitError
from metakit.learners.base import Predictor, TaskInfo
from metakit.learners.gradient import GradientLearner
from metakit.learners.registry import register_learner


@register_learner("cavia")
class CAVIA(GradientLearner):
    """CAVIA: adapt a per-task context vector; the network weights are global.

    Args:
        num_context: size of the context vector φ.
        inner_lr: inner step size on φ (the paper uses 1.0).
        film_at: FiLM the output of the backbone's top-level block ``film_at`` (0-based; the
            backbone must then be an ``nn.Sequential``, as conv4/resnet12/mlp are); ``None``
            FiLMs the output features.
    """

    #: Only the context adapts (it is not a parameter of the network); the head never does.
    fixed_options = ("adapt", "head_init")

    def __init__(self, backbone: nn.Module, task: TaskInfo, num_context: int = 100, inner_lr: float = 1.0,
                 film_at: int | None = None, **options: Any) -> None:
        if num_context < 1:
            raise MetakitError(f"num_context must be >= 1, got {num_context}.")
        super().__init__(backbone, task, inner_lr=inner_lr, adapt=[], **options)
        # The two halves share the backbone's modules; kept in a tuple so that they are not
        # registered again (the state dict keeps its ``backbone.*`` names).
        if film_at is None:
            below, above, channels = backbone, nn.Identity(), backbone.out_dim
        else:
            blocks = len(backbone) if isinstance(backbone, nn.Sequential) else 0
            if not 0 <= film_at < blocks - 1:
                raise MetakitError(
                    f"film_at={film_at} needs a Sequential backbone with a block above it "
                    f"(this one has {blocks} top-level blocks); use 0..{blocks - 2} or leave film_at unset."
                )
            below, above = backbone[: film_at + 1], backbone[film_at + 1 :]
            with torch.no_grad():  # the channel count at the FiLM point, from one dummy input
                channels = below(torch.zeros(2, *task.input_shape)).shape[1]
        self.split = (below, above)
        # Not zero-initialised: with a zero FiLM map the context gets no gradient and never moves.
        self.film = nn.Linear(num_context, 2 * channels)
        self.num_context = num_context
        self.film_at = film_at

    def conditioned(self, hidden: torch.Tensor, context: torch.Tensor, ways: int) -> torch.Tensor:
        """FiLM-modulate the activations ``hidden`` at the FiLM point, then the rest of the network."""
        gamma, beta = self.film(context).chunk(2, dim=-1)
        shape = (1, -1) + (1,) * (hidden.dim() - 2)  # one scale and shift per channel
        modulated = hidden * (1 + gamma.view(shape)) + beta.view(shape)
        return self.head_forward({}, self.split[1](modulated), ways)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Gradient steps on the zero-initialised context; the layers below the FiLM point run once."""
        hidden = self.split[0](support_x)
        start = {"context": torch.zeros(self.num_context, device=hidden.device, dtype=hidden.dtype, requires_grad=True)}
        context = self.run_inner(
            start, lambda p, _step: self.loss(self.conditioned(hidden, p["context"], ways), support_y)
        )["context"]
        return lambda query_x: self.conditioned(self.split[0](query_x), context, ways)
