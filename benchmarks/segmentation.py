"""Few-shot segmentation: every learner at 1- and 5-shot on the Glyphs and Omniglot scenes (issue #22).

Reruns the table of docs/benchmarks.md ("Few-shot segmentation"): for each scene set and each
learner it meta-trains ``configs/seg-glyphs-<learner>.yaml`` (Omniglot scenes: the same config
with ``dataset.source: omniglot``, split by alphabet), evaluates on ``--seeds`` fixed sets of
``--episodes`` test episodes per shot count (classes never seen in training), and prints one
table: mIoU ± 95% CI over seeds, FB-IoU, AP50, median adaptation time and meta-training time.

    python benchmarks/segmentation.py --threads 1
    python benchmarks/segmentation.py --sets glyphs --learners intensity panet --episodes 20 --seeds 2
    python benchmarks/segmentation.py --render runs/bench-seg-*/results.json   # the markdown table again

The Omniglot rows need ``../shared/data/omniglot/images_background.zip`` beside the repository
(or ``--omniglot PATH``); without it they are skipped with the reason. ``seg-pretrained`` needs
the vision extra (``pip install 'metakit[vision]'``); without it its rows are skipped too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from metakit.config import load_config
from metakit.segmentation.experiment import build_seg_experiment, evaluate_seg_run
from metakit.training import Trainer
from metakit.utils import write_json

REPO = Path(__file__).resolve().parents[1]
LEARNERS = ("intensity", "pretrained", "panet", "anil", "finetune")


def _omniglot_overrides(root: Path) -> list[str]:
    return ["dataset.source=omniglot", f"dataset.source_options={{root: {root}, download: false}}"]


def _skip_reason(scene_set: str, learner: str, omniglot: Path) -> str | None:
    if scene_set == "omniglot" and not omniglot.is_file():
        return f"Omniglot not found at {omniglot} (place images_background.zip there or pass --omniglot PATH)"
    if learner == "pretrained" and importlib.util.find_spec("timm") is None:
        return "seg-pretrained needs timm: pip install 'metakit[vision]'"
    return None


def run_one(scene_set: str, learner: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Meta-train (or validate once, for the learners with nothing to train) and evaluate one learner on one scene set."""
    overrides = [f"train.threads={args.threads}", *(args.overrides or [])]
    if scene_set == "omniglot":
        overrides += _omniglot_overrides(Path(args.omniglot))
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    shots, name = [1, 5], f"seg-{learner}"
    if args.train_shots:
        # As PANet's paper does: a model meta-trained on K-shot episodes for the K-shot test. The
        # meta-batch shrinks so a step costs about what a 1-shot step of the config costs.
        shots, name = [args.train_shots], f"seg-{learner} ({args.train_shots}-shot training)"
        overrides += [f"episodes.shots={args.train_shots}", f"eval.shots=[{args.train_shots}]",
                      f"eval.val_shots={args.train_shots}", f"episodes.meta_batch={args.meta_batch}"]
    config = load_config(REPO / "configs" / f"seg-glyphs-{learner}.yaml", overrides)
    run_dir = out / f"{scene_set}-{learner}" if not args.train_shots else out / f"{scene_set}-{learner}-{args.train_shots}shot"
    start = time.perf_counter()
    summary = Trainer(build_seg_experiment(config), run_dir, progress=not args.no_progress, domain="segmentation").fit()
    wall = time.perf_counter() - start
    result = evaluate_seg_run(run_dir, episodes=args.episodes, seeds=args.seeds, shots=shots)
    return {"set": scene_set, "learner": name, "steps": summary.get("steps"),
            "train_seconds": summary.get("train_seconds") or 0.0, "wall_seconds": wall, "results": result["results"]}


def _cells(row: dict[str, Any]) -> list[list[str]]:
    """One line per shot count: scenes, learner, shots, mIoU, FB-IoU, AP50, adaptation, meta-training."""
    by = {(r["metric"], r["shots"]): r for r in row["results"]}
    lines = []
    for shots in sorted({r["shots"] for r in row["results"]}):
        cells = [f"{by[(m, shots)]['mean']:.3f} ± {by[(m, shots)]['ci95']:.3f}" for m in ("miou", "fb_iou", "ap50")]
        adapt = by[("miou", shots)]["median_adapt_seconds"] * 1000
        steps = row["steps"] or 0
        train = f"{steps:,} steps, {row['train_seconds']:.0f} s" if row["train_seconds"] > 1 else "none"
        lines.append([row["set"], f"`{row['learner']}`", str(shots), *cells, f"{adapt:.1f} ms", train])
    return lines


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as docs/benchmarks.md holds it."""
    head = "| scenes | learner | shots | mIoU | FB-IoU | AP50 | adaptation (median) | meta-training |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for row in rows for cells in _cells(row)]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], episodes: int, seeds: int) -> Table:
    """The benchmark's table, one line per (scene set, learner, shots)."""
    t = Table(title=f"few-shot segmentation, 1-way; mean ± 95% CI over {seeds} seeds x {episodes} test episodes")
    for col in ("scenes", "learner", "shots", "mIoU", "FB-IoU", "AP50", "adaptation (median)", "meta-training"):
        t.add_column(col, justify="left" if col in ("scenes", "learner") else "right")
    for row in rows:
        for cells in _cells(row):
            t.add_row(*cells)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=("glyphs", "omniglot"), default=["glyphs", "omniglot"])
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument("--episodes", type=int, default=100, help="test episodes per seed and shot count (default 100)")
    parser.add_argument("--seeds", type=int, default=5, help="episode sets, each from its own seed (default 5)")
    parser.add_argument("--steps", type=int, help="meta-training steps per run (default: the configs')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-shots", type=int, help="meta-train on episodes of this many shots and test at it only")
    parser.add_argument("--meta-batch", type=int, default=2, help="episodes per meta-batch with --train-shots (default 2)")
    parser.add_argument("--omniglot", default=str(REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"))
    parser.add_argument("--overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-segmentation-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--render", nargs="+", metavar="JSON", help="print the markdown table of results.json files and stop")
    args = parser.parse_args()
    console = Console()
    if args.render:
        print(markdown([row for path in args.render for row in json.loads(Path(path).read_text())["rows"]]))
        return
    out = Path(args.out)
    rows = []
    for scene_set in args.sets:
        for learner in args.learners:
            reason = _skip_reason(scene_set, learner, Path(args.omniglot))
            if reason:
                console.print(f"skipped {scene_set} / seg-{learner}: {reason}")
                continue
            rows.append(run_one(scene_set, learner, args, out))
            write_json(out / "results.json", {"episodes": args.episodes, "seeds": args.seeds, "threads": args.threads,
                                              "rows": rows})
            console.print(f"done {scene_set} / seg-{learner} ({rows[-1]['wall_seconds']:.0f} s)")
    console.print(table(rows, args.episodes, args.seeds))
    print(markdown(rows))
    console.print(f"results: {out / 'results.json'}")
    print(json.dumps({"out": str(out)}))


if __name__ == "__main__":
    main()
