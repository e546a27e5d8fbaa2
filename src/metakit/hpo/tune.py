"""``metakit tune``: an Optuna study over a metakit learner config.

Each trial applies the sampled parameters to the config, meta-trains it into
``OUT/trials/trial-NNNN`` and returns the best validation score on the fixed validation
episodes; every validation is reported to the trial so Optuna's pruners (median, Hyperband) can
stop poor trials early. ``--trials N`` is the number of finished (completed or pruned) trials the
*study* should reach, so several workers on one storage, or a restarted worker, stop together at
N; a worker that starts on a study that already has N finished trials only rewrites the results.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from metakit.config import Config, config_from_dict
from metakit.errors import MetakitError
from metakit.hpo import study as studylib
from metakit.hpo.space import TuneSpec, check_pruner, check_sampler
from metakit.hpo.warmstart import METHODS, PriorTasks, check_method, enqueue_configs, load_portfolio
from metakit.runs import progress_bar


@dataclass
class TuneOptions:
    """Command-line choices that override the config's ``tune`` section."""

    trials: int | None = None
    sampler: str | None = None
    pruner: str | None = None
    storage: str | None = None
    study: str | None = None
    seed: int | None = None
    warm_start: str | None = None
    warm_start_method: str = "knn"
    warm_start_size: int = 5
    metafeatures: str = "numpy"
    heartbeat: int | None = 60
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _first_point(spec: TuneSpec) -> dict[str, Any]:
    return {p.name: (p.choices[0] if p.kind == "categorical" else p.low) for p in spec.params}


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. a batch scheduler's stop) ends the trial like Ctrl-C, so it is re-queued."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sampler_seed(seed: int, shared: bool) -> int:
    """The run's seed, mixed with the process id when workers may share the study.

    Identically seeded workers would propose the same configurations; a private study (default
    storage) keeps the plain seed so it is reproducible.
    """
    if not shared:
        return seed
    import os

    return int(hashlib.sha256(f"{seed}:{os.getpid()}:{time.time_ns()}".encode()).hexdigest()[:8], 16)


def warm_start_configs(source: str, method: str, size: int, metafeatures: dict[str, float],
                       exclude: list[str]) -> list[dict[str, Any]]:
    """Configurations to enqueue from ``source``: a portfolio file, or a storage of prior studies."""
    check_method(method)
    path = Path(source)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        configs, _ = load_portfolio(path)
        return configs[:size]
    if "://" not in source and not source.startswith("journal:") and not path.exists():
        raise MetakitError(f"warm-start source {source} not found; give a portfolio file or a storage URL / file.")
    prior = PriorTasks.from_storage(studylib.storage_url(source, "."), exclude=exclude)
    if method == "knn":
        return prior.knn_configs(metafeatures, size=size)
    if method == "portfolio":
        return prior.portfolio(size=size)
    return prior.surrogate_configs(prior.candidates(per_task=20), metafeatures, size=size)


