"""``metakit nas evaluate``: the found architecture against Conv-4 and random architectures, from scratch.

Every model is meta-trained from scratch with the search config's learner, episodes and training
budget (``nas.evaluate`` overrides them) and evaluated on the same fixed held-out test episodes:

- ``found``: the search's genotype, as the ``nas`` backbone;
- ``conv4``: Conv-4 (``nas.conv4`` options; ``null`` leaves it out);
- ``random-1`` .. ``random-N``: random genotypes of the same space whose backbone parameter count
  is within ``nas.param_tolerance`` of the found one's (the closest ones if too few are).

Each model is an ordinary run directory under ``RUN_DIR/evaluate/NAME`` (so ``metakit evaluate``
works on it, and an interrupted one continues); ``only`` runs a subset, so the models can be
trained one job at a time. The table (``nas_evaluation.md``/``.json``) and an accuracy-vs-parameters
plot (``nas_evaluation.png``) cover every model evaluated so far.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from metakit.errors import MetakitError
from metakit.nas.genotype import Genotype, draw, random_genotype
from metakit.nas.search import NasSpec, backbone_parameters, load_search, train_run
from metakit.runs import Plot, Report, pyplot, read_json, write_report

#: How many random genotypes are drawn at most when looking for ones of a similar size.
MAX_DRAWS = 2000


@dataclass
class Model:
    """One model of the comparison: its name, kind, run config and genotype (``None`` for Conv-4)."""

    name: str
    kind: str
    config: dict[str, Any]
    genotype: Genotype | None = None
    backbone_parameters: int | None = None


def matched_random(
    spec: NasSpec, found: Genotype, input_shape: Sequence[int], count: int
) -> list[tuple[Genotype, int, bool]]:
    """``count`` random genotypes near the found one's parameter count: ``(genotype, parameters, within)``.

    Genotypes are drawn with a generator seeded by the config's seed, in order, so the same search
    gives the same baselines; those within ``param_tolerance`` come first, then the closest others.
    """
    s = spec.settings
    target = backbone_parameters(spec, found, input_shape)
    rng = random.Random(spec.base["seed"] + 10_007)
    space = found.space()
    seen: list[Genotype] = [found]
    within: list[tuple[Genotype, int, bool]] = []
    others: list[tuple[Genotype, int, bool]] = []
    for _ in range(MAX_DRAWS):
        g = random_genotype(space, rng, s.edges_per_node, s.ops_per_edge)
        if g in seen:
            continue
        seen.append(g)
        n = backbone_parameters(spec, g, input_shape)
        ok = abs(n / target - 1) <= s.param_tolerance
        (within if ok else others).append((g, n, ok))
        if len(within) >= count:
            break
    others.sort(key=lambda t: abs(t[1] - target))
    return (within + others)[:count]


def plan(spec: NasSpec, genotype: Genotype, input_shape: Sequence[int]) -> list[Model]:
    """The models of the comparison, in table order."""
    models = [
        Model("found", "found", spec.network_config(spec.genotype_backbone(genotype), "found"), genotype,
              backbone_parameters(spec, genotype, input_shape))
    ]
    if spec.settings.conv4 is not None:
        from metakit.backbones import build_backbone, count_parameters

        conv4 = build_backbone("conv4", tuple(input_shape), **spec.settings.conv4)
        models.append(Model("conv4", "conv4", spec.network_config({"name": "conv4", **spec.settings.conv4}, "conv4"),
                            None, count_parameters(conv4)))
    for i, (g, n, _) in enumerate(matched_random(spec, genotype, input_shape, spec.settings.random_architectures), 1):
        models.append(Model(f"random-{i}", "random", spec.network_config(spec.genotype_backbone(g), f"random-{i}"), g, n))
    return models


def evaluate_search(
    run_dir: str | Path, only: Sequence[str] | None = None, episodes: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Meta-train and evaluate the comparison's models (or ``only`` some); returns the report."""
    from metakit.evaluation import evaluate_run

    root = Path(run_dir)
    spec, genotype, search = load_search(root)
    models = plan(spec, genotype, search["input_shape"])
    names = [m.name for m in models]
    for name in only or ():
        if name not in names:
            raise MetakitError(f"unknown model {name!r} for --only; this search compares: {', '.join(names)}.")
    console = Console(stderr=True)
    for model in models:
        if only and model.name not in only:
            continue
        sub = root / "evaluate" / model.name
        if progress:
            console.print(f"[bold]{model.name}[/]: meta-training from scratch into {sub}")
        if model.genotype is not None:
            model.genotype.save(sub / "genotype.json")
            write_report(sub, Report(plots={"genotype.png": Plot(draw(model.genotype, title=model.name), dpi=120)}))
        train_run(model.config, sub, progress)
        done = read_json(sub / "evaluation.json")
        if done is None or (episodes is not None and done["results"][0]["episodes"] != episodes):
            evaluate_run(str(sub), episodes=episodes, progress=progress)
    return _write(root, models, search)


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """The comparison of the models evaluated so far, without training anything (also rewrites the table)."""
    root = Path(run_dir)
    spec, genotype, search = load_search(root)
    return _write(root, plan(spec, genotype, search["input_shape"]), search)


