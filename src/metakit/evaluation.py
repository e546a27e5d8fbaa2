"""Evaluation as the field reports it: mean over many fixed test episodes with a 95% CI.

The interval is ``1.96 * std / sqrt(N)`` over per-episode scores (sample standard deviation).
Adaptation time is the wall time of ``learner.adapt`` on one episode's support set; the median over
episodes is reported.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import Progress

from metakit.calibration import Calibration
from metakit.episodes import Episode, FixedEpisodes, TaskSource
from metakit.errors import MetakitError
from metakit.learners import Learner

if TYPE_CHECKING:
    from metakit.experiment import Experiment


@dataclass
class EvalResult:
    """Scores of one learner on one set of fixed episodes."""

    metric: str
    mean: float
    ci95: float
    std: float
    episodes: int
    ways: int
    shots: int
    queries: int
    median_adapt_seconds: float
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``accuracy 0.9512 ± 0.0031 (5-way 1-shot, 15 queries, 1000 episodes)``.

        ``ways`` / ``shots`` of 0 mean they varied between episodes (Meta-Dataset episodes).
        """
        ways = f"{self.ways}-way" if self.ways else "variable-way"
        shots = f"{self.shots}-shot" if self.shots else "variable-shot"
        queries = f"{self.queries} queries/class" if self.ways else "up to 10 queries/class"
        return f"{self.metric} {self.mean:.4f} ± {self.ci95:.4f} ({ways} {shots}, {queries}, {self.episodes} episodes)"


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, 95% CI half-width ``1.96 * std / sqrt(N)`` and sample std of ``values``."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, 1.96 * std / math.sqrt(len(values)), std


def evaluate_learner(
    learner: Learner,
    episodes: Sequence[Episode],
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    description: str = "evaluating",
) -> EvalResult:
    """Adapt ``learner`` to each episode's support set and score its query predictions.

    The learner is put in eval mode; adaptation runs under ``torch.no_grad()`` (learners with an
    inner optimisation loop re-enable gradients themselves).
    """
    was_training = learner.training
    learner.eval()
    scores, times = [], []
    task = progress.add_task(description, total=len(episodes)) if progress is not None else None
    first: Episode | None = None
    shapes: set[tuple[int, int, int]] = set()
    calibration = Calibration() if learner.task.task_type == "classification" else None
    with torch.no_grad():
        for episode in episodes:
            episode = episode.to(device)
            first = first or episode
            shapes.add((episode.ways, episode.shots, episode.queries))
            start = time.perf_counter()
            predict = learner.adapt(episode.support_x, episode.support_y, episode.ways)
            times.append(time.perf_counter() - start)
            outputs = predict(episode.query_x)
            if not torch.isfinite(outputs).all():
                # Diverged weights (e.g. a huge train.lr) give NaN scores and break calibration.
                raise MetakitError(
                    "the learner's predictions are NaN or infinite: its weights diverged; lower train.lr "
                    "or set train.grad_clip, and train again."
                )
            scores.append(learner.score(outputs, episode.query_y))
            if calibration is not None:
                calibration.update(learner.probabilities(outputs).cpu(), episode.query_y.cpu())
            if task is not None:
                progress.advance(task)
    learner.train(was_training)
    mean, ci, std = mean_ci95(scores)
    return EvalResult(
        metric=learner.metric,
        mean=mean,
        ci95=ci,
        std=std,
        episodes=len(scores),
        # Variable-way / variable-shot episodes (Meta-Dataset) are recorded as 0.
        ways=first.ways if first and len({s[0] for s in shapes}) == 1 else 0,
        shots=first.shots if first and len({s[1] for s in shapes}) == 1 else 0,
        queries=first.queries if first and len({s[2] for s in shapes}) == 1 else 0,
        median_adapt_seconds=statistics.median(times),
        calibration=calibration.to_dict() if calibration is not None else None,
    )


def load_trained(run_dir: str | Path, checkpoint: str = "best", overrides: Sequence[str] = ()) -> Experiment:
    """Rebuild a run's experiment from its ``config.yaml`` and load its trained weights.

    ``overrides`` change evaluation-time settings (e.g. ``learner.eval_inner_steps=10``); they
    must not change the model's shape.
    """
    from metakit.config import config_from_dict, merge, parse_overrides
    from metakit.experiment import build_experiment
    from metakit.runs import load_run_config, load_weights

    config = load_run_config(run_dir)
    if overrides:
        config = config_from_dict(merge(config.to_dict(), parse_overrides(overrides)))
    exp = build_experiment(config)
    try:
        exp.learner.load_state_dict(load_weights(run_dir, checkpoint))
    except RuntimeError:
        raise MetakitError(
            f"the weights in {run_dir} do not fit the model the config builds; only override evaluation settings."
        ) from None
    return exp


