"""Rating-prediction and ranking metrics per user, summarised as mean ± 95% CI over users.

For each user (task) the query predictions give an absolute error, a squared error and an nDCG@k
of the ranking of the query items by predicted rating (gain ``2**rating - 1``, discount
``log2(rank + 1)``, ideal ranking by true rating). Users are the unit: each metric is a mean over
users with the CI ``1.96 * std / sqrt(users)`` (:func:`metakit.evaluation.mean_ci95`). RMSE is
``sqrt`` of the mean per-user MSE, its CI the delta-method image of the MSE's. Tied predictions
(e.g. the global mean) are ranked in a fixed random order drawn from the user's index, so a
constant predictor gets the nDCG of a random ranking, not of the order the ratings were stored in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metakit.evaluation import mean_ci95


def ndcg_at_k(predicted: np.ndarray, true: np.ndarray, k: int, tie_break: np.ndarray | None = None) -> float:
    """nDCG@k of ranking ``true`` ratings by ``predicted`` (higher first; ``tie_break`` orders ties)."""
    keys = (tie_break if tie_break is not None else np.arange(len(predicted)), -np.asarray(predicted, dtype=np.float64))
    ranked = np.asarray(true, dtype=np.float64)[np.lexsort(keys)][:k]
    ideal = np.sort(np.asarray(true, dtype=np.float64))[::-1][:k]
    discount = 1.0 / np.log2(np.arange(2, len(ranked) + 2))
    idcg = float(((2.0 ** ideal - 1) * discount[:len(ideal)]).sum())
    return float(((2.0 ** ranked - 1) * discount).sum()) / idcg if idcg > 0 else 0.0


def per_user_metrics(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], users: Sequence[int],
                     ks: Sequence[int] = (1, 3)) -> dict[str, list[float]]:
    """Each user's MAE, MSE and nDCG@k (lists aligned with ``users``)."""
    out: dict[str, list[float]] = {"mae": [], "mse": [], **{f"ndcg@{k}": [] for k in ks}}
    for pred, true, user in zip(predictions, truths, users):
        pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
        err = pred - true
        out["mae"].append(float(np.abs(err).mean()))
        out["mse"].append(float((err ** 2).mean()))
        ties = np.random.default_rng(int(user)).permutation(len(pred))
        for k in ks:
            out[f"ndcg@{k}"].append(ndcg_at_k(pred, true, k, ties))
    return out


def summarise(values: dict[str, list[float]]) -> dict[str, Any]:
    """Mean ± 95% CI over users of every metric, plus RMSE from the MSEs and the user count."""
    summary: dict[str, Any] = {"users": len(values["mae"])}
    if not values["mae"]:
        return summary
    for name, vals in values.items():
        if name == "mse":
            continue
        mean, ci, _ = mean_ci95(vals)
        summary[name] = {"mean": mean, "ci95": ci}
    mse, mse_ci, _ = mean_ci95(values["mse"])
    rmse = math.sqrt(mse)
    summary["rmse"] = {"mean": rmse, "ci95": mse_ci / (2 * rmse) if rmse > 0 else 0.0}
    return summary


def score_predictions(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], users: Sequence[int],
                      ks: Sequence[int] = (1, 3)) -> dict[str, Any]:
    """:func:`per_user_metrics` then :func:`summarise`."""
    return summarise(per_user_metrics(predictions, truths, users, ks))


def mae(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean over users of the per-user MAE (model selection on validation tasks)."""
    return float(np.mean([np.abs(np.asarray(p) - np.asarray(t)).mean() for p, t in zip(predictions, truths)]))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean ± 95% CI over users of ``a - b`` (the same users scored by two methods).

    Pairing removes the between-user variance both methods share, so this CI says whether one
    method beats the other on these users far more sharply than comparing two marginal CIs.
    """
    diff = [x - y for x, y in zip(a, b)]
    mean, ci, _ = mean_ci95(diff)
    return {"mean": mean, "ci95": ci, "users": len(diff)}
