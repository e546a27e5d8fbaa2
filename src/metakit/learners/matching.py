"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query is classified by attention over the support set: the attention weights are a softmax
over cosine similarities between the query's embedding and each support embedding, and the
predicted label distribution is the attention-weighted average of the support labels'
one-hot vectors. Nothing is optimised at adaptation time.

**Full context embeddings (FCE, the paper's appendix).** With ``fce=True`` the embeddings see the
whole support set:

- support: ``g(x_i, S) = h_i(forward) + h_i(backward) + g'(x_i)``, a bidirectional LSTM run over
  the support embeddings ``g'(x_i)`` (the backbone's features) in the episode's order, with a skip
  connection;
- query: ``f(x, S) = attLSTM(f'(x), g(S), K)``, ``K`` processing steps of an LSTM whose input is
  ``f'(x)`` at every step and whose state is the previous output ``h_{k-1}`` plus a read-out
  ``r_{k-1} = sum_i softmax(h_{k-1}^T g(x_i)) g(x_i)`` (dot-product attention over the support):
  ``h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})`` and ``h_k = h^_k + f'(x)``.

An LSTM's gates are linear in the concatenation of its input and its hidden state, so feeding
``[h_{k-1}, r_{k-1}]`` as the state is implemented exactly by an ``LSTMCell`` whose input is
``[f'(x), r_{k-1}]`` and whose state is ``(h_{k-1}, c_{k-1})``; ``h_0`` and ``c_0`` are zero (so
``r_0`` is the mean of ``g(S)``). ``f'`` and ``g'`` are the same backbone, as in the paper's
experiments.

The predictor returns log-probabilities; they are normalised, so the cross-entropy the base class
would take of them equals their negative log-likelihood, which :meth:`MatchingNetworks.loss` uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks
from metakit.learners.registry import register_learner


def feature_dim(backbone: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The backbone's ``out_dim``, or the width of its output on a dummy batch when it has none."""
    if getattr(backbone, "out_dim", None):
        return int(backbone.out_dim)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = int(backbone(torch.zeros(2, *input_shape)).flatten(1).shape[-1])
    backbone.train(was_training)
    return dim


@register_learner("matching")
class MatchingNetworks(Learner):
    """Matching Networks: cosine attention over the support set, optionally with FCE.

    Args:
        backbone: embedding network (``f'`` and ``g'``).
        task: task description.
        fce: use full context embeddings (bidirectional LSTM over the support set, attention LSTM
            for queries).
        fce_steps: processing steps ``K`` of the query attention LSTM.
        scale: multiplier of the cosine similarities inside the softmax (1 = the paper).
        learn_scale: meta-learn ``scale`` (a sharper softmax than cosine's [-1, 1] range allows
            lower losses; off by default to match the paper).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        fce: bool = False,
        fce_steps: int = 5,
        scale: float = 1.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(backbone, task)
        if fce_steps < 1:
            raise MetakitError(f"matching needs fce_steps >= 1, got {fce_steps}.")
        if scale <= 0:
            raise MetakitError(f"matching needs scale > 0, got {scale}.")
        self.fce, self.fce_steps = fce, fce_steps
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        if fce:
            d = feature_dim(backbone, task.input_shape)
            self.dim = d
            self.support_lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True)
            self.query_cell = nn.LSTMCell(2 * d, d)

    # -- embeddings ---------------------------------------------------------------------------

    def embed_support(self, features: torch.Tensor) -> torch.Tensor:
        """``g(S)``: support features ``[t, n, d]`` -> embeddings ``[t, n, d]`` (FCE or identity)."""
        if not self.fce:
            return features
        out, _ = self.support_lstm(features)
        forward, backward = out.split(self.dim, dim=-1)
        return features + forward + backward

    def embed_query(self, features: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``f(x, S)``: query features ``[t, q, d]`` attending to ``g(S)`` ``[t, n, d]`` for K steps."""
        if not self.fce:
            return features
        t, q, d = features.shape
        x = features.reshape(t * q, d)
        h = x.new_zeros(t * q, d)
        c = x.new_zeros(t * q, d)
        for _ in range(self.fce_steps):
            attention = (h.view(t, q, d) @ support.transpose(-1, -2)).softmax(-1)  # [t, q, n]
            readout = (attention @ support).reshape(t * q, d)
            h, c = self.query_cell(torch.cat([x, readout], -1), (h, c))
            h = h + x
        return h.view(t, q, d)

    # -- classification -----------------------------------------------------------------------

    def attention(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Attention of query embeddings ``[..., q, d]`` over support embeddings ``[..., n, d]``.

        Rows are softmaxes of the scaled cosine similarities, so each sums to 1.
        """
        return self._similarities(query, support).softmax(-1)

    def _similarities(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        q = F.normalize(query, dim=-1)
        s = F.normalize(support, dim=-1)
        return self.scale * q @ s.transpose(-1, -2)

    def log_probs(self, query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
        """Log of the attention-weighted label average: ``[..., q, ways]``.

        Summing the attention of each class in log space (a masked logsumexp) avoids ``log(0)``
        when a class's attention underflows.
        """
        log_attention = self._similarities(query, support).log_softmax(-1)  # [..., q, n]
        member = F.one_hot(support_y, ways).bool()  # [..., n, ways]
        masked = log_attention.unsqueeze(-1).masked_fill(~member.unsqueeze(-3), float("-inf"))
        return masked.logsumexp(-2)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the (log-probability) outputs."""
        return F.nll_loss(outputs, targets)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Embed the support set (with its context under FCE); queries attend to it."""
        support = self.embed_support(self.backbone(support_x).unsqueeze(0))

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            query = self.embed_query(self.backbone(query_x).unsqueeze(0), support)
            return self.log_probs(query, support, support_y.unsqueeze(0), ways).squeeze(0)

        return predict

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """All tasks of the meta-batch go through the backbone and the LSTMs together."""
        batch = as_batch(batch)
        fs, fq = embed_tasks(self.backbone, batch)
        support = self.embed_support(fs)
        query = self.embed_query(fq, support)
        return self.query_loss(self.log_probs(query, support, batch.support_y, batch.ways), batch)
