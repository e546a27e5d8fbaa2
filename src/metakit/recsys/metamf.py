"""Meta-learned matrix factorisation: a global item side, a learned user prior, a few inner steps.

The rating of user ``u`` for item ``i`` is the biased-MF form ``mu + b_i + b_u + q_i . p_u``:

* **global** (the outer loop's, updated by Adam from the query losses of a meta-batch of users):
  the mean ``mu``; each item's vector ``q_i`` and bias ``b_i``, each the sum of an item-id part
  and a content part (genre flags, averaged, and the release year), so an item never seen in
  training (a new item) still has a vector and a bias from its content, and its id part is
  exactly zero;
* **local** (a user's): ``p_u`` and ``b_u``. A new user starts from a learned prior
  ``(p_0, b_0)`` and takes ``steps`` gradient steps on the squared error of its support ratings
  through :func:`metakit.inner.adapt` (squared error summed over the support and divided by
  ``n + c``, ``c`` a learned pseudo-count, so that few ratings move a user less), with step sizes that are meta-learned too, one per
  element, step and tensor (Meta-SGD, Li et al. 2017, with per-step rates as in MAML++).

So the model is trained so that a few steps from the prior fit a new user: the prior, the step
sizes and the item side are what a user's first ratings are read through. Users of a meta-batch
are one grouped computation (every local tensor has a leading task dimension, ragged support
sets are padded with a mask; the sum of per-task losses gives each task its own gradient).
Meta-training draws each task's support size at random between 1 and the user's training
ratings (log-uniformly), so the step sizes learn to act on one rating as on fifty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from metakit import inner
from metakit.errors import MetakitError
from metakit.recsys.config import TaskTraining
from metakit.recsys.melu import Features, masked_mse, pad_tasks
from metakit.recsys.tasks import UserTask

Params = dict[str, torch.Tensor]


class MetaMF(nn.Module):
    """Biased MF whose item side is global and whose user side is adapted from a learned prior.

    Args:
        num_items, num_genres, num_years: sizes of the item tables.
        factors: latent dimension ``k``.
        steps: inner gradient steps (the step sizes are learned per step).
        init_lr: initial value of every learned step size.
        init_rating: initial ``mu`` (the training mean).
        pseudo_count: initial value of the learned pseudo-count ``c`` that shrinks a user with
            ``n`` support ratings by ``n / (n + c)`` (see :meth:`adapt`).
    """

    def __init__(self, num_items: int, num_genres: int, num_years: int, factors: int = 16, steps: int = 3,
                 init_lr: float = 0.5, init_rating: float = 3.5, pseudo_count: float = 3.0) -> None:
        super().__init__()
        if factors < 1 or steps < 1 or init_lr <= 0:
            raise MetakitError(f"metamf needs factors >= 1, steps >= 1 and init_lr > 0, got {factors}, {steps}, {init_lr}.")
        self.steps = steps
        self.mu = nn.Parameter(torch.tensor(float(init_rating)))
        self.item_factors = nn.Embedding(num_items, factors)
        self.item_bias = nn.Embedding(num_items, 1)
        self.genre_factors = nn.Linear(num_genres, factors, bias=False)
        self.genre_bias = nn.Linear(num_genres, 1, bias=False)
        self.year_factors = nn.Embedding(num_years, factors)
        self.year_bias = nn.Embedding(num_years, 1)
        for emb in (self.item_factors, self.year_factors):
            nn.init.normal_(emb.weight, std=0.05)
        for table in (self.item_bias.weight, self.year_bias.weight, self.genre_bias.weight):
            nn.init.zeros_(table)
        nn.init.normal_(self.genre_factors.weight, std=0.05)
        self.user_prior = nn.Parameter(torch.zeros(factors))
        self.bias_prior = nn.Parameter(torch.zeros(()))
        # Per step, per element; the log keeps them positive.
        self.log_lr_user = nn.Parameter(torch.full((steps, factors), math.log(init_lr)))
        self.log_lr_bias = nn.Parameter(torch.full((steps,), math.log(init_lr)))
        self.log_pseudo_count = nn.Parameter(torch.tensor(math.log(pseudo_count)))
        # Items trained on; the id part of any other item (a new item) is zero.
        self.register_buffer("trained", torch.zeros(num_items))
        # A fixed per-item offset of the bias (see set_item_offset); zero unless set.
        self.register_buffer("item_offset", torch.zeros(num_items))

    def mark_trained(self, items: np.ndarray) -> None:
        """Record which items the training ratings cover (only their id parts are used)."""
        self.trained.zero_()
        self.trained[torch.from_numpy(np.unique(np.asarray(items, dtype=np.int64)))] = 1.0

    def set_item_offset(self, offset: np.ndarray) -> None:
        """Fix each item's bias offset (e.g. its shrunk mean rating minus ``mu``): the learned biases are a residual to it."""
        self.item_offset.copy_(torch.as_tensor(np.asarray(offset), dtype=torch.float32))

    def init_items(self, mu: float, factors: np.ndarray, bias: np.ndarray) -> None:
        """Start the item side from a fitted biased MF (its mean, item factors and item biases).

        Meta-training then starts where plain MF ends and learns the user prior and step sizes
        (and refines the item side) for few-rating users.
        """
        if factors.shape != tuple(self.item_factors.weight.shape):
            raise MetakitError(f"MF item factors of shape {factors.shape} do not fit meta-MF's {tuple(self.item_factors.weight.shape)}.")
        with torch.no_grad():
            self.mu.fill_(float(mu))
            self.item_factors.weight.copy_(torch.as_tensor(factors, dtype=torch.float32))
            self.item_bias.weight.copy_(torch.as_tensor(bias, dtype=torch.float32)[:, None])
            for table in (self.genre_factors.weight, self.year_factors.weight):
                table.mul_(0.1)  # the content part starts as a small correction to the MF vectors

    def items(self, item: torch.Tensor, genres: torch.Tensor, year: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors ``[..., k]`` and biases ``[...]`` of item indices ``item`` with their content."""
        seen = self.trained[item].unsqueeze(-1)
        count = genres.sum(-1, keepdim=True).clamp(min=1.0)
        q = seen * self.item_factors(item) + self.genre_factors(genres) / count + self.year_factors(year)
        b = (seen * self.item_bias(item) + self.genre_bias(genres) / count + self.year_bias(year)
             + self.item_offset[item].unsqueeze(-1))
        return q, b.squeeze(-1)

    def rate(self, q: torch.Tensor, b: torch.Tensor, user: Params) -> torch.Tensor:
        """Ratings ``[T, n]`` of item vectors/biases ``[T, n, k]``/``[T, n]`` for per-task users ``[T, k]``/``[T]``."""
        return self.mu + b + user["bias"].unsqueeze(-1) + (q * user["user"].unsqueeze(1)).sum(-1)

    def step_sizes(self, step: int) -> Params:
        """The learned step sizes of inner step ``step``."""
        return {"user": self.log_lr_user[step].exp(), "bias": self.log_lr_bias[step].exp()}

    def adapt(self, q: torch.Tensor, b: torch.Tensor, rating: torch.Tensor, mask: torch.Tensor,
              first_order: bool = False) -> Params:
        """Each task's user vector and bias after ``steps`` steps from the prior on its support rows."""
        T = q.shape[0]
        start = {"user": self.user_prior.expand(T, -1), "bias": self.bias_prior.expand(T)}

        # Squared error summed over the support and divided by (n + a learned pseudo-count): a
        # user with one rating moves n / (n + c) as far as one with many, as a ridge solve would.
        weight = mask / (mask.sum(-1, keepdim=True) + self.log_pseudo_count.exp())

        def support_loss(params: Params, _step: int) -> torch.Tensor:
            return ((self.rate(q, b, params) - rating) ** 2 * weight).sum()  # the sum: a gradient per task

        return inner.adapt(start, support_loss, self.steps, self.step_sizes, first_order=first_order)


#: The outer-loop settings of :func:`train_metamf` (the ``metamf`` config section is one).
MetaMFTraining = TaskTraining


def _rows(features: Features, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return item, features.genres[item], features.year[item]


def meta_loss(model: MetaMF, features: Features, support: Sequence[UserTask], query: Sequence[UserTask],
              first_order: bool = False) -> torch.Tensor:
    """Mean query MSE after adapting each task's user to its support set (one grouped computation)."""
    s_item, s_rating, s_mask = pad_tasks([t.support_items for t in support], [t.support_ratings for t in support])
    q_item, q_rating, q_mask = pad_tasks([t.query_items for t in query], [t.query_ratings for t in query])
    qs, bs = model.items(*_rows(features, s_item))
    user = model.adapt(qs, bs, s_rating, s_mask, first_order)
    qq, bq = model.items(*_rows(features, q_item))
    return masked_mse(model.rate(qq, bq, user), q_rating, q_mask).mean()


def predict_metamf(model: MetaMF, features: Features, tasks: Sequence[UserTask], chunk: int = 512) -> list[np.ndarray]:
    """Query predictions of each task after adapting to its support set."""
    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        s_item, s_rating, s_mask = pad_tasks([t.support_items for t in part], [t.support_ratings for t in part])
        q_item, _, _ = pad_tasks([t.query_items for t in part])
        qs, bs = model.items(*_rows(features, s_item))
        user = model.adapt(qs.detach(), bs.detach(), s_rating, s_mask, first_order=True)
        with torch.no_grad():
            qq, bq = model.items(*_rows(features, q_item))
            pred = model.rate(qq, bq, {k: v.detach() for k, v in user.items()})
        out += [pred[t, :len(task.query_items)].numpy().astype(np.float64) for t, task in enumerate(part)]
    model.train(was_training)
    return out


def random_support_size(task: UserTask, rng: np.random.Generator, earliest: bool = False) -> UserTask:
    """``task`` with its support cut to a log-uniform random size in ``1..len(support)``.

    The kept ratings are a random subset, or with ``earliest`` the earliest ones (the
    cold-start curves' protocol: a user's first ratings predict its later ones).
    """
    n = len(task.support_items)
    if n <= 1:
        return task
    size = int(np.clip(np.round(np.exp(rng.uniform(0.0, np.log(n)))), 1, n))
    keep = np.arange(size) if earliest else np.sort(rng.choice(n, size, replace=False))
    return UserTask(task.user, task.support_items[keep], task.support_ratings[keep], task.query_items,
                    task.query_ratings, task.support_times[keep], task.query_times)


def train_on_tasks(model: nn.Module, param_groups: list[dict[str, object]],
                   batch_loss: Callable[[list[UserTask]], torch.Tensor],
                   predict: Callable[[Sequence[UserTask]], list[np.ndarray]],
                   make_tasks: Callable[[np.random.Generator], list[UserTask]],
                   score: Callable[[Callable[[Sequence[UserTask]], list[np.ndarray]]], float], cfg: TaskTraining,
                   seed: int, on_epoch: Callable[[int, float, float], None] | None = None, what: str = "meta-MF",
                   ) -> dict[str, object]:
    """The outer loop shared by meta-MF and TaNP: Adam on ``batch_loss`` of meta-batches of users.

    Each epoch draws ``make_tasks(rng)``, cuts every task's support to a random size
    (:func:`random_support_size`), and steps on ``batch_loss(tasks)`` per meta-batch; the
    validation ``score(predict)`` (lower is better) picks the epoch whose weights are kept.
    """
    if cfg.epochs < 1 or cfg.meta_batch < 1 or cfg.lr <= 0:
        raise MetakitError(f"{what}: epochs, meta_batch and lr must be positive, got {cfg.epochs}, {cfg.meta_batch}, {cfg.lr}.")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(param_groups, lr=cfg.lr)
    best = (float("inf"), 0, {k: v.clone() for k, v in model.state_dict().items()})
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        tasks = [random_support_size(t, rng, cfg.temporal) for t in make_tasks(rng)]
        order = rng.permutation(len(tasks))
        losses = []
        for start in range(0, len(order), cfg.meta_batch):
            opt.zero_grad()
            loss = batch_loss([tasks[j] for j in order[start:start + cfg.meta_batch]])
            if not torch.isfinite(loss):
                raise MetakitError(f"the {what} loss became {loss.item()} at epoch {epoch}; lower its lr.")
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        val = score(predict)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mae": val})
        if on_epoch is not None:
            on_epoch(epoch, history[-1]["train_loss"], val)
        if val < best[0]:
            best = (val, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return {"history": history, "best_epoch": best[1], "best_val_mae": best[0]}


def train_metamf(model: MetaMF, features: Features, make_tasks: Callable[[np.random.Generator], list[UserTask]],
                 score: Callable[[Callable[[Sequence[UserTask]], list[np.ndarray]]], float], cfg: MetaMFTraining,
                 seed: int, on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, object]:
    """Meta-train ``model``; keep the epoch with the best validation ``score`` (lower is better).

    ``make_tasks(rng)`` gives the epoch's training tasks; each gets a random support size
    (:func:`random_support_size`). ``score(predict)`` scores a prediction function on the
    validation users (e.g. MAE averaged over several support sizes). The item side gets L2
    weight decay (Adam's, on every row at every step), which keeps rarely rated items' vectors
    small; the prior and the step sizes get none.
    """
    item_side = [p for n, p in model.named_parameters() if n.startswith(("item_", "genre_", "year_"))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("item_", "genre_", "year_"))]
    groups = [{"params": item_side, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    info = train_on_tasks(model, groups, lambda part: meta_loss(model, features, part, part, cfg.first_order),
                          lambda tasks: predict_metamf(model, features, tasks), make_tasks, score, cfg, seed, on_epoch)
    return {**info, "learned_lr_user": model.log_lr_user.detach().exp().mean(-1).tolist(),
            "learned_lr_bias": model.log_lr_bias.detach().exp().tolist(),
            "learned_pseudo_count": float(model.log_pseudo_count.detach().exp())}
