"""Users as tasks, and the four cold-start scenarios of MeLU (Lee et al., KDD 2019).

Each user is a task: its ratings sorted by time, the **last** ``query`` ratings (10) are the query
set and the earlier ones, the most recent ``max_support`` of them, the support set. Only users with
``min_ratings``..``max_ratings`` ratings (13..100, as in the paper) in the part of the data a
scenario looks at become tasks.

Users and items are split by **first appearance** (the time of their first rating, or the
release year for items with ``new_items_by="release_year"``): the latest ``new_user_fraction`` of
users are *new users*, the latest ``new_item_fraction`` of items *new items*. Then:

========================  ====================  ==================================================
scenario                  users                 ratings of the task
========================  ====================  ==================================================
``warm``                  existing (trained)    on existing items; query = last 10, support = the
                                                user's earlier (training) ratings
``new_users``             new                   on existing items ("existing items for new users")
``new_items``             existing (trained)    on new items ("new items for existing users")
``new_users_new_items``   new                   on new items
========================  ====================  ==================================================

**Training data** is only existing users' ratings of existing items *before* their last
``query`` ones; those last ones are the warm-state query. A ``val_fraction`` of the eligible
existing users is held out entirely as validation tasks (cold users, used to select epochs and
hyperparameters). So no query rating of any scenario, and no new user or new item, is seen in
training; :func:`check_no_leakage` verifies it on every split built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metakit.errors import MetakitError, unknown_name
from metakit.recsys.movielens import RatingsData

#: Scenario keys and the paper's names for them.
SCENARIOS: dict[str, str] = {
    "warm": "warm state",
    "new_users": "existing items for new users",
    "new_items": "new items for existing users",
    "new_users_new_items": "new items for new users",
}


def check_scenarios(names: list[str]) -> list[str]:
    """Return ``names`` if each is a known scenario, else raise a one-line error naming the valid ones."""
    for name in names:
        if name not in SCENARIOS:
            raise unknown_name("scenario", name, SCENARIOS)
    if not names:
        raise MetakitError(f"no scenario to evaluate; list some of: {', '.join(SCENARIOS)}.")
    return names


@dataclass
class TaskRules:
    """How users become tasks and how users/items are split (paper defaults)."""

    min_ratings: int = 13
    max_ratings: int = 100
    query: int = 10
    max_support: int | None = 90
    new_user_fraction: float = 0.2
    new_item_fraction: float = 0.2
    new_items_by: str = "first_rating"
    val_fraction: float = 0.1
    split_seed: int = 0

    def check(self) -> None:
        """Raise a one-line error for rules that cannot make tasks."""
        if self.query < 1:
            raise MetakitError(f"tasks.query must be >= 1, got {self.query}.")
        if self.min_ratings <= self.query:
            raise MetakitError(f"tasks.min_ratings ({self.min_ratings}) must exceed tasks.query ({self.query}) "
                               f"so every task keeps a support rating.")
        if self.max_ratings < self.min_ratings:
            raise MetakitError(f"tasks.max_ratings ({self.max_ratings}) is below tasks.min_ratings ({self.min_ratings}).")
        if self.max_support is not None and self.max_support < 1:
            raise MetakitError(f"tasks.max_support must be >= 1 or empty, got {self.max_support}.")
        for name in ("new_user_fraction", "new_item_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise MetakitError(f"tasks.{name} must be strictly between 0 and 1, got {value}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MetakitError(f"tasks.val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.new_items_by not in ("first_rating", "release_year"):
            raise MetakitError(f"tasks.new_items_by must be first_rating or release_year, got {self.new_items_by!r}.")


@dataclass
class UserTask:
    """One user's support and query ratings (item indices, ratings, timestamps), oldest first."""

    user: int
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray
    support_times: np.ndarray
    query_times: np.ndarray


