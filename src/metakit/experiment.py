"""From a :class:`~metakit.config.Config` to the objects a run needs: task sources and a learner.

Training, evaluation and comparison all build their pieces here, so a config means the same
thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from metakit.backbones import build_backbone
from metakit.config import Config, call_with_options
from metakit.datasets import ClassDataset, get_dataset, load_splits
from metakit.episodes import EpisodeSampler, MetaDatasetSampler, TaskSource, Transform, random_shift
from metakit.errors import MetakitError, unknown_name
from metakit.learners import Learner, TaskInfo, build_learner
from metakit.pretraining import validate_pretrain_config
from metakit.utils import seed_everything, set_threads

if TYPE_CHECKING:
    from metakit.feature_cache import FeatureCache

AUGMENTATIONS = {"shift": lambda: random_shift(2)}
#: ``episodes.sampler`` values: N-way K-shot, or Meta-Dataset's variable-way variable-shot episodes.
SAMPLERS = ("standard", "metadataset")


@dataclass
class Experiment:
    """The built pieces of a run.

    Attributes:
        config: the validated config.
        task: what the learner was told about its tasks.
        learner: the learner (untrained until a checkpoint is loaded or training runs).
        splits: class splits (classification) — empty for task distributions. With a frozen
            pretrained backbone they hold the cached feature vectors, not the images.
        features: the embedding cache of a frozen pretrained backbone (:mod:`metakit.feature_cache`),
            or ``None`` when the learner sees images.
    """

    config: Config
    task: TaskInfo
    learner: Learner
    splits: dict[str, ClassDataset] = field(default_factory=dict)
    _regression_options: dict[str, Any] = field(default_factory=dict)
    features: FeatureCache | None = None

    def source(self, split: str, ways: int, shots: int, queries: int, train: bool = False) -> TaskSource:
        """A task source over ``split`` (``train``/``val``/``test``) with the given episode shape."""
        cfg = self.config
        if self.task.task_type == "regression":
            factory = get_dataset(cfg.dataset.name).resolve("loader")
            opts = {**self._regression_options, "shots": shots, "queries": queries}
            return call_with_options(factory, opts, f"dataset {cfg.dataset.name!r}")
        if split not in self.splits:
            raise unknown_name("split", split, self.splits)
        transform = _augmentation(cfg.episodes.augment) if train else None
        return self.sampler_for(self.splits[split], ways, shots, queries, transform)

    def sampler_for(
        self, dataset: ClassDataset, ways: int, shots: int, queries: int, transform: Transform | None = None
    ) -> TaskSource:
        """Episodes of ``dataset`` as this run draws them (``episodes.sampler``); Meta-Dataset episodes ignore the shape."""
        if self.config.episodes.sampler == "metadataset":
            return MetaDatasetSampler(dataset, transform=transform)
        return EpisodeSampler(dataset, ways, shots, queries, transform=transform)

    def featurize(self, dataset: ClassDataset) -> ClassDataset:
        """``dataset`` as this run's learner takes it: cached feature vectors with a frozen pretrained backbone."""
        return dataset if self.features is None else self.features.featurize(dataset)

    def train_source(self) -> TaskSource:
        """The meta-training episodes."""
        e = self.config.episodes
        return self.source("train", e.ways, e.shots, e.queries, train=True)

    def val_source(self) -> TaskSource:
        """The validation episodes (first evaluation ways, ``val_shots`` or the first eval shots)."""
        ev = self.config.eval
        shots = ev.val_shots or ev.shots[0]
        return self.source("val", ev.ways[0], shots, ev.queries)


def _augmentation(name: str | None) -> Transform | None:
    if name is None:
        return None
    if name not in AUGMENTATIONS:
        raise unknown_name("augmentation", name, AUGMENTATIONS)
    return AUGMENTATIONS[name]()


def build_experiment(config: Config) -> Experiment:
    """Load data, build the backbone and the learner described by ``config``.

    Everything that can be wrong with a config (names, options, impossible episode specs) fails
    here, before any training starts.
    """
    seed_everything(config.seed)  # weight initialisation depends on the run's seed only
    spec = get_dataset(config.dataset.name)
    validate_pretrain_config(config)
    d, e, ev = config.dataset, config.episodes, config.eval
    if e.meta_batch < 1:
        raise MetakitError(f"episodes.meta_batch must be >= 1, got {e.meta_batch}.")
    if e.sampler not in SAMPLERS:
        raise unknown_name("episodes.sampler", e.sampler, SAMPLERS)
    splits: dict[str, ClassDataset] = {}
    regression_options: dict[str, Any] = {}
    if spec.task_type in ("classification", "recommendation"):  # load_splits says where ratings belong
        splits = load_splits(
            d.name, split=d.split, seed=d.split_seed, fractions=tuple(d.fractions), rotations=d.rotations, **d.options
        )
        train = splits["train"]
        max_ways = max(e.ways, *ev.ways)
        if e.sampler == "metadataset":  # learners with a fixed-size head size it for up to 50 ways
            max_ways = max(max_ways, *(min(50, s.num_classes) for s in splits.values()))
        task = TaskInfo(
            "classification", train.image_shape, e.ways, num_classes=train.num_classes, max_ways=max_ways
        )
    else:
        regression_options = dict(d.options)
        probe = call_with_options(
            spec.resolve("loader"), {**regression_options, "shots": e.shots, "queries": e.queries},
            f"dataset {d.name!r}",
        )
        sample = probe.sample(torch.Generator().manual_seed(0))
        task = TaskInfo("regression", tuple(sample.support_x.shape[1:]), 1, output_dim=sample.support_y.shape[-1])
    backbone = build_backbone(config.backbone.name, task.input_shape, **config.backbone.options)
    features = None
    if splits and getattr(backbone, "cache_features", False):
        # A frozen encoder: embed every image once; the learner gets the trainable head on the vectors.
        from metakit.feature_cache import FeatureCache

        if e.augment:
            raise MetakitError(
                "episodes.augment changes images, but the frozen backbone's features are cached per image; "
                "remove episodes.augment or set backbone.cache: false."
            )
        if config.pretrain.objective:
            raise MetakitError(
                "pretrain.objective trains the backbone, but this backbone is frozen (freeze: true); "
                "remove pretrain.objective or set backbone.freeze: false."
            )
        set_threads(config.train.threads)
        features = FeatureCache(backbone)
        splits = {name: features.featurize(part) for name, part in splits.items()}
        backbone = features.head_backbone()
        task = replace(task, input_shape=(features.dim,))
    learner = build_learner(config.learner.name, backbone, task, **config.learner.options)
    exp = Experiment(config, task, learner, splits, regression_options, features=features)
    # Build every source once so impossible specs fail now rather than mid-run.
    exp.train_source()
    exp.val_source()
    for ways in ev.ways:
        for shots in ev.shots:
            exp.source("test", ways, shots, ev.queries)
    return exp
