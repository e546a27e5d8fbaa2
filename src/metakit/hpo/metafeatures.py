"""Task meta-features: simple, statistical and landmarking descriptions of a dataset.

The warm start compares a new task with prior tasks through these numbers (auto-sklearn 1.0
style). Two backends:

* ``numpy`` (default, no extra dependency, deterministic for a seed): the features below;
* ``pymfe``: the `pymfe <https://pymfe.readthedocs.io>`_ extractor (``general``, ``statistical``
  and ``landmarking`` groups, mean summaries), when it is installed (``pip install 'metakit[hpo]'``).

Only features of the same backend are comparable; :func:`metafeature_distances` uses the names
the tasks share.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metakit.errors import MetakitError, unknown_name

BACKENDS = ("numpy", "pymfe")
_MAX_ROWS = 2000  # landmarkers and correlations on a seeded subsample keep extraction under a second
_MAX_COLS = 64


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 4:
        raise MetakitError(f"meta-features need X [n, p] and y [n] with n >= 4, got X {x.shape} and y {y.shape}.")
    if not np.isfinite(x).all():
        col_means = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        x = np.where(np.isfinite(x), x, np.nan_to_num(col_means)[None, :])
    _, y = np.unique(y, return_inverse=True)
    return x, y


def simple_features(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Size and class-balance features."""
    n, p = x.shape
    counts = np.bincount(y)
    probs = counts / counts.sum()
    classes = len(counts)
    entropy = float(-(probs * np.log(probs)).sum() / math.log(classes)) if classes > 1 else 0.0
    return {
        "log_instances": math.log(n),
        "log_features": math.log(p),
        "log_classes": math.log(classes),
        "log_instances_per_feature": math.log(n / p),
        "log_instances_per_class": math.log(n / classes),
        "class_entropy": entropy,
        "majority_fraction": float(probs.max()),
        "minority_fraction": float(probs.min()),
    }