@dataclass
class Split:
    """Everything a recommender trains and is evaluated on.

    Attributes:
        train_user, train_item, train_rating: the training ratings (parallel arrays).
        train_by_user: each training user's training rating indices into those arrays, by time.
        val: validation tasks (held-out existing users, existing items).
        scenarios: each scenario's test tasks.
        new_user / new_item: boolean masks over all users / items.
    """

    train_user: np.ndarray
    train_item: np.ndarray
    train_rating: np.ndarray
    train_time: np.ndarray
    train_by_user: dict[int, np.ndarray]
    val: list[UserTask]
    scenarios: dict[str, list[UserTask]]
    new_user: np.ndarray
    new_item: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _latest(first: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the latest ``fraction`` of entries by ``first`` (ties broken by index), among finite ones."""
    seen = np.flatnonzero(np.isfinite(first))
    order = seen[np.lexsort((seen, first[seen]))]
    count = int(round(fraction * len(seen)))
    mask = np.zeros(len(first), dtype=bool)
    if count:
        mask[order[len(order) - count:]] = True
    return mask


def _task(user: int, items: np.ndarray, ratings: np.ndarray, times: np.ndarray, rules: TaskRules) -> UserTask:
    q = rules.query
    start = 0 if rules.max_support is None else max(0, len(items) - q - rules.max_support)
    return UserTask(user, items[start:-q], ratings[start:-q], items[-q:], ratings[-q:], times[start:-q], times[-q:])


def build_split(data: RatingsData, rules: TaskRules) -> Split:
    """Split ``data`` into training ratings, validation tasks and the four scenarios (see module doc)."""
    rules.check()
    if data.num_ratings == 0:
        raise MetakitError(f"{data.name} has no ratings; check the data files.")
    ts = data.timestamp.astype(np.float64)
    first_user = np.full(data.num_users, np.inf)
    np.minimum.at(first_user, data.user, ts)
    new_user = _latest(first_user, rules.new_user_fraction)
    if rules.new_items_by == "release_year":
        year = np.array([data.years[c] if c else np.inf for c in data.item_year.tolist()], dtype=np.float64)
        rated = np.zeros(data.num_items, dtype=bool)
        rated[data.item] = True
        new_item = _latest(np.where(rated, year, np.inf), rules.new_item_fraction)
    else:
        first_item = np.full(data.num_items, np.inf)
        np.minimum.at(first_item, data.item, ts)
        new_item = _latest(first_item, rules.new_item_fraction)

    order = np.lexsort((data.item, data.timestamp, data.user))  # by user, then time (ties: item)
    bounds = np.searchsorted(data.user[order], np.arange(data.num_users + 1))
    eligible = lambda n: rules.min_ratings <= n <= rules.max_ratings  # noqa: E731
    existing_pool: list[tuple[int, np.ndarray]] = []
    scenarios: dict[str, list[UserTask]] = {name: [] for name in SCENARIOS}
    for u in range(data.num_users):
        idx = order[bounds[u]:bounds[u + 1]]
        if len(idx) == 0:
            continue
        on_new = new_item[data.item[idx]]
        old, new = idx[~on_new], idx[on_new]
        if new_user[u]:
            for name, part in (("new_users", old), ("new_users_new_items", new)):
                if eligible(len(part)):
                    scenarios[name].append(_task(u, data.item[part], data.rating[part], data.timestamp[part], rules))
            continue
        if eligible(len(old)):
            existing_pool.append((u, old))
            if eligible(len(new)):
                scenarios["new_items"].append(_task(u, data.item[new], data.rating[new], data.timestamp[new], rules))

    rng = np.random.default_rng(rules.split_seed)
    n_val = int(round(rules.val_fraction * len(existing_pool)))
    val_pick = set(rng.choice(len(existing_pool), n_val, replace=False).tolist()) if n_val else set()
    val, train_parts = [], []
    val_users = set()
    for j, (u, idx) in enumerate(existing_pool):
        task = _task(u, data.item[idx], data.rating[idx], data.timestamp[idx], rules)
        if j in val_pick:
            val.append(task)
            val_users.add(u)
        else:
            scenarios["warm"].append(task)
            train_parts.append(idx[:-rules.query])
    # Held-out validation users were never trained on: they are not "existing" for new items either.
    scenarios["new_items"] = [t for t in scenarios["new_items"] if t.user not in val_users]
    train_idx = np.concatenate(train_parts) if train_parts else np.zeros(0, dtype=np.int64)
    train_user = data.user[train_idx]
    by_user: dict[int, np.ndarray] = {}
    starts = np.flatnonzero(np.r_[True, train_user[1:] != train_user[:-1]]) if len(train_user) else np.zeros(0, int)
    for s, e in zip(starts.tolist(), [*starts[1:].tolist(), len(train_user)]):
        by_user[int(train_user[s])] = np.arange(s, e)
    split = Split(
        train_user=train_user,
        train_item=data.item[train_idx],
        train_rating=data.rating[train_idx],
        train_time=data.timestamp[train_idx],
        train_by_user=by_user,
        val=val,
        scenarios=scenarios,
        new_user=new_user,
        new_item=new_item,
    )
    split.stats = {
        "users": data.num_users, "items": data.num_items, "ratings": data.num_ratings,
        "new_users": int(new_user.sum()), "new_items": int(new_item.sum()),
        "train_users": len(by_user), "train_ratings": int(len(train_idx)), "val_tasks": len(val),
        "tasks": {name: len(tasks) for name, tasks in scenarios.items()},
    }
    if not by_user:
        raise MetakitError(
            f"no training users: no existing user of {data.name} has {rules.min_ratings}-{rules.max_ratings} ratings "
            f"of existing items; loosen tasks.min_ratings/max_ratings or the new_*_fraction settings."
        )
    check_no_leakage(split)
    return split


def check_no_leakage(split: Split) -> None:
    """Raise ``AssertionError`` if any query rating, new user or new item reaches the training data.

    Also checks that validation users are absent from training. An internal invariant, so a
    violation is a bug in :func:`build_split`, not a user error.
    """
    trained = set(zip(split.train_user.tolist(), split.train_item.tolist()))
    assert not split.new_user[split.train_user].any(), "a new user's rating is in the training data"
    assert not split.new_item[split.train_item].any(), "a new item's rating is in the training data"
    for name, tasks in [*split.scenarios.items(), ("val", split.val)]:
        for t in tasks:
            for i in t.query_items.tolist():
                assert (t.user, i) not in trained, f"query rating (user {t.user}, item {i}) of {name} is in training"
    val_users = {t.user for t in split.val}
    assert not val_users & set(split.train_by_user), "a validation user is in the training data"


def training_task(split: Split, user: int, rules: TaskRules, rng: np.random.Generator) -> UserTask | None:
    """A meta-training task from ``user``'s training ratings: a fresh random support/query partition.

    Drawing the partition anew each epoch gives the meta-learner many tasks per user; the query
    is at most ``rules.query`` ratings and at most half of them. ``None`` for users with fewer
    than two training ratings.
    """
    idx = split.train_by_user[user]
    if len(idx) < 2:
        return None
    perm = idx[rng.permutation(len(idx))]
    q = min(rules.query, len(idx) // 2)
    support = perm[q:] if rules.max_support is None else perm[q:q + rules.max_support]
    query = perm[:q]
    return UserTask(user, split.train_item[support], split.train_rating[support], split.train_item[query],
                    split.train_rating[query], split.train_time[support], split.train_time[query])


def at_support_size(tasks: list[UserTask], size: int, min_support: int | None = None) -> list[UserTask]:
    """Each task with its support cut to its **earliest** ``size`` ratings, the query unchanged.

    Only tasks with at least ``min_support`` (default ``size``) support ratings are kept, so
    calling this with one ``min_support`` for several sizes gives the same users and the same
    query ratings at every size: a cold-start curve whose points differ only in what the
    user has rated so far. Support sets are oldest first (see :func:`build_split`), so the
    earliest ratings are the first ones.
    """
    need = size if min_support is None else max(size, min_support)
    return [UserTask(t.user, t.support_items[:size], t.support_ratings[:size], t.query_items, t.query_ratings,
                     t.support_times[:size], t.query_times)
            for t in tasks if len(t.support_items) >= need]


def validation_sets(split: Split, sizes: list[int]) -> list[list[UserTask]]:
    """The validation users as the paper's tasks (full support) and at each support size (curve protocol).

    Model selection scores a method by its MAE averaged over these sets, so settings are chosen
    for few ratings as well as many, and on validation users only.
    """
    sets = [split.val]
    if sizes:
        top = max(sizes)
        sets += [s for s in (at_support_size(split.val, n, top) for n in sorted(sizes)) if s]
    return sets


def temporal_training_task(split: Split, user: int, rules: TaskRules, rng: np.random.Generator) -> UserTask | None:
    """A meta-training task from ``user``'s training ratings in time order, as the test tasks are made.

    The query is ``rules.query`` consecutive ratings (at most half the user's) starting at a
    random point of the user's later half; the support is every rating before them, oldest
    first (a learner cuts it to its earliest ratings). ``None`` for users with fewer than two
    training ratings.
    """
    idx = split.train_by_user[user]
    if len(idx) < 2:
        return None
    q = min(rules.query, len(idx) // 2)
    start = int(rng.integers(len(idx) // 2, len(idx) - q + 1))
    support, query = idx[:start], idx[start:start + q]
    return UserTask(user, split.train_item[support], split.train_rating[support], split.train_item[query],
                    split.train_rating[query], split.train_time[support], split.train_time[query])
