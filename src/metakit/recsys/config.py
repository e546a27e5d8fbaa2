"""The recsys run configuration: YAML validated against dataclasses, with ``key=value`` overrides.

The recsys plugin registers :class:`RecsysConfig` as its config section, so :mod:`metakit.config`
validates it like every other (unknown keys fail with the closest valid ones, values are
type-checked; ``load_config(path, domain="recsys")``), then
:meth:`RecsysConfig.check` rejects impossible values (unknown methods or scenarios, bad fractions)
with one line each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from metakit.config import check_threads, config_from_dict, load_config, yaml_dump
from metakit.errors import MetakitError, unknown_name
from metakit.recsys.tasks import SCENARIOS, TaskRules, check_scenarios

#: Methods a run can train; ``melu`` trains one model per entry of ``melu.local_steps``.
METHODS = ("global_mean", "item_popularity", "mf", "nn_global", "nn_finetune", "melu", "metamf", "tanp", "surprise_svd")
#: Methods that meta-learn (the rest are the baselines they are compared with).
META_METHODS = ("melu", "metamf", "tanp")
SOURCES = ("synthetic", "ml-100k", "ml-1m", "ml-latest-small", "ml-25m", "ml-32m")


@dataclass
class DataConfig:
    """Which ratings: ``synthetic`` (options in ``synthetic``, files in ``format``) or MovieLens."""

    source: str = "synthetic"
    root: str | None = None
    download: bool = True
    format: str = "ml-1m"
    synthetic: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The rating network shared by MeLU and the neural baselines (paper: 32, [64, 64])."""

    embedding_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    item_ids: bool = False  # add a global item-id embedding (an extension; the paper uses item content only)
    global_layers: int = 0  # first decision layers kept global (0 = the paper: every decision layer is local)


@dataclass
class MeluTraining:
    """The meta-training settings the ``melu`` section hands on unchanged to each variant's training.

    ``learn_local_lr`` meta-learns element-wise local step sizes (Meta-SGD), starting from the local lr.
    """

    learn_local_lr: bool = False
    first_order: bool = False
    meta_batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0

    def training_settings(self) -> dict[str, Any]:
        """These settings as keyword arguments (for :class:`~metakit.recsys.melu.MetaTrainConfig`)."""
        return {f.name: getattr(self, f.name) for f in fields(MeluTraining)}


@dataclass
class MeluSection(MeluTraining):
    """MeLU's meta-training: ``local_steps`` lists the variants (MeLU-1, MeLU-5).

    ``local_lr_grid``, when non-empty, replaces ``local_lr`` by a grid: each variant is
    meta-trained once per value and the one best on the validation users is kept (the model
    selection the baselines get).
    """

    local_steps: list[int] = field(default_factory=lambda: [1, 5])
    local_lr: float = 0.03
    local_lr_grid: list[float] = field(default_factory=list)
    epochs: int = 100


@dataclass
class TaskTraining:
    """The outer loop of the recommenders trained on users as tasks (meta-MF, TaNP).

    Adam for ``epochs`` over the training users in meta-batches; ``weight_decay`` is L2 on the
    item side (meta-MF) or on the whole network (TaNP). With ``temporal`` a training task is
    made the way test tasks are (a user's earliest ratings predict later ones), otherwise it
    is a random partition of the user's ratings. ``first_order`` drops second-order terms of
    an inner loop, where there is one. ``popularity_offset``: see the field.
    """

    epochs: int = 40
    meta_batch: int = 32
    lr: float = 0.01
    weight_decay: float = 0.1
    grad_clip: float | None = 10.0
    first_order: bool = False
    temporal: bool = True
    # Add each item's shrunk mean training rating (the item-popularity baseline's score, with
    # baselines.popularity_shrinkage) as a fixed offset, so the model learns a residual to it.
    popularity_offset: bool = True


@dataclass
class MetaMFSection(TaskTraining):
    """Meta-learned MF (:mod:`metakit.recsys.metamf`): sizes and inner steps, then the outer loop.

    ``factors`` may list several sizes: each is meta-trained and the best on the validation
    users (MAE averaged over the support sizes of ``eval.support_sizes`` and the full support) kept.
    """

    factors: list[int] = field(default_factory=lambda: [4, 8])
    steps: int = 2
    init_lr: float = 0.5


@dataclass
class TaNPSection(TaskTraining):
    """TaNP (:mod:`metakit.recsys.tanp`): network sizes and loss weights, then the outer loop (it has no inner loop)."""

    embedding_dim: int = 16
    hidden: int = 64
    latent: int = 32
    clusters: int = 8
    decoder_layers: int = 2
    kl_weight: float = 1.0
    cluster_weight: float = 0.1
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass
class BaselineSection:
    """Baseline settings; list-valued ones are grids searched on the validation users."""

    popularity_shrinkage: float = 10.0
    mf_factors: list[int] = field(default_factory=lambda: [8, 16, 32])
    mf_regs: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0])
    mf_iters: int = 15
    # Ridge penalty of a new user's fold-in, chosen on the validation users at few ratings
    # (empty: the training penalty, as plain fold-in does).
    mf_foldin_regs: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0, 50.0])
    nn_epochs: int = 20
    nn_batch: int = 256
    nn_lr: float = 1e-3
    finetune_steps: list[int] = field(default_factory=lambda: [1, 5, 20, 50, 100])
    finetune_lrs: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1])
    # Surprise's SVD (method surprise_svd, the peer library), refitted with the support ratings.
    surprise_factors: list[int] = field(default_factory=lambda: [10, 50])
    surprise_regs: list[float] = field(default_factory=lambda: [0.02, 0.1])
    surprise_epochs: int = 20


