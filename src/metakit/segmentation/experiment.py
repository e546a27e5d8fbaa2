"""From a config to a segmentation run: the experiment the shared trainer meta-trains, and its evaluation.

A segmentation config is an ordinary metakit config (:mod:`metakit.config`, same sections, same
overrides): ``dataset`` names a segmentation dataset (``seg-glyphs``, ``seg-omniglot`` or
``fss-folder``) whose loader options sit beside its name, ``backbone`` is ``seg-fcn``,
``learner`` a segmentation learner, and ``episodes`` / ``eval`` give the ways (1, the field's
standard, or N classes and background), shots and queries. :func:`build_seg_experiment` turns it into an object with the interface
:class:`metakit.training.Trainer` uses (``config``, ``learner``, ``train_source``,
``val_source``), so meta-training, checkpoints, resume, ``metrics.jsonl`` and ``report.md`` are
the run layer's own. :func:`evaluate_seg_run` scores a run the way the field reports it and writes
``evaluation.json`` in the shape :func:`metakit.reporting.run_report` renders.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metakit.backbones import build_backbone
from metakit.config import Config, call_with_options
from metakit.datasets import get_dataset
from metakit.episodes import episode_seed
from metakit.errors import MetakitError, unknown_name
from metakit.learners import Learner, TaskInfo, build_learner
from metakit.segmentation.episodes import SegmentationEpisodes
from metakit.segmentation.metrics import IoUAccumulator, average_precision, boxes_of, detect_instances
from metakit.segmentation.scenes import SceneSet
from metakit.utils import seed_everything

__all__ = ["SegExperiment", "build_seg_experiment", "evaluate_seg_run", "load_seg_sets"]

#: The task type of this domain's datasets (their DatasetSpec) and learners (their TaskInfo).
TASK_TYPE = "segmentation"


@dataclass
class SegExperiment:
    """The built pieces of a segmentation run; what :class:`~metakit.training.Trainer` needs of an experiment."""

    config: Config
    task: TaskInfo
    learner: Learner
    sets: dict[str, SceneSet]

    def source(self, split: str, ways: int, shots: int, queries: int, labels: str = "episode") -> SegmentationEpisodes:
        """``ways``-way ``shots``-shot episodes with ``queries`` query images per class over ``split``.

        ``labels``: which objects the label maps mark (see :class:`SegmentationEpisodes`).
        """
        if split not in self.sets:
            raise unknown_name("split", split, self.sets)
        scenes = self.sets[split]
        return SegmentationEpisodes(scenes, shots, queries, strict=scenes.strict, ways=ways, labels=labels)

    def train_source(self) -> SegmentationEpisodes:
        """The meta-training episodes, labelled as the learner trains (:attr:`MaskLearner.train_labels`)."""
        e = self.config.episodes
        return self.source("train", e.ways, e.shots, e.queries, labels=getattr(self.learner, "train_labels", "episode"))

    def val_source(self) -> SegmentationEpisodes:
        """The validation episodes (``eval.val_shots`` or the first of ``eval.shots``, the first of ``eval.ways``)."""
        ev = self.config.eval
        return self.source("val", ev.ways[0], ev.val_shots or ev.shots[0], ev.queries)


def load_seg_sets(config: Config) -> dict[str, SceneSet]:
    """The ``train``/``val``/``test`` scene sets the config's ``dataset`` section describes."""
    d = config.dataset
    spec = get_dataset(d.name)
    if spec.task_type != TASK_TYPE:
        raise MetakitError(
            f"dataset {d.name!r} is a {spec.task_type} dataset; a segmentation run needs seg-glyphs, seg-omniglot "
            f"or fss-folder."
        )
    options = {"split": d.split, "split_seed": d.split_seed, "fractions": list(d.fractions), **d.options}
    return call_with_options(spec.resolve("loader"), options, f"dataset {d.name!r}")


def _check(config: Config) -> None:
    e, ev = config.episodes, config.eval
    if e.ways < 1 or not ev.ways or any(w < 1 for w in ev.ways):
        raise MetakitError(
            f"segmentation episodes need ways >= 1 (1: one class against background, the field's standard); "
            f"got episodes.ways={e.ways} and eval.ways={ev.ways}."
        )
    if e.sampler != "standard" or e.augment or config.pretrain.objective or config.dataset.rotations:
        raise MetakitError(
            "segmentation runs take no episodes.sampler, episodes.augment, pretrain or dataset.rotations; remove them."
        )
    if e.meta_batch < 1:
        raise MetakitError(f"episodes.meta_batch must be >= 1, got {e.meta_batch}.")