def _write(root: Path, models: Sequence[Model], search: dict[str, Any]) -> dict[str, Any]:
    report = collect(root, models, search)
    files = Report(data={"nas_evaluation.json": report}, text={"nas_evaluation.md": evaluation_markdown(report)})
    if report["models"]:
        files.plots["nas_evaluation.png"] = Plot(plot(report), dpi=120)
    write_report(root, files)
    return report


def collect(root: Path, models: Sequence[Model], search: dict[str, Any]) -> dict[str, Any]:
    """The comparison's rows for every model evaluated so far."""
    rows = []
    for model in models:
        sub = root / "evaluate" / model.name
        evaluation, training = read_json(sub / "evaluation.json"), read_json(sub / "training.json")
        if evaluation is None or training is None:
            continue
        rows.append({
            "model": model.name,
            "kind": model.kind,
            "run": str(sub),
            "backbone": model.config["backbone"]["name"],
            "parameters": evaluation["parameters"],
            "backbone_parameters": model.backbone_parameters,
            "meta_training_seconds": training["train_seconds"],
            "steps": training["steps"],
            "results": evaluation["results"],
            "genotype": model.genotype.to_dict() if model.genotype is not None else None,
            "genotype_png": str(sub / "genotype.png") if model.genotype is not None else None,
        })
    return {
        "run": str(root),
        "method": search["method"],
        "dataset": search["dataset"],
        "learner": search["learner"],
        "search_seconds": search["search_seconds"],
        "genotype_json": str(root / "genotype.json"),
        "genotype_png": str(root / "genotype.png"),
        "pending": [m.name for m in models if m.name not in {r["model"] for r in rows}],
        "models": rows,
    }


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The comparison as a markdown table (one accuracy column per evaluation setting)."""
    rows = report["models"]
    settings = [(r["ways"], r["shots"]) for r in rows[0]["results"]] if rows else []
    head = ["model", "backbone params"] + [f"{n}-way {k}-shot" for n, k in settings] + ["meta-training", "search"]
    lines = [
        f"# Architecture search: {report['method']} on {report['dataset']} ({report['learner']})", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for row in rows:
        scale = 100 if row["results"][0]["metric"] == "accuracy" else 1
        cells = [row["model"], f"{row['backbone_parameters']:,}"]
        cells += [f"{scale * r['mean']:.2f} ± {scale * r['ci95']:.2f}" for r in row["results"]]
        cells += [_seconds(row["meta_training_seconds"]), _seconds(report["search_seconds"]) if row["kind"] == "found" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        r0 = rows[0]["results"][0]
        lines += ["", f"Test: {r0['episodes']} fixed episodes, {r0['queries']} queries/class; parameters: backbone "
                  "(all have the learner's head on top). Found cells: `genotype.json`, `genotype.png`."]
    if report["pending"]:
        lines += ["", f"Not evaluated yet: {', '.join(report['pending'])} (metakit nas evaluate RUN_DIR --only NAME)."]
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def plot(report: dict[str, Any]) -> Any:
    """Accuracy ± CI against backbone parameters, one point per model (first evaluation setting)."""
    plt = pyplot()
    colours = {"found": "#d62728", "conv4": "#1f77b4", "random": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for row in report["models"]:
        r = row["results"][0]
        params = row["backbone_parameters"]
        ax.errorbar(params, 100 * r["mean"], yerr=100 * r["ci95"], fmt="o", color=colours[row["kind"]], capsize=3)
        ax.annotate(row["model"], (params, 100 * r["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    first = report["models"][0]["results"][0]
    ax.set_xscale("log")
    ax.set_xlabel("backbone parameters")
    ax.set_ylabel(f"{first['ways']}-way {first['shots']}-shot {first['metric']} (%)")
    ax.set_title(f"{report['method']} on {report['dataset']}: found vs random vs Conv-4", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