@dataclass
class RecsysEval:
    """Which scenarios to score, the nDCG cut-offs, and the cold-start curves.

    ``curve_scenarios`` are also scored at each of ``support_sizes``: a user's earliest that many
    ratings as support, the same query (the last ``tasks.query``) at every size, on the users
    with at least ``max(support_sizes)`` support ratings. Empty lists: no curves.
    """

    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    ndcg_k: list[int] = field(default_factory=lambda: [1, 3])
    support_sizes: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    curve_scenarios: list[str] = field(default_factory=lambda: ["new_users", "new_users_new_items"])


@dataclass
class RecsysConfig:
    """A whole recsys run, saved as ``config.yaml`` in the run directory."""

    name: str = "recsys"
    seed: int = 0
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskRules = field(default_factory=TaskRules)
    model: ModelConfig = field(default_factory=ModelConfig)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # One section per method family; a section whose method is not in ``methods`` is unused.
    melu: MeluSection = field(default_factory=MeluSection)
    metamf: MetaMFSection = field(default_factory=MetaMFSection)
    tanp: TaNPSection = field(default_factory=TaNPSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    eval: RecsysEval = field(default_factory=RecsysEval)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written in YAML."""
        return asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml_dump(self.to_dict())

    def check(self) -> RecsysConfig:
        """Raise a one-line error for values no run can use; return ``self``."""
        if self.data.source not in SOURCES:
            raise unknown_name("data source", self.data.source, SOURCES)
        check_threads("threads", self.threads)
        if self.data.format not in ("ml-1m", "ml-100k", "csv"):
            raise MetakitError(f"data.format must be ml-1m, ml-100k or csv, got {self.data.format!r}.")
        if not isinstance(self.data.synthetic, dict):
            raise MetakitError(f"data.synthetic must be a mapping of generator options, got {self.data.synthetic!r}.")
        self.tasks.check()
        for method in self.methods:
            if method not in METHODS:
                raise unknown_name("recsys method", method, METHODS)
        if not self.methods:
            raise MetakitError(f"methods is empty; list some of: {', '.join(METHODS)}.")
        check_scenarios(self.eval.scenarios)
        if self.eval.curve_scenarios:
            check_scenarios(self.eval.curve_scenarios)
        if any(n < 1 for n in self.eval.support_sizes):
            raise MetakitError(f"eval.support_sizes must hold positive sizes, e.g. [1, 3, 5, 10, 20], got {self.eval.support_sizes}.")
        m = self.metamf
        if "metamf" in self.methods and (not m.factors or any(k < 1 for k in m.factors) or m.steps < 1 or m.init_lr <= 0
                                         or m.epochs < 1 or m.meta_batch < 1 or m.lr <= 0 or m.weight_decay < 0):
            raise MetakitError("metamf needs factors (a non-empty list of sizes >= 1), steps, epochs, meta_batch >= 1, "
                               "init_lr and lr > 0 and weight_decay >= 0.")
        t = self.tanp
        if "tanp" in self.methods and (min(t.embedding_dim, t.hidden, t.latent, t.clusters, t.decoder_layers, t.epochs,
                                           t.meta_batch) < 1 or t.lr <= 0 or min(t.weight_decay, t.kl_weight,
                                                                                 t.cluster_weight) < 0):
            raise MetakitError("tanp needs sizes, epochs and meta_batch >= 1, lr > 0 and non-negative weight_decay, "
                               "kl_weight and cluster_weight.")
        if any(r <= 0 for r in self.baselines.mf_foldin_regs):
            raise MetakitError(f"baselines.mf_foldin_regs must hold penalties > 0, got {self.baselines.mf_foldin_regs}.")
        if any(k < 1 for k in self.eval.ndcg_k):
            raise MetakitError(f"eval.ndcg_k must hold positive cut-offs, got {self.eval.ndcg_k}.")
        if "melu" in self.methods and (not self.melu.local_steps or any(s < 1 for s in self.melu.local_steps)):
            raise MetakitError(f"melu.local_steps must list step counts >= 1, e.g. [1, 5], got {self.melu.local_steps}.")
        for name, value in (("melu.local_lr", self.melu.local_lr), ("melu.lr", self.melu.lr),
                            ("baselines.nn_lr", self.baselines.nn_lr),
                            *(("melu.local_lr_grid", v) for v in self.melu.local_lr_grid)):
            if value <= 0:
                raise MetakitError(f"{name} must be > 0, got {value}.")
        if self.melu.learn_local_lr and self.melu.first_order:
            raise MetakitError("melu.learn_local_lr (Meta-SGD) needs second-order meta-gradients; set melu.first_order=false.")
        for name, value in (("melu.epochs", self.melu.epochs), ("melu.meta_batch", self.melu.meta_batch)):
            if value < 1:
                raise MetakitError(f"{name} must be >= 1, got {value}.")
        return self


def recsys_config_from_dict(data: dict[str, Any]) -> RecsysConfig:
    """Validate plain data (parsed YAML) into a checked :class:`RecsysConfig`."""
    return config_from_dict(data, "recsys")


def load_recsys_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecsysConfig:
    """Read a recsys YAML config, apply ``key=value`` overrides, validate."""
    return load_config(path, overrides, "recsys")
