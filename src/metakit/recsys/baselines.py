"""Baselines on the same splits as MeLU: what a recommender-systems reader asks MeLU to beat.

* :class:`GlobalMean` — the training mean rating, for everyone and everything.
* :class:`ItemPopularity` — each item's mean training rating, shrunk toward the global mean by
  ``shrinkage`` pseudo-ratings (so a popular, well-rated item scores high and a rarely rated one
  stays near the mean); unseen (new) items get the global mean. Its ranking is "most popular
  among well-rated" for every user alike.
* :class:`BiasedMF` — ``mu + b_u + b_i + p_u . q_i`` fitted by alternating ridge regressions
  (ALS). A user it was not trained on (a new user) is *folded in*: ``b_u, p_u`` solved on the
  user's support ratings with the item side fixed; a new item has ``b_i = 0, q_i = 0``.
* ``nn_global`` (:func:`train_global`) — MeLU's own network trained on the pooled training
  ratings, without meta-learning, and used as is.
* ``nn_finetune`` — that network with its local (decision) layers fine-tuned per user on the
  support set by plain gradient steps (:func:`metakit.recsys.melu.predict_tasks`); steps and
  step size are chosen on the validation users.

Hyperparameters (MF factors and regularisation, fine-tuning steps and step size, epochs of the
networks; MeLU's local step size and epoch) are chosen on the validation users, never on a test
scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metakit.errors import MetakitError
from metakit.recsys.melu import Features, RatingNet, predict_tasks, rows_batch
from metakit.recsys.metrics import mae
from metakit.recsys.tasks import Split, UserTask


class GlobalMean:
    """Predicts the mean training rating."""

    def __init__(self, mu: float = 0.0) -> None:
        self.mu = float(mu)

    def fit(self, split: Split) -> GlobalMean:
        """Learn the mean of ``split``'s training ratings."""
        self.mu = float(split.train_rating.mean())
        return self

    def predict(self, tasks: Sequence[UserTask]) -> list[np.ndarray]:
        """The mean for every query rating."""
        return [np.full(len(t.query_items), self.mu) for t in tasks]

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` needs."""
        return {"mu": self.mu}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GlobalMean:
        """Rebuild from :meth:`state`."""
        return cls(state["mu"])


class ItemPopularity:
    """Each item's shrunk mean training rating; the global mean for unseen items."""

    def __init__(self, shrinkage: float = 10.0) -> None:
        if shrinkage < 0:
            raise MetakitError(f"baselines.popularity_shrinkage must be >= 0, got {shrinkage}.")
        self.shrinkage = float(shrinkage)
        self.scores = np.zeros(0)

    def fit(self, split: Split, num_items: int) -> ItemPopularity:
        """Per-item ``(sum + shrinkage * mu) / (count + shrinkage)`` over training ratings."""
        mu = float(split.train_rating.mean())
        total = np.bincount(split.train_item, weights=split.train_rating, minlength=num_items)
        count = np.bincount(split.train_item, minlength=num_items)
        self.scores = np.where(count + self.shrinkage > 0, (total + self.shrinkage * mu) / np.maximum(count + self.shrinkage, 1e-12), mu)
        self.scores[count == 0] = mu
        return self

    def predict(self, tasks: Sequence[UserTask]) -> list[np.ndarray]:
        """Every query item's score."""
        return [self.scores[t.query_items] for t in tasks]

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` needs."""
        return {"shrinkage": self.shrinkage, "scores": self.scores}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemPopularity:
        """Rebuild from :meth:`state`."""
        out = cls(state["shrinkage"])
        out.scores = np.asarray(state["scores"], dtype=np.float64)
        return out


def _ridge(features: np.ndarray, target: np.ndarray, reg: float) -> np.ndarray:
    d = features.shape[1]
    return np.linalg.solve(features.T @ features + reg * np.eye(d), features.T @ target)


def _groups(keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(keys) else np.zeros(0, int)
    ends = [*starts[1:].tolist(), len(keys)]
    return [(int(sorted_keys[s]), order[s:e]) for s, e in zip(starts.tolist(), ends)]


class BiasedMF:
    """Biased matrix factorisation by ALS, with fold-in of users it was not trained on.

    Args:
        factors: latent dimension.
        reg: ridge penalty of every per-user and per-item solve (biases and factors alike).
        iters: ALS sweeps (users, then items).
        seed: initialisation of the item factors.
        foldin_reg: ridge penalty of a new user's fold-in (``None``: ``reg``, plain fold-in).
    """

    def __init__(self, factors: int = 16, reg: float = 5.0, iters: int = 15, seed: int = 0,
                 foldin_reg: float | None = None) -> None:
        if factors < 1 or reg <= 0 or iters < 1 or (foldin_reg is not None and foldin_reg <= 0):
            raise MetakitError(f"biased MF needs factors >= 1, reg > 0, iters >= 1 and a fold-in reg > 0, got "
                               f"{factors}, {reg}, {iters}, {foldin_reg}.")
        self.factors, self.reg, self.iters, self.seed = factors, float(reg), iters, seed
        self.foldin_reg = foldin_reg
        self.mu = 0.0
        self.user_bias = self.item_bias = np.zeros(0)
        self.P = self.Q = np.zeros((0, factors))
        self.known_users = np.zeros(0, dtype=bool)

    def fit(self, split: Split, num_users: int, num_items: int) -> BiasedMF:
        """ALS on ``split``'s training ratings."""
        u, i, r = split.train_user, split.train_item, split.train_rating.astype(np.float64)
        rng = np.random.default_rng(self.seed)
        k = self.factors
        self.mu = float(r.mean())
        self.user_bias, self.item_bias = np.zeros(num_users), np.zeros(num_items)
        self.P = np.zeros((num_users, k))
        self.Q = 0.1 * rng.normal(size=(num_items, k))
        by_user, by_item = _groups(u), _groups(i)
        for _ in range(self.iters):
            for user, idx in by_user:
                x = np.c_[np.ones(len(idx)), self.Q[i[idx]]]
                w = _ridge(x, r[idx] - self.mu - self.item_bias[i[idx]], self.reg)
                self.user_bias[user], self.P[user] = w[0], w[1:]
            for item, idx in by_item:
                x = np.c_[np.ones(len(idx)), self.P[u[idx]]]
                w = _ridge(x, r[idx] - self.mu - self.user_bias[u[idx]], self.reg)
                self.item_bias[item], self.Q[item] = w[0], w[1:]
        seen_items = np.zeros(num_items, dtype=bool)
        seen_items[i] = True
        self.Q[~seen_items] = 0.0  # an item never rated in training has no factors, only the mean
        self.known_users = np.zeros(num_users, dtype=bool)
        self.known_users[u] = True
        return self

    def fold_in(self, items: np.ndarray, ratings: np.ndarray) -> tuple[float, np.ndarray]:
        """``(b_u, p_u)`` of a new user from its ratings, item side fixed."""
        if len(items) == 0:
            return 0.0, np.zeros(self.factors)
        x = np.c_[np.ones(len(items)), self.Q[items]]
        reg = self.reg if self.foldin_reg is None else self.foldin_reg
        w = _ridge(x, ratings.astype(np.float64) - self.mu - self.item_bias[items], reg)
        return float(w[0]), w[1:]

    def predict(self, tasks: Sequence[UserTask]) -> list[np.ndarray]:
        """Trained users use their factors; others are folded in on their support ratings."""
        out = []
        for t in tasks:
            if self.known_users[t.user]:
                b, p = self.user_bias[t.user], self.P[t.user]
            else:
                b, p = self.fold_in(t.support_items, t.support_ratings)
            out.append(self.mu + b + self.item_bias[t.query_items] + self.Q[t.query_items] @ p)
        return out

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` needs."""
        return {"factors": self.factors, "reg": self.reg, "iters": self.iters, "seed": self.seed, "mu": self.mu,
                "foldin_reg": self.foldin_reg,
                "user_bias": self.user_bias, "item_bias": self.item_bias, "P": self.P, "Q": self.Q,
                "known_users": self.known_users}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BiasedMF:
        """Rebuild from :meth:`state`."""
        out = cls(state["factors"], state["reg"], state["iters"], state["seed"], state.get("foldin_reg"))
        out.mu = state["mu"]
        for name in ("user_bias", "item_bias", "P", "Q", "known_users"):
            setattr(out, name, np.asarray(state[name]))
        return out


def validation_score(predict: Callable[[Sequence[UserTask]], list[np.ndarray]],
                     val_sets: Sequence[Sequence[UserTask]]) -> float:
    """MAE of ``predict`` averaged over validation task sets (e.g. full support and few ratings); 0 if none."""
    scores = [mae(predict(tasks), [t.query_ratings for t in tasks]) for tasks in val_sets if tasks]
    return float(np.mean(scores)) if scores else 0.0


def select_mf(split: Split, num_users: int, num_items: int, factors: int | Sequence[int], regs: Sequence[float],
              iters: int, seed: int, val_sets: Sequence[Sequence[UserTask]] | None = None,
              foldin_regs: Sequence[float] = ()) -> tuple[BiasedMF, dict[str, float]]:
    """Fit one :class:`BiasedMF` per (``factors``, ``reg``); keep the best on the validation users (folded in).

    ``val_sets`` (default: ``split.val``) are scored by :func:`validation_score`. Each fitted
    model is also tried with each fold-in penalty of ``foldin_regs`` (besides its own ``reg``),
    so a new user's ridge is tuned for the support sizes the validation sets hold.
    """
    sizes = [factors] if isinstance(factors, int) else list(factors)
    if not regs or not sizes:
        raise MetakitError("baselines.mf_regs and mf_factors must be non-empty, e.g. mf_factors: [8, 16], mf_regs: [5.0].")
    sets = [split.val] if val_sets is None else list(val_sets)
    scores: dict[str, float] = {}
    best: tuple[float, BiasedMF | None] = (float("inf"), None)
    for k in sizes:
        for reg in regs:
            model = BiasedMF(k, reg, iters, seed).fit(split, num_users, num_items)
            for fold in [None, *[f for f in foldin_regs if f != reg]]:
                model.foldin_reg = fold
                score = validation_score(model.predict, sets)
                scores[f"factors={k},reg={reg}" + ("" if fold is None else f",foldin_reg={fold}")] = score
                if best[1] is None or score < best[0]:
                    best = (score, BiasedMF.from_state(model.state()))
    assert best[1] is not None
    return best[1], scores


def train_global(net: RatingNet, features: Features, split: Split, epochs: int, batch_size: int, lr: float,
                 seed: int, weight_decay: float = 0.0,
                 on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, Any]:
    """Train ``net`` on the pooled training ratings (MSE, Adam); keep the epoch best on validation MAE."""
    if epochs < 1 or batch_size < 1:
        raise MetakitError(f"baselines.nn_epochs and nn_batch must be >= 1, got {epochs} and {batch_size}.")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    truths = [t.query_ratings for t in split.val]
    best = (float("inf"), 0, {k: v.clone() for k, v in net.state_dict().items()})
    history = []
    n = len(split.train_rating)
    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch = rows_batch(features, split.train_user[idx], split.train_item[idx], split.train_rating[idx])
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(batch), batch.rating)
            if not torch.isfinite(loss):
                raise MetakitError(f"the training loss became {loss.item()} at epoch {epoch}; lower baselines.nn_lr.")
            loss.backward()
            opt.step()
            losses.append(loss.item() * len(idx))
        val = mae(predict_tasks(net, features, split.val, 0, 0.0), truths) if split.val else float("nan")
        history.append({"epoch": epoch, "train_mse": float(np.sum(losses) / n), "val_mae": val})
        if on_epoch is not None:
            on_epoch(epoch, history[-1]["train_mse"], val)
        if not split.val or val < best[0]:
            best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])
    return {"history": history, "best_epoch": best[1], "best_val_mae": best[0]}


def select_finetune(net: RatingNet, features: Features, val: Sequence[UserTask], steps: Sequence[int],
                    lrs: Sequence[float]) -> tuple[int, float, dict[str, float | None]]:
    """The (steps, lr) of per-user fine-tuning with the best validation MAE over the grid."""
    if not steps or not lrs or any(s < 1 for s in steps) or any(lr <= 0 for lr in lrs):
        raise MetakitError("baselines.finetune_steps and finetune_lrs must be non-empty lists of positive numbers.")
    truths = [t.query_ratings for t in val]
    scores: dict[str, float | None] = {}
    best = (float("inf"), steps[0], lrs[0])
    for s in steps:
        for lr in lrs:
            score = mae(predict_tasks(net, features, val, s, lr), truths) if val else 0.0
            if not np.isfinite(score):  # a step size that diverges is simply never chosen
                score = float("inf")
            scores[f"steps={s},lr={lr}"] = score if np.isfinite(score) else None
            if score < best[0]:
                best = (score, s, lr)
    return best[1], best[2], scores


class SurpriseSVD:
    """A recommender library as a peer: Surprise's ``SVD`` (biased MF by SGD, Hug 2020), retrained with the support.

    Surprise has no fold-in: a user it was not trained on gets the mean plus the item's bias.
    So, as a practitioner using it would, each call to :meth:`predict` refits ``SVD`` on the
    training ratings **plus the support ratings of the users asked about** (those that are not
    training users), then predicts their query ratings: the expensive alternative to fold-in.

    Args:
        factors, reg, epochs, lr: ``SVD(n_factors, reg_all, n_epochs, lr_all)``.
        seed: Surprise's ``random_state``, so a refit is deterministic.
    """

    def __init__(self, factors: int = 20, reg: float = 0.05, epochs: int = 20, lr: float = 0.005, seed: int = 0) -> None:
        if factors < 1 or reg < 0 or epochs < 1 or lr <= 0:
            raise MetakitError(f"surprise SVD needs factors >= 1, reg >= 0, epochs >= 1 and lr > 0, got "
                               f"{factors}, {reg}, {epochs}, {lr}.")
        self.factors, self.reg, self.epochs, self.lr, self.seed = factors, float(reg), epochs, float(lr), seed
        self.train = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        self.scale = (1.0, 5.0)

    @staticmethod
    def require() -> None:
        """Raise a one-line error naming the install command if Surprise (or pandas) is missing."""
        try:
            import pandas  # noqa: F401
            import surprise  # noqa: F401
        except ImportError:
            raise MetakitError("method surprise_svd needs Surprise: pip install 'metakit[recsys-peers]' "
                               "(or drop surprise_svd from methods).") from None

    def fit(self, split: Split) -> SurpriseSVD:
        """Keep the training ratings (the model is fitted per query, with the support added)."""
        self.require()
        self.train = (split.train_user.astype(np.int64), split.train_item.astype(np.int64),
                      split.train_rating.astype(np.float64))
        lo, hi = float(split.train_rating.min()), float(split.train_rating.max())
        self.scale = (min(lo, 1.0), max(hi, 5.0))
        return self

    def predict(self, tasks: Sequence[UserTask]) -> list[np.ndarray]:
        """Refit on training + the new users' support ratings; every query rating's estimate."""
        import pandas as pd
        from surprise import SVD, Dataset, Reader

        known = set(np.unique(self.train[0]).tolist())
        extra = [t for t in tasks if t.user not in known]
        users = np.concatenate([self.train[0], *[np.full(len(t.support_items), t.user) for t in extra]])
        items = np.concatenate([self.train[1], *[t.support_items for t in extra]])
        ratings = np.concatenate([self.train[2], *[t.support_ratings.astype(np.float64) for t in extra]])
        frame = pd.DataFrame({"user": users, "item": items, "rating": ratings})
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=self.scale)).build_full_trainset()
        algo = SVD(n_factors=self.factors, n_epochs=self.epochs, reg_all=self.reg, lr_all=self.lr,
                   random_state=self.seed)
        algo.fit(trainset)
        return [np.array([algo.predict(t.user, int(i), clip=True).est for i in t.query_items.tolist()])
                for t in tasks]

    def state(self) -> dict[str, Any]:
        """The settings (the ratings stay out of the checkpoint: :meth:`fit` them again from the run's split)."""
        return {"factors": self.factors, "reg": self.reg, "epochs": self.epochs, "lr": self.lr, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SurpriseSVD:
        """Rebuild the settings from :meth:`state`; call :meth:`fit` before predicting."""
        cls.require()
        return cls(state["factors"], state["reg"], state["epochs"], state["lr"], state["seed"])


def select_surprise(split: Split, factors: Sequence[int], regs: Sequence[float], epochs: int, seed: int,
                    val_sets: Sequence[Sequence[UserTask]]) -> tuple[SurpriseSVD, dict[str, float]]:
    """The :class:`SurpriseSVD` setting (``factors`` x ``regs``) with the best validation score."""
    if not factors or not regs:
        raise MetakitError("baselines.surprise_factors and surprise_regs must be non-empty lists.")
    scores: dict[str, float] = {}
    best: tuple[float, SurpriseSVD | None] = (float("inf"), None)
    for k in factors:
        for reg in regs:
            model = SurpriseSVD(k, reg, epochs, seed=seed).fit(split)
            scores[f"factors={k},reg={reg}"] = score = validation_score(model.predict, val_sets)
            if best[1] is None or score < best[0]:
                best = (score, model)
    assert best[1] is not None
    return best[1], scores
