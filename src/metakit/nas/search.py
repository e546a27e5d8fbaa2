"""``metakit nas search``: find a cell architecture whose objective is fast adaptation across tasks.

A NAS config is an ordinary run config whose backbone is the ``supernet`` (it defines the search
space) plus a ``nas:`` section, which the nas plugin registers (:class:`NasSettings`)::

    backbone: {name: supernet, channels: 8, cells: 3, nodes: 3, reductions: [0, 2]}
    learner: {name: reptile, ...}          # any learner; MetaNAS proper uses reptile or fomaml
    nas:
      method: metanas          # metanas | random
      warmup_steps: 0          # MetaNAS: steps training the network weights alone first (warmup/)
      edges_per_node: 2        # discretisation: strongest incoming edges kept per node
      ops_per_edge: 1          # ... and strongest operations kept per edge
      candidates: 4            # random search: architectures tried
      candidate_steps: 50      # random search: meta-training steps scoring each candidate
      random_architectures: 3  # nas evaluate: random baselines at a similar parameter count
      param_tolerance: 0.25    # ... within this relative distance of the found one's parameters
      conv4: {hidden: 64}      # nas evaluate: Conv-4 baseline options (null: none)
      backbone: {}             # options of the nas backbone for from-scratch training (e.g. channels)
      evaluate: {}             # config overrides for every from-scratch run, e.g. {train: {steps: 400}}

**MetaNAS** (Elsken et al., CVPR 2020) is the config's own meta-training run on the supernet:
the architecture weights are parameters of the backbone, so the learner adapts them with the
network weights in its inner loop and meta-learns them in its outer loop, through the ordinary
:class:`~metakit.training.Trainer` (progress, validation, checkpoints, exact resume). The
meta-learned architecture weights are then discretised (:func:`~metakit.nas.genotype.discretize`).

**Random search** samples ``candidates`` genotypes of the same space and scores each by a short
meta-training run (``candidate_steps`` steps of the from-scratch config) on the validation episodes.

The run directory holds ``nas.yaml`` (the resolved NAS config), the supernet's ordinary run files
and ``warmup/`` (MetaNAS) or ``candidates/NN/`` runs (random search), ``genotype.json``, ``genotype.png``,
``alphas.json`` (MetaNAS: the final mixing weights of every edge), ``search.json`` and
``search.md``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from metakit.config import (
    Config, call_with_options, config_from_dict, merge, parse_overrides, read_yaml_mapping, yaml_dump,
)
from metakit.errors import MetakitError, unknown_name
from metakit.nas.genotype import Genotype, check_discretization, discretize, draw, input_label, random_genotype
from metakit.nas.space import SearchSpace, edge_index
from metakit.runs import Plot, Report, Run, read_json, write_report

if TYPE_CHECKING:
    from metakit.experiment import Experiment

METHODS = ("metanas", "random")


@dataclass
class NasSettings:
    """The ``nas:`` section (see the module docstring)."""

    method: str = "metanas"
    warmup_steps: int = 0
    edges_per_node: int = 2
    ops_per_edge: int = 1
    candidates: int = 4
    candidate_steps: int = 50
    random_architectures: int = 3
    param_tolerance: float = 0.25
    conv4: dict[str, Any] | None = field(default_factory=lambda: {"hidden": 64})
    backbone: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


    def check(self) -> NasSettings:
        """Reject values no search can use (the types are checked already); returns ``self``."""
        if self.method not in METHODS:
            raise unknown_name("nas.method", self.method, METHODS)
        for key in _INTS:
            low = 0 if key in ("random_architectures", "warmup_steps") else 1
            if getattr(self, key) < low:
                raise MetakitError(f"nas.{key} must be an integer >= {low}, got {getattr(self, key)!r}.")
        if self.param_tolerance <= 0:
            raise MetakitError(f"nas.param_tolerance must be a number > 0, got {self.param_tolerance!r}.")
        for key in ("backbone", "evaluate") + (("conv4",) if self.conv4 is not None else ()):
            if not isinstance(getattr(self, key), dict):
                raise MetakitError(f"nas.{key} must be a mapping, got {getattr(self, key)!r}.")
        if "name" in self.backbone or "genotype" in self.backbone:
            raise MetakitError("nas.backbone holds options of the nas backbone (e.g. channels); leave out name and genotype.")
        return self


_INTS = ("warmup_steps", "edges_per_node", "ops_per_edge", "candidates", "candidate_steps", "random_architectures")


@dataclass
class NasSpec:
    """A parsed NAS config: the run config (resolved, as plain data) and the ``nas`` settings."""

    base: dict[str, Any]
    settings: NasSettings
    source: str = "<dict>"

    def config(self) -> Config:
        """The search run's config (the supernet's meta-training)."""
        return config_from_dict(copy.deepcopy(self.base))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the run config plus the ``nas`` section (``nas.yaml``)."""
        return {**copy.deepcopy(self.base), "nas": asdict(self.settings)}

    def space(self) -> SearchSpace:
        """The search space: the supernet's options without its temperature."""
        options = {k: v for k, v in self.base["backbone"].items() if k not in ("name", "temperature", "learn_alphas")}
        return call_with_options(SearchSpace.create, options, "backbone 'supernet'")

    def network_config(self, backbone: dict[str, Any], name: str, steps: int | None = None) -> dict[str, Any]:
        """The run config for meta-training ``backbone`` from scratch (``nas.evaluate`` applied)."""
        data = copy.deepcopy(self.base)
        data["name"] = f"{data.get('name', 'nas')}-{name}"
        data["backbone"] = copy.deepcopy(backbone)
        data = merge(data, copy.deepcopy(self.settings.evaluate))
        if steps is not None:
            data["train"] = {**data.get("train", {}), "steps": steps, "val_every": steps, "checkpoint_every": 0}
        return config_from_dict(data).to_dict()

    def genotype_backbone(self, genotype: Genotype) -> dict[str, Any]:
        """The ``nas`` backbone section for ``genotype``, the genotype inline (the run is self-contained)."""
        return {"name": "nas", "genotype": genotype.to_dict(), **copy.deepcopy(self.settings.backbone)}


