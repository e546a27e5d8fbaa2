"""Realistic synthetic ratings, written as MovieLens files (so they go through the real loaders).

Development and the benchmark cannot use MovieLens itself (its terms forbid storing it with the
project), so :func:`generate` draws a dataset with the structure a recommender is supposed to
learn, and :func:`write_movielens` writes it in exactly the ML-1M or ML-100K format
(``../shared/data/FORMATS.md``: separators, latin-1, fields), to be read back by
:mod:`metakit.recsys.movielens`.

The generative story:

* **Users** get MovieLens-like demographics (gender, ML-1M age band, one of 21 occupations, a
  5-digit zip code). **Items** get 1-4 of the 18 ML-1M genres (Drama and Comedy most common) and a
  release year; a share of them is released *during* the observed period and can only be rated
  after that.
* **Latent factors tied to features**: a user's taste vector is the sum of embeddings of its
  features plus a personal part, the features explaining ``user_feature_share`` of its variance;
  an item's is the mean of its genres' embeddings plus its decade's, plus an item-specific part
  (``item_feature_share`` explained). User and item rating biases are split the same way (older
  users rate a little higher, some genres and decades are rated higher).
* **Rating** = global mean + user bias + item bias + scaled taste x item dot product + Gaussian
  noise, rounded and clipped to 1..5.
* **Popularity skew**: each item has a Zipf weight (``rank ** -popularity_exponent``), ranked by a
  noisy version of its quality; a user picks the next item to rate with probability proportional
  to that weight times ``exp(selection * predicted affinity)`` (people watch what they expect to
  like) times a boost for items just released, among the items available at that moment.
* **Time**: every user joins at a random time and rates ``min_ratings`` or more items (20 by
  default, as in MovieLens) in a burst of activity after that, so "new users" (late first
  rating) and "new items" (late first rating) exist as they do in MovieLens.

Everything is drawn from one seeded ``numpy`` generator: the same spec gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metakit.errors import MetakitError
from metakit.recsys.movielens import (
    AGE_BANDS, ENCODING, ML1M_GENRES, RatingsData, read_ml1m, read_ml100k, read_movielens_csv,
)

#: File formats the generator writes: the two original releases' and the CSV releases'.
FORMATS = ("ml-1m", "ml-100k", "csv")
from metakit.utils import cache_dir

#: ML-100K's occupations (``u.occupation``); ML-1M codes them 0..20.
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive", "healthcare",
    "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer", "retired", "salesman",
    "scientist", "student", "technician", "writer",
)
#: Roughly MovieLens' genre frequencies (Drama and Comedy dominate).
_GENRE_WEIGHTS = np.array([6, 4, 1, 2, 11, 2, 1, 14, 1, 0.5, 3, 1, 1, 4, 2, 4, 1.5, 0.7])
_AGE_PROBS = np.array([0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06])
#: The observed period: 1998-01-01 to 2000-12-31 (unix seconds), as [0, 1] on the model's clock.
_START, _SPAN = 883_612_800, 3 * 365 * 86_400
_FIRST_NEW_YEAR = 1998


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and structure of a synthetic ratings dataset (see the module docstring)."""

    users: int = 1000
    items: int = 1500
    factors: int = 8  # latent taste dimensions of users and items
    # Ratings per user: at least min_ratings (MovieLens' own floor is 20), then a long tail with
    # this median, capped at max_ratings.
    min_ratings: int = 20
    median_extra_ratings: float = 30.0
    max_ratings: int = 250
    # Side information explains little in real MovieLens (see docs/benchmarks.md, MeLU section):
    # demographics barely move mean ratings, coarse genres/decade explain part of an item's appeal.
    user_feature_share: float = 0.2
    item_feature_share: float = 0.4
    interaction_scale: float = 0.8
    user_bias_sd: float = 0.35
    item_bias_sd: float = 0.35
    noise: float = 0.55
    popularity_exponent: float = 0.9
    selection: float = 0.6
    new_item_share: float = 0.3
    new_release_boost: float = 8.0
    seed: int = 0

    def check(self) -> None:
        """Raise a one-line error for impossible sizes or shares."""
        if self.users < 2 or self.items < 2:
            raise MetakitError(f"synthetic data needs at least 2 users and 2 items, got {self.users} and {self.items}.")
        if not 1 <= self.min_ratings <= self.max_ratings:
            raise MetakitError(f"synthetic min_ratings ({self.min_ratings}) must be >= 1 and <= max_ratings ({self.max_ratings}).")
        if self.max_ratings > self.items:
            raise MetakitError(f"synthetic max_ratings ({self.max_ratings}) exceeds the number of items ({self.items}); "
                               f"lower it or add items.")
        for name in ("user_feature_share", "item_feature_share", "new_item_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MetakitError(f"synthetic {name} must be in [0, 1], got {value}.")

    def key(self) -> str:
        """A short hash naming this spec's cache folder."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class SyntheticRatings:
    """Raw tables of a generated dataset (ids start at 1, as in MovieLens)."""

    gender: list[str]
    age: list[int]
    occupation: list[int]
    zip_code: list[str]
    genres: list[list[int]]
    year: list[int]
    ratings: np.ndarray  # [N, 4] int64: user id, item id, rating, timestamp, sorted by user then time


def _unit(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def _mix(explained: np.ndarray, personal: np.ndarray, share: float) -> np.ndarray:
    # Unit-variance parts mixed so that ``share`` of the variance is explained by the features.
    return np.sqrt(share) * explained + np.sqrt(1.0 - share) * personal


def generate(spec: SyntheticSpec) -> SyntheticRatings:
    """Draw a dataset from ``spec`` (deterministic in ``spec.seed``)."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    U, I, k = spec.users, spec.items, spec.factors
    # Users: demographics, then taste = features' embeddings + a personal part.
    gender = rng.choice(2, U, p=[0.72, 0.28])
    age = rng.choice(len(AGE_BANDS), U, p=_AGE_PROBS)
    occupation = rng.choice(21, U, p=rng.dirichlet(np.full(21, 2.0)))
    region = rng.choice(10, U, p=rng.dirichlet(np.full(10, 3.0)))
    zips = [f"{r}{z:04d}" for r, z in zip(region.tolist(), rng.integers(0, 10_000, U).tolist())]
    tables = [rng.normal(size=(n, k)) for n in (2, len(AGE_BANDS), 21, 10)]
    user_feat = _unit(sum(t[c] for t, c in zip(tables, (gender, age, occupation, region))))
    taste = _mix(user_feat, rng.normal(size=(U, k)), spec.user_feature_share)
    # Older users rate a little higher, occupations differ; the rest of the bias is personal.
    bias_feat = _unit((0.5 * (age - 2) + rng.normal(size=21)[occupation])[:, None])[:, 0]
    user_bias = spec.user_bias_sd * _mix(bias_feat, rng.normal(size=U), spec.user_feature_share)
    # Items: genres and release year; new items appear during the observed period.
    n_genres = np.clip(1 + rng.poisson(0.8, I), 1, 4)
    p_genre = _GENRE_WEIGHTS / _GENRE_WEIGHTS.sum()
    genres = [sorted(rng.choice(len(ML1M_GENRES), n, replace=False, p=p_genre).tolist()) for n in n_genres]
    is_new = rng.random(I) < spec.new_item_share
    available = np.where(is_new, rng.uniform(0.1, 0.97, I), 0.0)
    old_year = np.clip(_FIRST_NEW_YEAR - 1 - np.floor(rng.exponential(11.0, I)), 1919, _FIRST_NEW_YEAR - 1)
    year = np.where(is_new, _FIRST_NEW_YEAR + np.floor(available * 3), old_year).astype(np.int64)
    genre_emb, decade_emb = rng.normal(size=(len(ML1M_GENRES), k)), rng.normal(size=(10, k))
    decade = np.clip((year - 1910) // 10, 0, 9)
    item_feat = _unit(np.stack([genre_emb[g].mean(0) for g in genres]) + 0.7 * decade_emb[decade])
    profile = _mix(item_feat, rng.normal(size=(I, k)), spec.item_feature_share)
    genre_bias, decade_bias = rng.normal(size=len(ML1M_GENRES)), rng.normal(size=10)
    item_bias_feat = _unit(np.array([genre_bias[g].mean() for g in genres]) + 0.5 * decade_bias[decade])
    item_bias = spec.item_bias_sd * _mix(item_bias_feat, rng.normal(size=I), spec.item_feature_share)
    # Popularity: Zipf weights ranked by a noisy view of quality.
    order = np.argsort(-(item_bias / max(spec.item_bias_sd, 1e-9) + rng.normal(size=I)))
    weight = np.empty(I)
    weight[order] = np.arange(1, I + 1, dtype=np.float64) ** -spec.popularity_exponent
    # Expected ratings, and who rates what when.
    affinity = user_bias[:, None] + item_bias[None, :] + spec.interaction_scale * (taste @ profile.T) / np.sqrt(k)
    counts = spec.min_ratings + np.floor(rng.lognormal(np.log(spec.median_extra_ratings), 0.9, U)).astype(np.int64)
    counts = np.minimum(counts, spec.max_ratings)
    join = rng.uniform(0.0, 0.92, U)
    rows = []
    for u in range(U):
        span = min(1.0 - join[u], rng.exponential(0.08) + 0.005)
        times = np.sort(join[u] + span * rng.random(counts[u]))
        base = weight * np.exp(spec.selection * affinity[u])
        rated = np.zeros(I, dtype=bool)
        for t in times:
            age_t = t - available
            p = np.where((age_t >= 0) & ~rated, base * (1 + spec.new_release_boost * is_new * np.exp(-age_t / 0.08)), 0.0)
            total = p.sum()
            if total <= 0:
                break
            i = int(rng.choice(I, p=p / total))
            rated[i] = True
            rows.append((u, i, t))
    ui = np.array([(u, i) for u, i, _ in rows], dtype=np.int64)
    t = np.array([r[2] for r in rows])
    noisy = affinity[ui[:, 0], ui[:, 1]] + spec.noise * rng.normal(size=len(rows))
    # Centre so the mean rating lands near MovieLens' 3.6 whatever the selection effect did.
    noisy += 3.6 - noisy.mean()
    stars = np.clip(np.rint(noisy), 1, 5).astype(np.int64)
    stamps = (_START + np.minimum(t, 1.0) * _SPAN).astype(np.int64)
    ratings = np.stack([ui[:, 0] + 1, ui[:, 1] + 1, stars, stamps], axis=1)
    return SyntheticRatings(
        gender=["M" if g == 0 else "F" for g in gender.tolist()],
        age=[AGE_BANDS[a] for a in age.tolist()],
        occupation=occupation.tolist(),
        zip_code=zips,
        genres=genres,
        year=year.tolist(),
        ratings=ratings,
    )


def _title(item_id: int, year: int) -> str:
    # Some titles carry a non-ASCII latin-1 character, as MovieLens' do ("Café au lait", ...).
    return f"Synthetic Film {item_id}{' Café' if item_id % 7 == 0 else ''} ({year})"


def _write(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode(ENCODING))


def write_movielens(data: SyntheticRatings, folder: str | os.PathLike, fmt: str = "ml-1m") -> Path:
    """Write ``data`` into ``folder`` as the files of ``ml-1m``, ``ml-100k`` or ``csv``; returns ``folder``.

    ``csv`` is the format of MovieLens' CSV releases (``ratings.csv``, ``movies.csv``, UTF-8, no
    user demographics; titles with a comma are quoted). The folder appears atomically (written
    beside it under a temporary name, then renamed).
    """
    if fmt not in FORMATS:
        raise MetakitError(f"synthetic format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        if fmt == "ml-1m":
            _write(tmp / "users.dat", [f"{u + 1}::{g}::{a}::{o}::{z}" for u, (g, a, o, z) in
                                       enumerate(zip(data.gender, data.age, data.occupation, data.zip_code))])
            _write(tmp / "movies.dat", [f"{i + 1}::{_title(i + 1, y)}::{'|'.join(ML1M_GENRES[g] for g in gs)}"
                                        for i, (gs, y) in enumerate(zip(data.genres, data.year))])
            _write(tmp / "ratings.dat", ["::".join(str(v) for v in row) for row in data.ratings.tolist()])
        elif fmt == "csv":
            with open(tmp / "movies.csv", "w", encoding="utf-8", newline="") as f:
                out = csv.writer(f, lineterminator="\n")
                out.writerow(["movieId", "title", "genres"])
                for i, (gs, y) in enumerate(zip(data.genres, data.year)):
                    title = _title(i + 1, y).replace("Synthetic Film", "Film, Synthetic" if i % 5 == 0 else "Synthetic Film")
                    out.writerow([i + 1, title, "|".join(ML1M_GENRES[g] for g in gs) or "(no genres listed)"])
            _write(tmp / "ratings.csv", ["userId,movieId,rating,timestamp",
                                         *(f"{u},{i},{float(r):.1f},{t}" for u, i, r, t in data.ratings.tolist())])
        else:
            genres = ("unknown", *ML1M_GENRES)
            rng = np.random.default_rng(len(data.gender))  # ages inside each band, deterministically
            ages = [int(rng.integers(lo, hi)) for lo, hi in
                    ((a if a > 1 else 10, _next_band(a)) for a in data.age)]
            _write(tmp / "u.user", [f"{u + 1}|{age}|{g}|{OCCUPATIONS[o]}|{z}" for u, (age, g, o, z) in
                                    enumerate(zip(ages, data.gender, data.occupation, data.zip_code))])
            months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
            items = []
            for i, (gs, y) in enumerate(zip(data.genres, data.year)):
                flags = ["1" if g - 1 in gs else "0" for g in range(len(genres))]
                date = f"01-{months[i % 12]}-{y}"
                url = f"http://us.imdb.com/M/title-exact?Synthetic%20Film%20{i + 1}%20({y})"
                items.append("|".join([str(i + 1), _title(i + 1, y), date, "", url, *flags]))
            _write(tmp / "u.item", items)
            _write(tmp / "u.genre", [f"{g}|{n}" for n, g in enumerate(genres)])
            _write(tmp / "u.occupation", list(OCCUPATIONS))
            _write(tmp / "u.data", ["\t".join(str(v) for v in row) for row in data.ratings.tolist()])
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _next_band(age: int) -> int:
    later = [a for a in AGE_BANDS if a > age]
    return later[0] if later else 70


def synthetic_movielens(spec: SyntheticSpec, fmt: str = "ml-1m", folder: str | os.PathLike | None = None) -> RatingsData:
    """Generate (once, cached by spec) the files of ``spec`` in format ``fmt`` and load them back.

    The files live in ``$METAKIT_CACHE/recsys-synthetic/<fmt>-<hash>/`` unless ``folder`` is given;
    they are read with the same parser as the real dataset, so the synthetic path exercises it.
    """
    spec.check()
    folder = Path(folder) if folder else cache_dir("recsys-synthetic") / f"{fmt}-{spec.key()}"
    marker = {"ml-1m": "ratings.dat", "ml-100k": "u.data", "csv": "ratings.csv"}[fmt]
    if not (folder / marker).is_file():
        write_movielens(generate(spec), folder, fmt)
    if fmt == "csv":
        data = read_movielens_csv(folder, "synthetic")
    else:
        data = read_ml1m(folder, name="synthetic") if fmt == "ml-1m" else read_ml100k(folder)
    data.name = f"synthetic ({spec.users} users x {spec.items} items, seed {spec.seed})"
    return data