def tune(spec: TuneSpec, out: str | Path, options: TuneOptions | None = None) -> dict[str, Any]:
    """Run (or continue) the study for ``spec``; returns the summary also written to ``OUT/tune.json``.

    Raises:
        MetakitError: bad search space, sampler, pruner, storage or warm-start source.
        KeyboardInterrupt: after re-queuing the interrupted trial and writing the results so far.
    """
    import optuna

    o = options or TuneOptions()
    out = Path(out)
    sampler_name = (o.sampler or spec.sampler).lower()
    pruner_name = (o.pruner or spec.pruner).lower()
    check_sampler(sampler_name)
    check_pruner(pruner_name)
    if o.warm_start:
        check_method(o.warm_start_method)
        if o.warm_start_size < 1:
            raise MetakitError(f"--warm-start-size must be >= 1, got {o.warm_start_size}.")
    trials = o.trials if o.trials is not None else spec.trials
    if trials < 1:
        raise MetakitError(f"--trials must be >= 1, got {trials}.")
    grid = spec.grid() if sampler_name == "grid" else None

    # Build the first point once: every config and learner option is checked before any trial.
    from metakit.experiment import build_experiment

    base = config_from_dict(spec.config_dict(_first_point(spec)))
    try:
        experiment = build_experiment(base)
    except MetakitError as exc:
        raise MetakitError(f"search space of {spec.source} does not fit the config: {exc}") from None
    metric = experiment.learner.metric
    direction = "maximize" if metric == "accuracy" else "minimize"
    del experiment

    console = Console(stderr=True)
    url = studylib.storage_url(o.storage, out)
    if o.storage is None:
        out.mkdir(parents=True, exist_ok=True)
    storage = studylib.open_storage(url, heartbeat=o.heartbeat if studylib.check_storage_kind(url) == "rdb" else None)
    name = o.study or base.name
    seed = o.seed if o.seed is not None else (spec.seed if spec.seed is not None else base.seed)
    sampler = studylib.make_sampler(sampler_name, _sampler_seed(seed, shared=o.storage is not None), grid, trials)
    pruner = studylib.make_pruner(pruner_name, base.train.val_every, base.train.steps)
    study = studylib.open_study(storage, name, direction, sampler, pruner)
    out.mkdir(parents=True, exist_ok=True)

    if "space" not in study.user_attrs:
        study.set_user_attr("space", {p.name: p.kind for p in spec.params})
        study.set_user_attr("dataset", base.dataset.name)
    metafeatures = study.user_attrs.get("metafeatures")
    if metafeatures is None and o.metafeatures != "none":
        from metakit.hpo.metafeatures import config_metafeatures

        # Stored with the study, so this study can in turn warm-start later ones.
        metafeatures = config_metafeatures(base, backend=o.metafeatures, seed=seed)
        study.set_user_attr("metafeatures", metafeatures)

    recovered = studylib.recover_orphans(study)
    if recovered:
        console.print(f"re-queued trial(s) {recovered} whose worker process is gone")
    warm_note = study.user_attrs.get("warm_start")
    if o.warm_start and not warm_note:
        configs = warm_start_configs(o.warm_start, o.warm_start_method, o.warm_start_size, metafeatures or {},
                                     exclude=[name] if studylib.storage_url(o.warm_start, ".") == url else [])
        count = enqueue_configs(study, configs, space=spec.distributions(), source=o.warm_start_method)
        warm_note = f"{count} configuration(s) by {o.warm_start_method} from {o.warm_start}"
        study.set_user_attr("warm_start", warm_note)
        console.print(f"warm start: enqueued {warm_note}")

    done = studylib.finished_count(study)
    remaining = trials - done
    if done:
        console.print(f"study {name!r}: {done} finished trial(s) in {url}; {max(remaining, 0)} to go")
    current: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        trial.set_user_attr(studylib.WORKER_ATTR, studylib.worker_id())
        params = spec.suggest(trial)
        config = config_from_dict(spec.config_dict(params))
        run_dir = out / "trials" / f"trial-{trial.number:04d}"

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} ({metric} {value:.4f})")

        try:
            from metakit.training import train

            summary = train(config, run_dir, progress=False, on_validation=report)
        except MetakitError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        return float(summary[f"best_val_{metric}"])

    start = time.perf_counter()
    interrupted = False
    with progress_bar("[bold]tuning", console, o.progress) as bar:
        task = bar.add_task("tune", total=max(remaining, 0), info="")

        def on_trial(st: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            value = f"{metric} {frozen.value:.4f}" if frozen.value is not None else frozen.user_attrs.get("error", "")
            try:
                best = f"best {st.best_value:.4f} (trial {st.best_trial.number})"
            except ValueError:
                best = "no completed trial yet"
            console.print(f"trial {frozen.number} {frozen.state.name.lower()}: {value}; {best}; {frozen.params}",
                          soft_wrap=True, highlight=False)
            bar.update(task, advance=1, info=best)

        if remaining > 0:
            stop_at = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
            try:
                with _sigterm_as_interrupt():
                    study.optimize(objective, n_trials=remaining, callbacks=[on_trial, stop_at], catch=(MetakitError,))
            except KeyboardInterrupt:
                interrupted = True
                if "number" in current and studylib.requeue_interrupted(study, current["number"]):
                    console.print(f"interrupted: trial {current['number']} re-queued; run the same command to resume")
    summary = _summary(study, spec, name, url, sampler_name, pruner_name, metric, warm_note, time.perf_counter() - start)
    from metakit.hpo.results import write_results

    best_yaml = None
    if summary["best_trial"] is not None:
        best_config = config_from_dict(spec.config_dict(study.best_trial.params))
        best_yaml = _best_yaml(best_config, summary)
    summary = write_results(study, out, best_yaml, summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _best_yaml(config: Config, summary: dict[str, Any]) -> str:
    head = (
        f"# Best configuration of study {summary['study']}: trial {summary['best_trial']}, "
        f"validation {summary['metric']} {summary['best_value']:.4f}.\n"
        f"# Ready to run: metakit train best.yaml\n"
    )
    return head + config.to_yaml()


def _summary(study: Any, spec: TuneSpec, name: str, url: str, sampler: str, pruner: str, metric: str,
             warm_note: str | None, seconds: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = None
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = study.best_trial
    from metakit.hpo.study import _redact

    return {
        "study": name,
        "storage": _redact(url),
        "sampler": sampler,
        "pruner": pruner,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "space": {p.name: p.kind for p in spec.params},
        "counts": counts,
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "warm_start": warm_note,
        "seconds_this_worker": round(seconds, 2),
    }


__all__ = ["METHODS", "TuneOptions", "tune", "warm_start_configs"]