def spec_from_dict(data: dict[str, Any], source: str = "<dict>") -> NasSpec:
    """Validate a NAS config's plain data (parsed YAML)."""
    # The nas plugin registers NasSettings as the config's nas section; a config without one searches with the defaults.
    config = config_from_dict({"nas": None, **data})
    settings = config.section("nas")
    config.sections = {}
    if config.backbone.name != "supernet":
        raise MetakitError(
            f"nas search needs backbone.name: supernet (it defines the search space), got {config.backbone.name!r}."
        )
    if settings.method == "metanas" and config.backbone.options.get("learn_alphas") is False:
        raise MetakitError("MetaNAS learns the architecture weights: remove backbone.learn_alphas: false (nas.warmup_steps gives a warm-up).")
    spec = NasSpec(config.to_dict(), settings, source)
    check_discretization(settings.edges_per_node, settings.ops_per_edge, spec.space())
    for key in spec.settings.evaluate:
        if key not in config.to_dict():
            raise MetakitError(f"nas.evaluate.{key} is not a config section; valid: {', '.join(config.to_dict())}.")
    _check_evaluation_settings(spec)
    return spec


def _check_evaluation_settings(spec: NasSpec) -> None:
    """Fail now, not after the search, on bad ``nas.backbone``, ``nas.conv4`` or ``nas.evaluate`` settings."""
    from metakit.backbones import BACKBONES

    s = spec.settings
    probe = random_genotype(spec.space(), random.Random(0), s.edges_per_node, s.ops_per_edge)
    spec.network_config(spec.genotype_backbone(probe), "check")
    # Option names and ranges do not depend on the image size; a small one keeps this instant.
    call_with_options(BACKBONES["nas"], {"genotype": probe.to_dict(), **s.backbone}, "nas.backbone", (1, 8, 8))
    if s.conv4 is not None:
        call_with_options(BACKBONES["conv4"], dict(s.conv4), "nas.conv4", (1, 8, 8))


def load_nas_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> NasSpec:
    """Read a NAS config file and apply ``key=value`` overrides (``nas.method=random`` included)."""
    data = read_yaml_mapping(path, example="configs/nas-glyphs-metanas.yaml")
    if "nas" not in data:
        raise MetakitError(f"{path} has no nas: section; nas search needs one (see configs/nas-glyphs-metanas.yaml).")
    return spec_from_dict(merge(data, parse_overrides(overrides)), str(path))


