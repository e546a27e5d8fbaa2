"""MeLU (Lee et al., KDD 2019): meta-learned user preference estimator with global and local parameters.

The network (:class:`RatingNet`) embeds user features (gender, age band, occupation, zip prefix)
and item features (genres, release year), concatenates the embeddings and passes them through
*decision layers* (fully connected + ReLU) to a linear rating output. Its parameters are of two
kinds:

* **global** — the embedding tables (:attr:`RatingNet.global_names`): updated only in the outer
  loop, by the optimiser, from the query losses of a meta-batch of users;
* **local** — the decision layers and the output layer (:attr:`RatingNet.local_names`): for each
  user, ``local_steps`` gradient steps on the user's support ratings start from their meta-learned
  values (MeLU-1 and MeLU-5 take 1 and 5 steps); the outer loop also learns that starting point.

Parameters are handled functionally, by the MAML family's inner loop (:mod:`metakit.inner`):
:func:`adapt` returns a *new* dict of local tensors and never touches the module, so the global
embeddings cannot move in the inner loop. Tasks are batched: every local tensor gets a leading
task dimension (the shared values expanded), ragged support/query sets are padded with a mask,
and the gradient of the sum of per-task losses gives each task its own inner gradient, so a
meta-batch of users is one forward pass. Second-order meta-gradients by default (``first_order=False``), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metakit import inner
from metakit.errors import MetakitError
from metakit.recsys.config import MeluTraining
from metakit.recsys.movielens import RatingsData
from metakit.recsys.tasks import UserTask

Params = dict[str, torch.Tensor]


@dataclass
class Features:
    """The side information of every user and item, as tensors indexed by user/item index."""

    user: torch.Tensor  # [U, 4] int64
    genres: torch.Tensor  # [I, G] float32
    year: torch.Tensor  # [I] int64
    user_sizes: list[int]
    num_years: int

    @classmethod
    def from_data(cls, data: RatingsData) -> Features:
        """Tensors of ``data``'s features."""
        return cls(torch.from_numpy(data.user_features).long(), torch.from_numpy(data.item_genres).float(),
                   torch.from_numpy(data.item_year).long(), data.user_vocab_sizes(), len(data.years))


@dataclass
class Batch:
    """Padded rows of several tasks: features, ratings and a mask of the real rows (``[T, n, ...]``)."""

    user: torch.Tensor
    genres: torch.Tensor
    year: torch.Tensor
    rating: torch.Tensor
    mask: torch.Tensor
    item: torch.Tensor | None = None  # item indices, for networks with item-id embeddings