def statistical_features(x: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Distribution features of the (standardised) columns."""
    rows = rng.choice(x.shape[0], min(x.shape[0], _MAX_ROWS), replace=False)
    cols = np.sort(rng.choice(x.shape[1], min(x.shape[1], _MAX_COLS), replace=False))
    sub = x[np.ix_(rows, cols)]
    std = sub.std(axis=0)
    live = std > 1e-12
    z = (sub[:, live] - sub[:, live].mean(axis=0)) / std[live] if live.any() else np.zeros((len(rows), 1))
    skew = (z**3).mean(axis=0) if live.any() else np.zeros(1)
    kurt = (z**4).mean(axis=0) - 3.0 if live.any() else np.zeros(1)
    if z.shape[1] > 1:
        corr = np.corrcoef(z, rowvar=False)
        abs_corr = float(np.abs(corr[np.triu_indices_from(corr, k=1)]).mean())
        eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False)), 0, None)[::-1]
        frac = np.cumsum(eig) / max(eig.sum(), 1e-12)
        pca95 = float((np.searchsorted(frac, 0.95) + 1) / z.shape[1])
    else:
        abs_corr, pca95 = 0.0, 1.0
    return {
        "mean_abs_skewness": float(np.abs(skew).mean()),
        "mean_kurtosis": float(kurt.mean()),
        "mean_abs_correlation": abs_corr,
        "pca_95_fraction": pca95,
        "constant_feature_fraction": float(1.0 - live.mean()),
        "log_mean_feature_std": float(np.log(std.mean() + 1e-12)),
    }


def _folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified fold index per row."""
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def landmarking_features(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, folds: int = 3) -> dict[str, float]:
    """Cross-validated accuracy of cheap learners: 1-NN, nearest centroid, best decision stump."""
    rows = rng.choice(x.shape[0], min(x.shape[0], _MAX_ROWS), replace=False)
    xs, ys = x[rows], y[rows]
    std = xs.std(axis=0)
    xs = (xs - xs.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    fold = _folds(ys, folds, rng)
    nn = centroid = stump = 0.0
    used = 0
    for f in range(folds):
        tr, te = fold != f, fold == f
        if not te.any() or len(np.unique(ys[tr])) < 1:
            continue
        used += 1
        a, b = xs[tr], xs[te]
        d = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None, :]
        nn += float((ys[tr][d.argmin(1)] == ys[te]).mean())
        labels = np.unique(ys[tr])
        cents = np.stack([a[ys[tr] == c].mean(0) for c in labels])
        dc = (b**2).sum(1)[:, None] - 2 * b @ cents.T + (cents**2).sum(1)[None, :]
        centroid += float((labels[dc.argmin(1)] == ys[te]).mean())
        stump += _stump_accuracy(a, ys[tr], b, ys[te])
    used = max(used, 1)
    return {"landmark_1nn": nn / used, "landmark_nearest_centroid": centroid / used, "landmark_stump": stump / used}


def _stump_accuracy(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray) -> float:
    """Accuracy of the best one-feature median split (majority class on each side), fit on ``a``."""
    classes = int(max(ya.max(), yb.max())) + 1
    best, best_rule = -1.0, (0, 0.0, 0, 0)
    for j in range(min(a.shape[1], _MAX_COLS)):
        t = float(np.median(a[:, j]))
        left = a[:, j] <= t
        lc = np.bincount(ya[left], minlength=classes).argmax() if left.any() else 0
        rc = np.bincount(ya[~left], minlength=classes).argmax() if (~left).any() else lc
        acc = float(np.where(left, ya == lc, ya == rc).mean())
        if acc > best:
            best, best_rule = acc, (j, t, lc, rc)
    j, t, lc, rc = best_rule
    return float((np.where(b[:, j] <= t, lc, rc) == yb).mean())


def numpy_metafeatures(x: Any, y: Any, seed: int = 0) -> dict[str, float]:
    """Simple, statistical and landmarking meta-features of a labelled table (numpy only)."""
    x, y = _check_xy(x, y)
    rng = np.random.default_rng(seed)
    out = simple_features(x, y)
    out.update(statistical_features(x, rng))
    out.update(landmarking_features(x, y, rng))
    return out


def pymfe_metafeatures(x: Any, y: Any, seed: int = 0) -> dict[str, float]:
    """pymfe's general, statistical and landmarking meta-features (mean summaries, finite ones only)."""
    try:
        from pymfe.mfe import MFE
    except ImportError:
        raise MetakitError("the pymfe backend needs pymfe: pip install 'metakit[hpo]' (or use backend numpy).") from None
    import warnings

    x, y = _check_xy(x, y)
    rng = np.random.default_rng(seed)
    rows = rng.choice(x.shape[0], min(x.shape[0], _MAX_ROWS), replace=False)
    cols = np.sort(rng.choice(x.shape[1], min(x.shape[1], _MAX_COLS), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymfe warns for every undefined feature; they are dropped below
        mfe = MFE(groups=["general", "statistical", "landmarking"], summary=["mean"], random_state=seed)
        mfe.fit(x[np.ix_(rows, cols)], y[rows], suppress_warnings=True)
        names, values = mfe.extract(suppress_warnings=True)
    out = {}
    for name, value in zip(names, values):
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[f"pymfe.{name}"] = v
    return out


def metafeatures(x: Any, y: Any, backend: str = "numpy", seed: int = 0) -> dict[str, float]:
    """Meta-features of a labelled table ``x [n, p]``, ``y [n]`` with the chosen backend."""
    if backend == "numpy":
        return numpy_metafeatures(x, y, seed)
    if backend == "pymfe":
        return pymfe_metafeatures(x, y, seed)
    raise unknown_name("meta-feature backend", backend, BACKENDS)


def _pool(images: np.ndarray, side: int = 14) -> np.ndarray:
    """Average-pool ``[n, c, h, w]`` images to about ``side`` x ``side`` so pixel features stay few."""
    n, c, h, w = images.shape
    fh, fw = max(1, h // side), max(1, w // side)
    h2, w2 = (h // fh) * fh, (w // fw) * fw
    pooled = images[:, :, :h2, :w2].reshape(n, c, h2 // fh, fh, w2 // fw, fw).mean(axis=(3, 5))
    return pooled.reshape(n, -1)


def episode_landmarks(x: np.ndarray, y: np.ndarray, seed: int = 0, episodes: int = 100, ways: int = 5) -> dict[str, float]:
    """Nearest-centroid accuracy on raw pixels in seeded N-way 1-shot and 5-shot episodes."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    out = {}
    for shots in (1, 5):
        eligible = [idx for idx in by_class if len(idx) > shots]
        if len(eligible) < 2:
            continue
        w = min(ways, len(eligible))
        correct = total = 0
        for _ in range(episodes):
            chosen = rng.choice(len(eligible), w, replace=False)
            cents, queries, labels = [], [], []
            for label, c in enumerate(chosen):
                items = rng.permutation(eligible[c])
                cents.append(x[items[:shots]].mean(0))
                queries.append(x[items[shots:shots + 5]])
                labels += [label] * len(items[shots:shots + 5])
            cents_a, q = np.stack(cents), np.concatenate(queries)
            d = (q**2).sum(1)[:, None] - 2 * q @ cents_a.T + (cents_a**2).sum(1)[None, :]
            correct += int((d.argmin(1) == np.array(labels)).sum())
            total += len(labels)
        out[f"landmark_{ways}way_{shots}shot_centroid"] = correct / max(total, 1)
    return out


def class_dataset_metafeatures(dataset: Any, backend: str = "numpy", seed: int = 0) -> dict[str, float]:
    """Meta-features of a few-shot class dataset (a metakit ``ClassDataset``, usually the training split).

    Pixels are average-pooled to about 14x14 and treated as a table (items x pixels, labels =
    classes); episode landmarkers add what a few-shot learner faces: raw-pixel nearest-centroid
    accuracy in 5-way 1-shot and 5-shot episodes.
    """
    images = dataset.images
    images = images.float().numpy() if hasattr(images, "numpy") else np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[:, None]
    if images.max() > 1.5:  # uint8 pixels
        images = images / 255.0
    labels = dataset.labels.numpy() if hasattr(dataset.labels, "numpy") else np.asarray(dataset.labels)
    x = _pool(images)
    out = metafeatures(x, labels, backend=backend, seed=seed)
    out.update(episode_landmarks(x, labels, seed))
    out["log_image_pixels"] = math.log(int(np.prod(images.shape[1:])))
    return out


def config_metafeatures(config: Any, backend: str = "numpy", seed: int = 0) -> dict[str, float]:
    """Meta-features of the training split of a run config's dataset (classification datasets)."""
    from metakit.datasets import get_dataset, load_splits

    d = config.dataset
    if get_dataset(d.name).task_type != "classification":
        return {}
    splits = load_splits(d.name, split=d.split, seed=d.split_seed, fractions=tuple(d.fractions), rotations=d.rotations, **d.options)
    return class_dataset_metafeatures(splits["train"], backend=backend, seed=seed)


def metafeature_distances(query: dict[str, float], others: list[dict[str, float]]) -> np.ndarray:
    """Euclidean distances between ``query`` and each of ``others`` on z-scored shared features.

    Features are standardised over the pool (query + others) so no single scale dominates;
    features missing from any task are dropped.
    """
    if not others:
        return np.zeros(0)
    names = sorted(set(query).intersection(*[set(o) for o in others]))
    if not names:
        raise MetakitError(
            "the new task and the prior tasks share no meta-feature; compute them with the same backend."
        )
    table = np.array([[query[n] for n in names]] + [[o[n] for n in names] for o in others], dtype=np.float64)
    std = table.std(axis=0)
    z = (table - table.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    return np.sqrt(((z[1:] - z[0]) ** 2).sum(axis=1))