def load_search(run_dir: str | Path) -> tuple[NasSpec, Genotype, dict[str, Any]]:
    """The spec, found genotype and summary of a finished search run directory."""
    root = Path(run_dir)
    if not (root / "nas.yaml").is_file():
        raise MetakitError(f"{root} is not a nas search run directory (no nas.yaml); pass the --out of metakit nas search.")
    summary = read_json(root / "search.json")
    if summary is None or not (root / "genotype.json").is_file():
        raise MetakitError(f"the search in {root} has not finished; run metakit nas search CONFIG --out {root} --resume.")
    data = read_yaml_mapping(root / "nas.yaml")
    return spec_from_dict(data, str(root / "nas.yaml")), Genotype.load(root / "genotype.json"), summary


def backbone_parameters(spec: NasSpec, genotype: Genotype, input_shape: Sequence[int]) -> int:
    """Trainable parameters of ``genotype``'s network with the from-scratch backbone options.

    The search records it for the found cells; ``nas evaluate`` matches random baselines to it.
    """
    from metakit.nas.network import nas

    net = nas(tuple(input_shape), genotype=genotype.to_dict(), **spec.settings.backbone)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def train_run(config: dict[str, Any], run_dir: Path, progress: bool) -> dict[str, Any]:
    """Meta-train ``config`` into ``run_dir``, continuing a run left there (finished runs are not redone)."""
    from metakit.training import train

    done = read_json(run_dir / "training.json")
    if done is not None and done.get("steps") == config["train"]["steps"]:
        return done
    return train(config_from_dict(copy.deepcopy(config)), run_dir, resume=True, progress=progress)