def pad_tasks(items: Sequence[np.ndarray], ratings: Sequence[np.ndarray] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged per-task item lists as ``[T, n]`` item indices, ratings (0 where unknown) and a mask of real rows."""
    T = len(items)
    n = max(1, max((len(i) for i in items), default=1))
    item_idx = torch.zeros(T, n, dtype=torch.long)
    rating = torch.zeros(T, n)
    mask = torch.zeros(T, n)
    for t, its in enumerate(items):
        m = len(its)
        item_idx[t, :m] = torch.from_numpy(np.asarray(its, dtype=np.int64))
        mask[t, :m] = 1.0
        if ratings is not None:
            rating[t, :m] = torch.from_numpy(np.asarray(ratings[t], dtype=np.float32))
    return item_idx, rating, mask


def make_batch(features: Features, users: Sequence[int], items: Sequence[np.ndarray],
               ratings: Sequence[np.ndarray] | None = None) -> Batch:
    """Pad ``items[t]`` (rated by ``users[t]``) into one :class:`Batch` (rating 0 where unknown)."""
    T = len(users)
    item_idx, rating, mask = pad_tasks(items, ratings)
    n = item_idx.shape[1]
    user_idx = torch.as_tensor(list(users), dtype=torch.long)[:, None].expand(T, n)
    return Batch(features.user[user_idx], features.genres[item_idx], features.year[item_idx], rating, mask, item_idx)


def rows_batch(features: Features, users: np.ndarray, items: np.ndarray, ratings: np.ndarray | None = None) -> Batch:
    """Independent (user, item) rows as one task of ``len(users)`` rows (pooled, non-meta training)."""
    u = torch.from_numpy(np.asarray(users, dtype=np.int64))
    i = torch.from_numpy(np.asarray(items, dtype=np.int64))
    r = torch.zeros(len(u)) if ratings is None else torch.from_numpy(np.asarray(ratings, dtype=np.float32))
    return Batch(features.user[u][None], features.genres[i][None], features.year[i][None], r[None], torch.ones(1, len(u)),
                 i[None])


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each task's mean squared error over its real rows, ``[T]``."""
    return ((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # Shared weights [out, in] or per-task weights [T, out, in] on x [T, n, in].
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class RatingNet(nn.Module):
    """Feature embeddings -> decision layers -> rating (MeLU's estimator; also the neural baselines').

    Args:
        user_sizes: rows of the gender, age, occupation and zip-prefix embedding tables.
        num_genres: genre flags per item (their embeddings are averaged).
        num_years: rows of the release-year table.
        embedding_dim: size of every embedding (32 in the paper).
        hidden: widths of the decision layers (64, 64 in the paper).
        init_rating: initial output bias (the training mean, so training starts from a sane rating).
        num_items: if > 0, also a (global) embedding per item id — not in the MeLU paper, whose
            networks see item content only; rows start at zero, so an item never trained on
            (a new item) enters as exactly neutral input.
        global_layers: how many of the first decision layers are global too (0, the paper: all
            decision layers are local).
    """

    def __init__(self, user_sizes: Sequence[int], num_genres: int, num_years: int, embedding_dim: int = 32,
                 hidden: Sequence[int] = (64, 64), init_rating: float = 3.5, num_items: int = 0,
                 global_layers: int = 0) -> None:
        super().__init__()
        if embedding_dim < 1 or not hidden or any(h < 1 for h in hidden):
            raise MetakitError(f"model.embedding_dim and model.hidden must be positive, got {embedding_dim} and {list(hidden)}.")
        if not 0 <= global_layers <= len(hidden):
            raise MetakitError(f"model.global_layers must be in 0..{len(hidden)} (the decision layers), got {global_layers}.")
        self.global_layers = global_layers
        self.user_embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in user_sizes)
        self.genre_embedding = nn.Linear(num_genres, embedding_dim, bias=False)
        self.year_embedding = nn.Embedding(num_years, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim) if num_items > 0 else None
        if self.item_embedding is not None:
            nn.init.zeros_(self.item_embedding.weight)
        width = embedding_dim * (len(user_sizes) + 2 + (num_items > 0))
        layers = []
        for h in hidden:
            layers.append(nn.Linear(width, h))
            width = h
        self.decision = nn.ModuleList(layers)
        self.output = nn.Linear(width, 1)
        nn.init.constant_(self.output.bias, init_rating)
        for emb in (*self.user_embeddings, self.year_embedding):
            # Small rows, so a category never seen in training (a new item's release year, say)
            # enters as near-neutral input instead of N(0, 1) noise.
            nn.init.normal_(emb.weight, std=0.1)

    @property
    def local_names(self) -> list[str]:
        """Names of the local parameters (decision layers after the first ``global_layers``, and output), adapted per user."""
        local = ("output.", *(f"decision.{i}." for i in range(self.global_layers, len(self.decision))))
        return [n for n, _ in self.named_parameters() if n.startswith(local)]

    @property
    def global_names(self) -> list[str]:
        """Names of the global parameters (embeddings), updated only in the outer loop."""
        local = set(self.local_names)
        return [n for n, _ in self.named_parameters() if n not in local]

    def local_parameters(self) -> Params:
        """The local parameters as a name -> tensor dict (the inner loop's starting point)."""
        own = dict(self.named_parameters())
        return {n: own[n] for n in self.local_names}

    def embed(self, batch: Batch) -> torch.Tensor:
        """The concatenated user and item embeddings of every row, ``[T, n, width]``."""
        users = [emb(batch.user[..., j]) for j, emb in enumerate(self.user_embeddings)]
        count = batch.genres.sum(-1, keepdim=True).clamp(min=1.0)
        genres = self.genre_embedding(batch.genres) / count
        parts = [*users, genres, self.year_embedding(batch.year)]
        if self.item_embedding is not None:
            if batch.item is None:
                raise MetakitError("this network embeds item ids; build its batches with make_batch or rows_batch.")
            parts.append(self.item_embedding(batch.item))
        return torch.cat(parts, dim=-1)

    def decide(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Ratings ``[T, n]`` from embeddings ``x`` with local ``params`` (shared or per task; default: own)."""
        p = dict(self.named_parameters()) if params is None else {**dict(self.named_parameters()), **params}
        h = x
        for i in range(len(self.decision)):
            h = torch.relu(_linear(h, p[f"decision.{i}.weight"], p[f"decision.{i}.bias"]))
        return _linear(h, p["output.weight"], p["output.bias"]).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Ratings with the shared (unadapted) parameters."""
        return self.decide(self.embed(batch))


LocalLR = float | Params


def adapt(net: RatingNet, x: torch.Tensor, rating: torch.Tensor, mask: torch.Tensor, steps: int, lr: LocalLR,
          create_graph: bool) -> Params:
    """``steps`` gradient steps of the local parameters on each task's support rows (:func:`metakit.inner.adapt`).

    ``lr`` is one step size, or (Meta-SGD) a tensor per local parameter, element-wise step sizes
    shaped like it. Returns per-task local parameters (leading dimension ``T``); the module's
    parameters, global and local, are left untouched. ``create_graph`` keeps the inner gradients'
    graph (second-order meta-gradients, also through learned step sizes); without it the inner
    gradients are constants, and the result's derivative with respect to the starting point is
    the identity (first-order MAML).
    """
    T = x.shape[0]
    start = {n: p.expand(T, *p.shape) for n, p in net.local_parameters().items()}

    def support_loss(params: Params, _step: int) -> torch.Tensor:
        return masked_mse(net.decide(x, params), rating, mask).sum()  # the sum: every task gets its own gradient

    return inner.adapt(start, support_loss, steps, lr, first_order=not create_graph)


def meta_loss(net: RatingNet, support: Batch, query: Batch, steps: int, lr: LocalLR, first_order: bool) -> torch.Tensor:
    """MeLU's outer objective on a meta-batch: mean query MSE after adapting to each support set."""
    params = adapt(net, net.embed(support), support.rating, support.mask, steps, lr, create_graph=not first_order)
    return masked_mse(net.decide(net.embed(query), params), query.rating, query.mask).mean()


def predict_tasks(net: RatingNet, features: Features, tasks: Sequence[UserTask], steps: int, lr: LocalLR,
                  chunk: int = 256) -> list[np.ndarray]:
    """Query predictions for each task after ``steps`` local steps of size ``lr`` on its support set (0: none)."""
    was_training = net.training
    net.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        users = [t.user for t in part]
        query = make_batch(features, users, [t.query_items for t in part])
        with torch.no_grad():
            x_q = net.embed(query)
            if steps:
                support = make_batch(features, users, [t.support_items for t in part], [t.support_ratings for t in part])
                x_s = net.embed(support)
        if isinstance(lr, dict):
            lr = {n: v.detach() for n, v in lr.items()}
        params = adapt(net, x_s, support.rating, support.mask, steps, lr, create_graph=False) if steps else None
        with torch.no_grad():
            pred = net.decide(x_q, params)
        out += [pred[t, :len(task.query_items)].numpy().astype(np.float64) for t, task in enumerate(part)]
    net.train(was_training)
    return out


@dataclass
class MetaTrainConfig(MeluTraining):
    """Outer/inner loop settings of :func:`meta_train`: one variant (``local_steps``), one local lr."""

    local_steps: int = 5
    local_lr: float = 5e-3
    epochs: int = 30


def meta_train(net: RatingNet, features: Features, make_tasks: Callable[[np.random.Generator], list[UserTask]],
               val_tasks: Sequence[UserTask], cfg: MetaTrainConfig, seed: int,
               on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, object]:
    """Meta-train ``net`` (MeLU); keep the weights of the epoch with the best validation MAE.

    ``make_tasks(rng)`` returns the epoch's training tasks (a fresh support/query partition of
    each training user). Each outer step adapts the local parameters to a meta-batch of users'
    support sets and updates every parameter (global embeddings and the local starting point)
    with Adam on the mean query MSE. With ``cfg.learn_local_lr`` (Meta-SGD, Li et al. 2017) the
    local step sizes are meta-learned too, one per element of each local parameter. Returns the
    per-epoch history, the selected epoch and the step sizes (``"local_lr"``: ``cfg.local_lr`` or
    the learned tensors of that epoch).
    """
    from metakit.recsys.metrics import mae

    if cfg.learn_local_lr and cfg.first_order:
        raise MetakitError("melu.learn_local_lr needs second-order meta-gradients; set melu.first_order=false.")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    lr: LocalLR = cfg.local_lr
    extra: list[torch.Tensor] = []
    if cfg.learn_local_lr:
        lr = {n: nn.Parameter(torch.full_like(p, cfg.local_lr)) for n, p in net.local_parameters().items()}
        extra = list(lr.values())
    # Weight decay would pull learned step sizes toward 0, so it applies to the network only.
    opt = torch.optim.Adam([{"params": list(net.parameters()), "weight_decay": cfg.weight_decay},
                            {"params": extra, "weight_decay": 0.0}], lr=cfg.lr)

    def snapshot() -> tuple[dict[str, torch.Tensor], LocalLR]:
        own = {k: v.clone() for k, v in net.state_dict().items()}
        return own, ({n: v.detach().clone() for n, v in lr.items()} if isinstance(lr, dict) else lr)

    best = (float("inf"), 0, *snapshot())
    history = []
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        tasks = make_tasks(rng)
        order = rng.permutation(len(tasks))
        losses = []
        for start in range(0, len(order), cfg.meta_batch):
            part = [tasks[j] for j in order[start:start + cfg.meta_batch]]
            users = [t.user for t in part]
            support = make_batch(features, users, [t.support_items for t in part], [t.support_ratings for t in part])
            query = make_batch(features, users, [t.query_items for t in part], [t.query_ratings for t in part])
            opt.zero_grad()
            loss = meta_loss(net, support, query, cfg.local_steps, lr, cfg.first_order)
            if not torch.isfinite(loss):
                raise MetakitError(f"the meta-training loss became {loss.item()} at epoch {epoch}; lower melu.lr or melu.local_lr.")
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_([*net.parameters(), *extra], cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        val = mae(predict_tasks(net, features, val_tasks, cfg.local_steps, lr),
                  [t.query_ratings for t in val_tasks]) if val_tasks else float("nan")
        train_loss = float(np.mean(losses)) if losses else float("nan")
        history.append({"epoch": epoch, "train_mse": train_loss, "val_mae": val})
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val)
        if not val_tasks or val < best[0]:
            best = (val, epoch, *snapshot())
    net.load_state_dict(best[2])
    return {"history": history, "best_epoch": best[1], "best_val_mae": best[0], "local_lr": best[3]}