def build_seg_experiment(config: Config) -> SegExperiment:
    """Load the scenes, build the backbone and learner; every impossible setting fails here, before training."""
    _check(config)
    seed_everything(config.seed)  # weight initialisation depends on the run's seed only
    sets = load_seg_sets(config)
    train = sets["train"]
    ways = config.episodes.ways
    task = TaskInfo(TASK_TYPE, train.image_shape, ways, num_classes=train.num_classes,
                    max_ways=max(ways, *config.eval.ways))
    backbone = build_backbone(config.backbone.name, task.input_shape, **config.backbone.options)
    learner = build_learner(config.learner.name, backbone, task, **config.learner.options)
    exp = SegExperiment(config, task, learner, sets)
    exp.train_source()
    exp.val_source()
    for ways in config.eval.ways:
        for shots in config.eval.shots:
            exp.source("test", ways, shots, config.eval.queries)
    return exp


def _row(metric: str, values: list[float], episodes: int, sampler: SegmentationEpisodes, adapt: float) -> dict[str, Any]:
    """One result row as :func:`metakit.reporting.run_report` renders it; the CI is over seeds."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "metric": metric, "mean": mean, "ci95": 1.96 * std / math.sqrt(len(values)), "std": std, "episodes": episodes,
        "ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries, "median_adapt_seconds": adapt,
        "calibration": None, "per_seed": values,
    }


def _score_episode(
    acc: IoUAccumulator, names: list[str], ep: Any, probs: torch.Tensor, instances: torch.Tensor,
    detections: list[tuple[torch.Tensor, torch.Tensor]], truths: list[torch.Tensor],
) -> torch.Tensor:
    """Add one episode's queries to the IoU sums and the detections; returns the predicted label maps.

    At N ways each class is scored on its own: its IoU, and the instances of the pixels labelled
    with it against its own true instances (a box matches only a box of its class).
    """
    if ep.ways == 1:
        acc.update(names[int(ep.classes.item())], probs >= 0.5, ep.query_y > 0.5)
        for q in range(len(probs)):
            detections.append(detect_instances(probs[q]))
            truths.append(boxes_of(instances[q]))
        return (probs >= 0.5).long()
    labels, truth = probs.argmax(1), ep.query_y.long()
    for i, cls in enumerate(ep.classes.tolist(), start=1):
        acc.update(names[cls], labels == i, truth == i, fb=False)
        for q in range(len(probs)):
            detections.append(detect_instances(probs[q, i], mask=labels[q] == i))
            truths.append(boxes_of(instances[q] * (truth[q] == i)))
    acc.update_fb(labels > 0, truth > 0)
    return labels


def evaluate_setting(
    learner: Learner, sampler: SegmentationEpisodes, episodes: int, seeds: int, seed: int
) -> tuple[list[dict[str, Any]], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """mIoU, FB-IoU and AP50 of ``learner`` over ``seeds`` fixed sets of ``episodes`` episodes.

    Set ``s`` is drawn from seed ``seed + s``, so every learner sees the same episodes (and, at
    every shot count, the same classes in the same order). Returns the result rows and, for the
    grid figure, (query, true labels, predicted labels) of the first few queries. The mIoU row
    also has ``per_class``: each test class's IoU over all its episodes of every seed, which pairs
    one learner or shot count with another class by class.
    """
    learner.eval()
    miou, fbiou, ap50, times = [], [], [], []
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    names = sampler.scenes.class_names
    pooled = IoUAccumulator()
    with torch.no_grad():
        for s in range(seeds):
            acc = IoUAccumulator()
            detections, truths = [], []
            for i in range(episodes):
                gen = torch.Generator().manual_seed(episode_seed(seed + s, i))
                ep, instances = sampler.sample_with_instances(gen)
                start = time.perf_counter()
                predict = learner.adapt(ep.support_x, ep.support_y, ep.ways)
                times.append(time.perf_counter() - start)
                probs = predict(ep.query_x)
                if not torch.isfinite(probs).all():
                    raise MetakitError("the learner's predictions are NaN or infinite: its weights diverged; train again with a lower train.lr.")
                labels = _score_episode(acc, names, ep, probs, instances, detections, truths)
                if len(examples) < 6 and s == 0:
                    examples.append((ep.query_x[0], ep.query_y[0], labels[0]))
            pooled.add(acc)
            miou.append(acc.miou())
            fbiou.append(acc.fb_iou())
            ap50.append(average_precision(detections, truths, iou=0.5))
    adapt = statistics.median(times)
    shape = (episodes * seeds, sampler, adapt)
    rows = [_row("miou", miou, *shape), _row("fb_iou", fbiou, *shape), _row("ap50", ap50, *shape)]
    rows[0]["per_class"] = pooled.per_class()
    return rows, examples


def grid_figure(examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], title: str) -> Any:
    """query | truth | prediction (label maps), one row per example: the figure, for the run's report to save.

    One class is white on black; N classes take a colour each (background black).
    """
    from metakit.runs import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(6, 2 * len(examples)), squeeze=False)
    top = max([1, *(int(max(t.max(), p.max())) for _, t, p in examples)])
    for row, (image, truth, labels) in zip(axes, examples, strict=True):
        img = image.permute(1, 2, 0).cpu().numpy()
        for ax, (what, data) in zip(row, (("query", img), ("truth", truth.cpu().numpy()), ("prediction", labels.float().cpu().numpy())), strict=True):
            maps = what != "query" and top > 1
            ax.imshow(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data, cmap="nipy_spectral" if maps else "gray",
                      vmin=0, vmax=top if maps else 1, interpolation="nearest")
            ax.set_title(what, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def evaluate_seg_run(
    run_dir: str | Path,
    episodes: int | None = None,
    seeds: int = 5,
    shots: list[int] | None = None,
    queries: int | None = None,
    ways: list[int] | None = None,
    split: str = "test",
    checkpoint: str = "best",
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a segmentation run on ``seeds`` fixed sets of ``episodes`` test episodes per shot count.

    Defaults come from the run's ``eval`` section (``episodes`` per seed, ``ways``, ``shots``,
    ``queries``, ``seed``). Writes ``evaluation.json``, the report and ``segmentation_grid.png`` (query | truth |
    prediction for a few test episodes) unless ``write`` is false.
    """
    from metakit.reporting import run_report
    from metakit.runs import Plot, RunPaths, load_run_config, load_weights, read_json, write_report
    from metakit.utils import set_threads

    if seeds < 1:
        raise MetakitError(f"--seeds must be >= 1, got {seeds}.")
    paths = RunPaths(Path(run_dir))
    config = load_run_config(run_dir)
    exp = build_seg_experiment(config)
    try:
        exp.learner.load_state_dict(load_weights(run_dir, checkpoint))
    except RuntimeError:
        raise MetakitError(f"the weights in {run_dir} do not fit the model its config builds; train the run again.") from None
    ev = config.eval
    threads = set_threads(config.train.threads)
    results, examples = [], []
    for n in ways or ev.ways:
        for k in shots or ev.shots:
            sampler = exp.source(split, n, k, queries or ev.queries)
            rows, ex = evaluate_setting(exp.learner, sampler, episodes or ev.episodes, seeds, ev.seed)
            results += rows
            examples = examples or ex
    training = read_json(paths.summary) or {}
    out = {
        "run": str(run_dir), "learner": config.learner.name, "backbone": config.backbone.name,
        "dataset": config.dataset.name, "trained_on": config.dataset.name, "split": split, "checkpoint": checkpoint,
        "episode_seed": ev.seed, "seeds": seeds, "threads": threads,
        "meta_training_seconds": training.get("train_seconds"),
        "parameters": sum(p.numel() for p in exp.learner.parameters()), "overrides": [], "results": results,
    }
    if write:
        report = run_report(paths.root, evaluation=out)  # evaluation.json, report.md
        figure = grid_figure(examples, f"{config.learner.name} on {config.dataset.name} ({split})")
        report.plots["segmentation_grid.png"] = Plot(figure, dpi=90)
        write_report(paths.root, report)
    return out