def search(spec: NasSpec, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the search described by ``spec`` into run directory ``out``; returns ``search.json``'s content."""
    out = Path(out)
    console = Console(stderr=True)
    run, saved_path = Run(out, domain="nas"), out / "nas.yaml"
    run.resumes(resume, lambda: read_yaml_mapping(saved_path), spec.to_dict(), ("train.steps",), saved_path, "nas search")
    from metakit.experiment import build_experiment

    exp = build_experiment(spec.config())  # every config problem fails here, before the run directory exists
    # Written on resume too: a resumed search may extend train.steps. The supernet's own run
    # (MetaNAS) keeps its log in the same folder and starts it itself.
    run.create(yaml_dump(spec.to_dict()), saved_path.name, fresh_log=False)
    s, space = spec.settings, spec.space()
    if progress:
        console.print(f"[bold]metakit nas search[/]: {s.method} over {space.cells} cells of {space.nodes} nodes, "
                      f"ops {', '.join(space.ops)}; run directory {out}")
    if s.method == "metanas":
        genotype, details = _metanas(spec, exp, out, progress)
    else:
        genotype, details = _random_search(spec, exp.task.input_shape, out, progress, console)
    genotype.save(out / "genotype.json")
    input_shape = details.pop("input_shape")
    summary = {
        "method": s.method,
        "dataset": spec.base["dataset"]["name"],
        "learner": spec.base["learner"]["name"],
        "search_seconds": details.pop("search_seconds"),
        "input_shape": list(input_shape),
        "edges_per_node": s.edges_per_node,
        "ops_per_edge": s.ops_per_edge,
        "found_backbone_parameters": backbone_parameters(spec, genotype, input_shape),
        "genotype": genotype.to_dict(),
        **details,
    }
    cells = draw(genotype, title=f"{s.method} on {spec.base['dataset']['name']}")
    write_report(out, Report(data={"search.json": summary}, plots={"genotype.png": Plot(cells, dpi=120)},
                             text={"search.md": _markdown(summary, genotype)}))
    return summary


def _metanas(spec: NasSpec, exp: Experiment, out: Path, progress: bool) -> tuple[Genotype, dict[str, Any]]:
    """Meta-train the supernet (weights and architecture jointly) with the config's learner; discretise.

    With ``nas.warmup_steps``, a first run (``warmup/``) meta-trains the network weights alone,
    the architecture weights frozen at their uniform start (MetaNAS's and DARTS's warm-up:
    otherwise the parameter-free operations, useful before any convolution is trained, win the
    first updates); the search run starts from its weights.
    """
    from metakit.runs import load_weights
    from metakit.training import Trainer

    s = spec.settings
    warm: dict[str, Any] = {}
    if s.warmup_steps:
        data = copy.deepcopy(spec.base)
        data["name"] = f"{data['name']}-warmup"
        data["backbone"]["learn_alphas"] = False
        data["train"] = {**data["train"], "steps": s.warmup_steps, "val_every": s.warmup_steps, "checkpoint_every": 0}
        warm = train_run(data, out / "warmup", progress)
        if not (out / "checkpoints" / "last.pt").is_file():  # a resumed search continues from its own checkpoint
            exp.learner.load_state_dict(load_weights(out / "warmup", "last"))
    summary = Trainer(exp, out, resume=True, progress=progress).fit()
    supernet = exp.learner.backbone  # the last step's meta-parameters, architecture weights included
    weights = {k: v.detach().cpu() for k, v in supernet.edge_weights().items()}
    genotype = discretize(weights, supernet.space, spec.settings.edges_per_node, spec.settings.ops_per_edge)
    alphas = {
        "ops": list(supernet.space.ops),
        "temperature": supernet.temperature,
        **{
            label: [
                {"node": node, "input": input_label(source), "weights": [round(float(v), 5) for v in w[edge_index(node, source)]]}
                for node in range(supernet.space.nodes) for source in range(node + 2)
            ]
            for label, w in weights.items()
        },
    }
    write_report(out, Report(data={"alphas.json": alphas}))
    metric = summary["metric"]
    return genotype, {
        "search_seconds": round(summary["train_seconds"] + warm.get("train_seconds", 0.0), 2),
        "warmup_steps": s.warmup_steps,
        "input_shape": exp.task.input_shape,
        "supernet_parameters": summary["parameters"],
        "steps": summary["steps"],
        f"supernet_best_val_{metric}": summary[f"best_val_{metric}"],
        "threads": summary["threads"],
    }


def _random_search(
    spec: NasSpec, input_shape: tuple[int, ...], out: Path, progress: bool, console: Console
) -> tuple[Genotype, dict[str, Any]]:
    """Sample genotypes, score each by a short meta-training run, keep the best on validation."""
    s = spec.settings
    space = spec.space()
    rng = random.Random(spec.base["seed"])
    candidates: list[Genotype] = []
    for _ in range(100 * s.candidates):
        g = random_genotype(space, rng, s.edges_per_node, s.ops_per_edge)
        if g not in candidates:
            candidates.append(g)
        if len(candidates) == s.candidates:
            break
    rows, seconds, metric = [], 0.0, "accuracy"
    for i, genotype in enumerate(candidates):
        config = spec.network_config(spec.genotype_backbone(genotype), f"candidate{i:02d}", steps=s.candidate_steps)
        summary = train_run(config, out / "candidates" / f"{i:02d}", progress)
        metric = summary["metric"]
        score = summary[f"best_val_{metric}"]
        seconds += summary["train_seconds"]
        rows.append({"candidate": i, f"val_{metric}": score, "train_seconds": summary["train_seconds"],
                     "genotype": genotype.to_dict()})
        if progress:
            console.print(f"candidate {i + 1}/{len(candidates)}: val {metric} {score:.4f}")
    sign = 1 if metric == "accuracy" else -1
    best = max(range(len(rows)), key=lambda i: (sign * rows[i][f"val_{metric}"], -i))
    return candidates[best], {
        "search_seconds": round(seconds, 2), "input_shape": input_shape, "candidates": rows, "best_candidate": best,
    }


def _markdown(summary: dict[str, Any], genotype: Genotype) -> str:
    lines = [
        f"# Architecture search ({summary['method']})", "",
        f"- dataset: {summary['dataset']}, learner: {summary['learner']}",
        f"- search time: {summary['search_seconds']:.1f} s",
        f"- found architecture: {summary['found_backbone_parameters']:,} backbone parameters "
        f"(top {summary['edges_per_node']} edges per node, top {summary['ops_per_edge']} operation(s) per edge)",
        "", "```", genotype.describe(), "```", "", "![cells](genotype.png)", "",
        "Next: `metakit nas evaluate RUN_DIR` meta-trains it from scratch against Conv-4 and random architectures.", "",
    ]
    return "\n".join(lines)
