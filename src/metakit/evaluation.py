"""Evaluation as the field reports it: mean over many fixed test episodes with a 95% CI.

The interval is ``1.96 * std / sqrt(N)`` over per-episode scores (sample standard deviation).
Adaptation time is the wall time of ``learner.adapt`` on one episode's support set; the median over
episodes is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import Progress

from metakit.episodes import FixedEpisodes, TaskSource
from metakit.errors import MetakitError
# Scoring one learner lives a floor below, where a learner can use it; callers keep these names here.
from metakit.learners.scoring import EvalResult, evaluate_learner, mean_ci95

__all__ = ["EvalResult", "evaluate_experiment", "evaluate_learner", "evaluate_run", "load_trained", "mean_ci95",
           "test_source"]

if TYPE_CHECKING:
    from metakit.experiment import Experiment


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
