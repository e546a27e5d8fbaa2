"""TaNP (Lin et al., WWW 2021): a task-adaptive neural process for cold-start recommendation.

A user is a task; instead of gradient steps, an **encoder reads the support ratings** and a
decoder, modulated by what it read, predicts the query ratings. The parts, as in the paper:

* **item (and user) representation** ``x``: embeddings of the user's features (constant on the
  CSV releases, which have none), of the item's genres (averaged) and release year, and of the
  item id (zero for an item never trained on, so a new item is read through its content);
* **encoder**, two paths over the support pairs ``(x_j, y_j)``: a *deterministic* one whose
  mean over the support is the task embedding ``r``, and a *latent* one giving a Gaussian over
  the task variable ``z`` (its prior reads the support, its posterior support + query; training
  minimises their KL divergence, as a neural process does);
* **task identity network**: ``K`` learned cluster centres; ``r`` is softly assigned to them with
  a Student-t kernel and a clustering loss sharpens the assignment (the target distribution of
  deep embedded clustering), giving a refined task embedding ``o``;
* **customisation module** and **decoder**: ``o`` produces FiLM parameters (a scale and a shift
  per hidden unit) for every decoder layer; the decoder maps ``[x_q, z]`` to a rating.

The loss is the query MSE plus ``kl_weight`` times the KL term plus ``cluster_weight`` times the
clustering loss. At test time ``z`` is the prior's mean, so predictions are deterministic.

Why TaNP and not MAMO: MAMO's feature-specific memory is addressed by user profile features,
which MovieLens' CSV releases (ml-latest-small, ml-25m, ml-32m) do not have; TaNP reads a user
from the ratings alone, so the same method and settings hold on every release. TaNP adapts by
amortised inference, with no inner gradient loop, so it uses the shared outer loop
(:func:`metakit.recsys.metamf.train_on_tasks`) and run layer but has no use for
:mod:`metakit.inner`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metakit.errors import MetakitError
from metakit.recsys.melu import Features, masked_mse, pad_tasks
from metakit.recsys.config import TaNPSection
from metakit.recsys.metamf import train_on_tasks
from metakit.recsys.tasks import UserTask


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)


class TaNP(nn.Module):
    """The network of TaNP (see the module docstring).

    Args:
        features: the dataset's side information (sizes of the embedding tables).
        embedding_dim: size of each feature embedding.
        hidden: width of the encoder and decoder layers.
        latent: size of the task variable ``z`` and the task embeddings ``r``, ``o``.
        clusters: ``K``, the task identity network's cluster centres.
        decoder_layers: hidden layers of the decoder (each FiLM-modulated).
        init_rating: the decoder's initial output bias (the training mean).
    """

    def __init__(self, features: Features, embedding_dim: int = 16, hidden: int = 64, latent: int = 32,
                 clusters: int = 8, decoder_layers: int = 2, init_rating: float = 3.5) -> None:
        super().__init__()
        if min(embedding_dim, hidden, latent, clusters, decoder_layers) < 1:
            raise MetakitError("tanp.embedding_dim, hidden, latent, clusters and decoder_layers must all be >= 1.")
        e = embedding_dim
        self.user_embeddings = nn.ModuleList(nn.Embedding(n, e) for n in features.user_sizes)
        self.genre_embedding = nn.Linear(features.genres.shape[1], e, bias=False)
        self.year_embedding = nn.Embedding(features.num_years, e)
        self.item_embedding = nn.Embedding(features.genres.shape[0], e)
        for emb in (*self.user_embeddings, self.year_embedding, self.item_embedding):
            nn.init.normal_(emb.weight, std=0.1)
        self.register_buffer("trained", torch.zeros(features.genres.shape[0]))
        # A fixed per-item offset of the output (see set_item_offset); zero unless set.
        self.register_buffer("item_offset", torch.zeros(features.genres.shape[0]))
        x_dim = e * (len(features.user_sizes) + 3)
        self.deterministic = _mlp([x_dim + 1, hidden, hidden, latent])
        self.latent_encoder = _mlp([x_dim + 1, hidden, hidden])
        self.latent_mean = nn.Linear(hidden, latent)
        self.latent_scale = nn.Linear(hidden, latent)
        self.centres = nn.Parameter(torch.randn(clusters, latent) * 0.1)
        self.film = nn.ModuleList(nn.Linear(latent, 2 * hidden) for _ in range(decoder_layers))
        for film in self.film:  # start as the identity modulation (scale 1, shift 0)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        widths = [x_dim + latent] + [hidden] * decoder_layers
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output = nn.Linear(hidden, 1)
        nn.init.constant_(self.output.bias, init_rating)

    def mark_trained(self, items: np.ndarray) -> None:
        """Record which items the training ratings cover (only their id embeddings are used)."""
        self.trained.zero_()
        self.trained[torch.from_numpy(np.unique(np.asarray(items, dtype=np.int64)))] = 1.0

    def set_item_offset(self, offset: np.ndarray) -> None:
        """Fix each item's output offset (e.g. its shrunk mean rating minus the mean): the decoder learns a residual."""
        self.item_offset.copy_(torch.as_tensor(np.asarray(offset), dtype=torch.float32))

    def represent(self, features: Features, users: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``x`` of every row: user feature, genre, year and item-id embeddings, ``[T, n, x_dim]``."""
        user_codes = features.user[users][:, None, :].expand(*item.shape, -1)
        genres = features.genres[item]
        parts = [emb(user_codes[..., j]) for j, emb in enumerate(self.user_embeddings)]
        parts += [self.genre_embedding(genres) / genres.sum(-1, keepdim=True).clamp(min=1.0),
                  self.year_embedding(features.year[item]),
                  self.trained[item].unsqueeze(-1) * self.item_embedding(item)]
        return torch.cat(parts, dim=-1)

    def latent(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of ``z`` given the rows ``(x, y)`` where ``mask`` is 1."""
        s = _masked_mean(self.latent_encoder(torch.cat([x, y.unsqueeze(-1)], -1)), mask)
        return self.latent_mean(s), 0.1 + 0.9 * torch.sigmoid(self.latent_scale(s))

    def task_identity(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft assignment ``[T, K]`` of task embeddings ``r`` to the centres, and the refined embedding ``o``."""
        q = 1.0 / (1.0 + torch.cdist(r, self.centres) ** 2)
        q = q / q.sum(-1, keepdim=True)
        return q, r + q @ self.centres

    def decode(self, x: torch.Tensor, z: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Ratings ``[T, n]`` of query rows ``x`` for task variables ``z`` and FiLM-modulating embeddings ``o``."""
        h = torch.cat([x, z.unsqueeze(1).expand(-1, x.shape[1], -1)], -1)
        for layer, film in zip(self.decoder, self.film):
            scale, shift = film(o).unsqueeze(1).chunk(2, dim=-1)
            h = torch.relu((1.0 + scale) * layer(h) + shift)
        return self.output(h).squeeze(-1)

    def forward(self, features: Features, support: Sequence[UserTask], query: Sequence[UserTask],
                with_targets: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Query predictions ``[T, n]`` and (``with_targets``: training terms) for a meta-batch."""
        users = torch.as_tensor([t.user for t in support], dtype=torch.long)
        s_item, s_rating, s_mask = pad_tasks([t.support_items for t in support], [t.support_ratings for t in support])
        q_item, q_rating, q_mask = pad_tasks([t.query_items for t in query],
                                             [t.query_ratings for t in query] if with_targets else None)
        xs, xq = self.represent(features, users, s_item), self.represent(features, users, q_item)
        r = _masked_mean(self.deterministic(torch.cat([xs, s_rating.unsqueeze(-1)], -1)), s_mask)
        prior_mean, prior_std = self.latent(xs, s_rating, s_mask)
        q, o = self.task_identity(r)
        terms: dict[str, torch.Tensor] = {}
        if with_targets:
            both = (torch.cat([xs, xq], 1), torch.cat([s_rating, q_rating], 1), torch.cat([s_mask, q_mask], 1))
            post_mean, post_std = self.latent(*both)
            z = post_mean + post_std * torch.randn_like(post_std)
            kl = torch.distributions.kl_divergence(torch.distributions.Normal(post_mean, post_std),
                                                   torch.distributions.Normal(prior_mean, prior_std)).sum(-1)
            target = q ** 2 / q.sum(0, keepdim=True)
            target = (target / target.sum(-1, keepdim=True)).detach()
            terms = {"kl": kl.mean(), "cluster": F.kl_div(q.clamp(min=1e-8).log(), target, reduction="batchmean"),
                     "rating": q_rating, "mask": q_mask}
        else:
            z = prior_mean
        return self.decode(xq, z, o) + self.item_offset[q_item], terms


#: TaNP's settings: sizes, loss weights and the outer loop (the ``tanp`` config section).
TaNPTraining = TaNPSection


def tanp_loss(model: TaNP, features: Features, tasks: Sequence[UserTask], cfg: TaNPTraining) -> torch.Tensor:
    """Query MSE + ``kl_weight`` x KL(posterior || prior) + ``cluster_weight`` x clustering loss."""
    pred, terms = model(features, tasks, tasks, with_targets=True)
    mse = masked_mse(pred, terms["rating"], terms["mask"]).mean()
    return mse + cfg.kl_weight * terms["kl"] + cfg.cluster_weight * terms["cluster"]


def predict_tanp(model: TaNP, features: Features, tasks: Sequence[UserTask], chunk: int = 512) -> list[np.ndarray]:
    """Query predictions of each task from its support set (``z`` at the prior's mean)."""
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(tasks), chunk):
            part = tasks[start:start + chunk]
            pred, _ = model(features, part, part)
            out += [pred[t, :len(task.query_items)].numpy().astype(np.float64) for t, task in enumerate(part)]
    model.train(was_training)
    return out


def train_tanp(model: TaNP, features: Features, make_tasks: Callable[[np.random.Generator], list[UserTask]],
               score: Callable[[Callable[[Sequence[UserTask]], list[np.ndarray]]], float], cfg: TaNPTraining,
               seed: int, on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, object]:
    """Train TaNP on meta-batches of users; keep the epoch with the best validation ``score``."""
    if cfg.kl_weight < 0 or cfg.cluster_weight < 0:
        raise MetakitError(f"tanp.kl_weight and cluster_weight must be >= 0, got {cfg.kl_weight}, {cfg.cluster_weight}.")
    groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    return train_on_tasks(model, groups, lambda part: tanp_loss(model, features, part, cfg),
                          lambda tasks: predict_tanp(model, features, tasks), make_tasks, score, cfg, seed, on_epoch,
                          what="TaNP")
