"""Optuna plumbing shared by every tuning job: storages, samplers, pruners and recovery of lost trials.

Nothing here re-implements Optuna: storages are Optuna's ``RDBStorage`` (sqlite, PostgreSQL,
MySQL, ...) and ``JournalStorage`` (an append-only file many processes can share), samplers and
pruners are Optuna's own. What metakit adds is one-line errors for bad input and a guarantee that
an interrupted study loses no trial:

* a worker stopped by Ctrl-C or SIGTERM puts the trial it was running back in the queue
  (``requeue``) before it exits;
* a worker killed outright (SIGKILL, OOM, power cut) leaves its trial ``RUNNING``; the next worker
  on the same host finds that the owning process is gone and re-queues the trial
  (``recover_orphans``); across machines, RDB storages also use Optuna's heartbeat, whose
  stale-trial callback re-queues the trial the same way.

A re-queued trial carries Optuna's ``failed_trial``/``retry_history`` system attributes, so
``RetryHeartbeatStaleTrialCallback.retried_trial_number`` works on both paths.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from metakit.errors import MetakitError
from metakit.hpo.space import check_pruner, check_sampler

WORKER_ATTR = "worker"
INTERRUPTED_ATTR = "interrupted"
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _redact(url: str) -> str:
    """Hide a password in ``scheme://user:password@host`` so errors can be printed safely."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def storage_url(storage: str | os.PathLike | None, out_dir: str | os.PathLike) -> str:
    """Normalise ``--storage``: ``None`` means ``sqlite:///OUT/study.db``; a ``.db`` path becomes a sqlite URL."""
    if storage is None:
        return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"
    text = str(storage)
    if "://" not in text and not text.startswith("journal:") and text.endswith(_SQLITE_SUFFIXES):
        return f"sqlite:///{Path(text).resolve()}"
    return text


def open_storage(url: str, heartbeat: int | None = 60) -> Any:
    """Open an Optuna storage from a URL or a journal file path.

    Args:
        url: an SQLAlchemy URL (``sqlite:///study.db``, ``postgresql://user@host/db``, ...) or a
            journal file (``journal:PATH`` or a path ending in ``.log``/``.journal``/``.jsonl``).
        heartbeat: seconds between heartbeats of running trials (RDB storages only; ``None`` or 0
            disables it). A trial whose worker misses heartbeats for three intervals is re-queued.

    Raises:
        MetakitError: the storage cannot be opened (unreachable server, missing driver, bad path).
    """
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shown = _redact(url)
    if url.startswith("journal:") or ("://" not in url and url.endswith(_JOURNAL_SUFFIXES)):
        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise MetakitError(f"cannot open journal storage {path}: folder {path.parent} does not exist; create it first.")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes one line
            raise MetakitError(f"cannot open journal storage {path}: {_first_line(exc)}.") from None
    if "://" not in url:
        raise MetakitError(
            f"cannot tell what storage {shown!r} is; give an RDB URL (sqlite:///study.db, postgresql://user@host/db) "
            f"or a journal file (journal:PATH or a path ending in .log)."
        )
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise MetakitError(f"cannot open storage {shown}: folder {folder} does not exist; create it or pick another path.")
    # sqlite serialises writers with a file lock; a generous timeout lets several workers share it.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat arguments are flagged experimental
        hb: dict[str, Any] = {}
        if heartbeat:
            hb = {
                "heartbeat_interval": int(heartbeat),
                "grace_period": 3 * int(heartbeat),
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(),
            }
        for attempt in range(5):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, **hb)
            except Exception as exc:  # noqa: BLE001 - unreachable server, driver missing, bad URL
                # Workers that start together race to create the schema; the loser sees a lock or
                # an existing table and simply tries again.
                transient = any(word in str(exc).lower() for word in ("locked", "already exists", "unique constraint"))
                if transient and attempt < 4:
                    time.sleep(0.5 + attempt)
                    continue
                raise MetakitError(
                    f"cannot open storage {shown}: {_first_line(exc)}; check the URL, that the database server is "
                    f"reachable and that its Python driver is installed."
                ) from None
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {line}"[:300]


def make_sampler(name: str, seed: int | None, grid: dict[str, list[Any]] | None = None, trials: int = 20) -> Any:
    """Optuna's sampler called ``name`` (``grid``, ``random``, ``tpe``, ``cmaes``), seeded."""
    import optuna

    check_sampler(name)
    if name == "grid":
        if not grid:
            raise MetakitError("the grid sampler needs a search space with grid points.")
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # Optuna's default of 10 random start-up trials is most of a small study's budget.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 4)))


def make_pruner(name: str, min_resource: int = 1, max_resource: int | None = None) -> Any:
    """Optuna's pruner called ``name`` (``none``, ``median``, ``hyperband``); resources are training steps."""
    import optuna

    check_pruner(name)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.HyperbandPruner(
        min_resource=max(1, min_resource), max_resource=max_resource or "auto", reduction_factor=3
    )


def open_study(storage: Any, name: str, direction: str, sampler: Any, pruner: Any) -> Any:
    """Create the study ``name`` in ``storage`` or load it; its direction must match."""
    import optuna

    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a database that disappears mid-call
        raise MetakitError(f"cannot open study {name!r}: {_first_line(exc)}.") from None
    if study.direction.name.lower() != direction:
        raise MetakitError(
            f"study {name!r} in this storage was created to {study.direction.name.lower()}, not {direction}; "
            f"pick another --study name."
        )
    return study


def worker_id() -> str:
    """``host:pid`` of this process, stored on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def requeue(study: Any, trial: Any) -> None:
    """Put a copy of a lost ``trial`` (frozen) back in the queue with Optuna's retry attributes."""
    import optuna

    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (WORKER_ATTR, INTERRUPTED_ATTR)}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def requeue_interrupted(study: Any, number: int) -> bool:
    """Re-queue trial ``number`` of this worker after an interruption; returns whether it was re-queued.

    Optuna has already marked the trial ``FAIL``; this runs in the interrupted process itself, so
    no other worker can race it.
    """
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state.name not in ("FAIL", "RUNNING"):
        return False
    if trial.state.name == "RUNNING" and not _claim(study, trial):
        return False
    requeue(study, trial)
    return True


def _claim(study: Any, trial: Any) -> bool:
    """Atomically move a RUNNING trial to FAIL; only one worker can win, so a trial is re-queued once."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
    except (UpdateFinishedTrialError, RuntimeError):
        return False


def recover_orphans(study: Any) -> list[int]:
    """Re-queue RUNNING trials whose worker process on this host no longer exists.

    Returns the numbers of the recovered trials. Trials of live processes, and of other hosts
    (covered by the RDB heartbeat), are left alone.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if _claim(study, trial):
            requeue(study, study._storage.get_trial(trial._trial_id))
            recovered.append(trial.number)
    return recovered


def finished_count(study: Any) -> int:
    """Trials that count towards ``--trials``: completed or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_storage_kind(url: str) -> str:
    """``rdb`` or ``journal`` for a storage URL (used in reports)."""
    return "journal" if url.startswith("journal:") or ("://" not in url and url.endswith(_JOURNAL_SUFFIXES)) else "rdb"


__all__ = [
    "finished_count", "make_pruner", "make_sampler", "open_storage", "open_study", "recover_orphans", "requeue",
    "requeue_interrupted", "storage_url", "worker_id",
]