def test_source(exp: Experiment, ways: int, shots: int, queries: int, split: str = "test",
                dataset: dict[str, Any] | None = None) -> TaskSource:
    """Episodes for evaluating ``exp``'s learner: its own ``split``, or another dataset's.

    ``dataset`` (a config ``dataset`` section, e.g. ``{"name": "omniglot", "split": "group"}``)
    evaluates across domains: the learner keeps the shapes it was trained with, and the other
    dataset must produce images of the same shape.
    """
    if dataset is None:
        return exp.source(split, ways, shots, queries)
    from metakit.config import dataset_from_dict
    from metakit.datasets import load_splits

    d = dataset_from_dict(dict(dataset))
    splits = load_splits(d.name, split=d.split, seed=d.split_seed, fractions=tuple(d.fractions), rotations=d.rotations, **d.options)
    target = exp.featurize(splits[split])  # a frozen pretrained backbone: its cached vectors, any image size
    if target.image_shape != tuple(exp.task.input_shape):
        raise MetakitError(
            f"dataset {d.name!r} has images {list(target.image_shape)} but the learner was trained on "
            f"{list(exp.task.input_shape)}; set the dataset's image_size to match."
        )
    return exp.sampler_for(target, ways, shots, queries)


def evaluate_experiment(
    exp: Experiment,
    ways: Sequence[int],
    shots: Sequence[int],
    queries: int,
    episodes: int,
    seed: int,
    split: str = "test",
    dataset: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[EvalResult]:
    """Evaluate ``exp.learner`` on fixed episodes for every ways x shots setting."""
    results = []
    # Meta-Dataset episodes draw their own ways and shots: one evaluation, whatever ways x shots ask.
    settings = [(0, 0)] if exp.config.episodes.sampler == "metadataset" else [(n, k) for n in ways for k in shots]
    with Progress(transient=True, disable=not progress) as bar:
        for n, k in settings:
            fixed = FixedEpisodes(test_source(exp, n, k, queries, split, dataset), episodes, seed)
            what = f"{n}-way {k}-shot" if n else "variable-way variable-shot"
            results.append(evaluate_learner(exp.learner, fixed, progress=bar, description=what))
    return results


def evaluate_run(
    run_dir: str,
    episodes: int | None = None,
    ways: Sequence[int] | None = None,
    shots: Sequence[int] | None = None,
    queries: int | None = None,
    checkpoint: str = "best",
    split: str = "test",
    progress: bool = True,
    overrides: Sequence[str] = (),
    write: bool = True,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on fixed ``split`` episodes for every ways x shots setting.

    Defaults come from the run's config (``eval`` section). The episodes depend only on the
    dataset split and ``eval.seed``, so every learner evaluated with the same config sees the same
    episodes. ``overrides`` change evaluation-time settings of the saved config, e.g.
    ``learner.eval_inner_steps=10``; ``dataset`` evaluates on another dataset's split
    (cross-domain). Results go to ``RUN_DIR/evaluation.json`` and the report (unless ``write`` is
    false, or another dataset is used).
    """
    from metakit.runs import RunPaths, read_json
    from metakit.utils import set_threads

    paths = RunPaths(Path(run_dir))
    exp = load_trained(run_dir, checkpoint, overrides)
    config = exp.config
    ev = config.eval
    threads = set_threads(config.train.threads)
    results = evaluate_experiment(
        exp, list(ways or ev.ways), list(shots or ev.shots), queries or ev.queries, episodes or ev.episodes,
        ev.seed, split, dataset, progress,
    )
    training = read_json(paths.summary) or {}
    out = {
        "run": str(run_dir),
        "learner": config.learner.name,
        "backbone": config.backbone.name,
        "dataset": (dataset or {}).get("name", config.dataset.name),
        "trained_on": config.dataset.name,
        "split": split,
        "checkpoint": checkpoint,
        "episode_seed": ev.seed,
        "threads": threads,
        "meta_training_seconds": training.get("train_seconds"),
        "parameters": sum(p.numel() for p in exp.learner.parameters()),
        "overrides": list(overrides),
        "results": [r.to_dict() for r in results],
    }
    if write and dataset is None:
        from metakit.reporting import run_report
        from metakit.runs import write_report

        write_report(paths.root, run_report(paths.root, evaluation=out))
    return out
