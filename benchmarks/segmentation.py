"""Few-shot segmentation: every learner at 1- and 5-shot on the Glyphs and Omniglot scenes (issue #22).

Reruns the table of docs/benchmarks.md ("Few-shot segmentation"): for each scene set and each
learner it meta-trains ``configs/seg-glyphs-<learner>.yaml`` (Omniglot scenes: the same config
with ``dataset.source: omniglot``, split by alphabet), evaluates on ``--seeds`` fixed sets of
``--episodes`` test episodes per shot count (classes never seen in training), and prints one
table: mIoU ± 95% CI over seeds, FB-IoU, AP50, median adaptation time and meta-training time.

Two columns say whether a learner uses its support set. "5-shot gain" is the 5-shot mIoU minus
the 1-shot mIoU of the same model, paired class by class (every shot count draws the same
classes, as :func:`~metakit.segmentation.experiment.evaluate_setting` does), with a 95% CI over
the test classes. The row ``every character`` is a class-agnostic reference, not a learner: it
labels every character of a query scene as the class (read from the scene's own labels), which
needs no support at all. A learner below it has learned to find characters more than to tell
the support's character from the others. A second table says it directly: the share of the
class's pixels a learner marks, and the share of the *other* characters' pixels it marks too
(1-way test episodes, pooled over pixels).

    python benchmarks/segmentation.py --threads 1
    python benchmarks/segmentation.py --sets glyphs --learners intensity panet --episodes 20 --seeds 2
    python benchmarks/segmentation.py --render runs/bench-seg-*/results.json   # the markdown table again
    python benchmarks/segmentation.py --sets glyphs --ways 2 --resume --out runs/bench-seg-glyphs --results results-2way.json

The Omniglot rows need ``../shared/data/omniglot/images_background.zip`` beside the repository
(or ``--omniglot PATH``); without it they are skipped with the reason. ``seg-pretrained`` needs
the vision extra (``pip install 'metakit[vision]'``); without it its rows are skipped too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from metakit.config import load_config
from metakit.episodes import episode_seed
from metakit.runs import load_run_config, load_weights
from metakit.segmentation.episodes import SegmentationEpisodes
from metakit.segmentation.experiment import build_seg_experiment, evaluate_seg_run, evaluate_setting
from metakit.segmentation.learners.intensity import IntensityBaseline
from metakit.training import Trainer
from metakit.utils import write_json

REPO = Path(__file__).resolve().parents[1]
LEARNERS = ("every-character", "intensity", "pretrained", "panet", "anil", "finetune")


def _omniglot_overrides(root: Path) -> list[str]:
    return ["dataset.source=omniglot", f"dataset.source_options={{root: {root}, download: false}}"]


def _skip_reason(scene_set: str, learner: str, omniglot: Path) -> str | None:
    if scene_set == "omniglot" and not omniglot.is_file():
        return f"Omniglot not found at {omniglot} (place images_background.zip there or pass --omniglot PATH)"
    if learner == "pretrained" and importlib.util.find_spec("timm") is None:
        return "seg-pretrained needs timm: pip install 'metakit[vision]'"
    return None


class _EveryCharacter(IntensityBaseline):
    """The class-agnostic reference: every character of the query scenes, whatever the support shows."""

    def __init__(self, exp: Any, sampler: SegmentationEpisodes) -> None:
        super().__init__(nn.Identity(), exp.task)
        self._sampler, self._draw = sampler, sampler.sample_with_instances
        sampler.sample_with_instances = self._sample  # type: ignore[method-assign]
        self._answer = torch.zeros(0)

    def _sample(self, generator: torch.Generator) -> tuple[Any, torch.Tensor]:
        state = generator.get_state()
        episode, instances = self._draw(generator)
        chosen, picked = self._sampler._draw(torch.Generator().set_state(state))
        query = picked[:, self._sampler.shots:].reshape(-1)
        ink = (self._sampler.scenes.labels[query] >= 0).float()
        # At N ways a character of none of the episode's classes is still "a character": the
        # reference gives it to the first class, as a detector that knows no classes would.
        self._answer = ink if episode.ways == 1 else torch.cat([1 - ink[:, None], ink[:, None], torch.zeros(
            len(ink), episode.ways - 1, *ink.shape[1:])], dim=1)
        return episode, instances

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int = 1) -> Any:
        return lambda query_x: self._answer


def run_reference(scene_set: str, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """The ``every character`` rows: evaluated like a learner on the same episodes, nothing trained."""
    exp = build_seg_experiment(load_config(REPO / "configs" / "seg-glyphs-intensity.yaml", overrides))
    results = []
    for ways in args.ways:
        for shots in (1, 5):
            sampler = exp.source("test", ways, shots, exp.config.eval.queries)
            results += evaluate_setting(_EveryCharacter(exp, sampler), sampler, args.episodes, args.seeds, exp.config.eval.seed)[0]
    return {"set": scene_set, "learner": "every character (class-agnostic reference)", "steps": 0, "train_seconds": 0.0,
            "wall_seconds": 0.0, "results": results}


def discrimination(learner: Any, sampler: SegmentationEpisodes, episodes: int, seed: int) -> dict[str, float]:
    """Shares of the class's pixels and of the other characters' pixels that ``learner`` marks as the class (1 way)."""
    marked = {"class": [0.0, 0.0], "others": [0.0, 0.0]}  # marked pixels, all pixels
    learner.eval()
    with torch.no_grad():
        for i in range(episodes):
            chosen, picked = sampler._draw(torch.Generator().manual_seed(episode_seed(seed, i)))
            episode = sampler._episode(chosen, picked)
            query = picked[:, sampler.shots:].reshape(-1)
            predicted = learner.adapt(episode.support_x, episode.support_y, 1)(episode.query_x) >= 0.5
            target = episode.query_y > 0.5
            for key, where in (("class", target), ("others", (sampler.scenes.labels[query] >= 0) & ~target)):
                marked[key][0] += float((predicted & where).sum())
                marked[key][1] += float(where.sum())
    return {key: m / n if n else math.nan for key, (m, n) in marked.items()}


def run_one(scene_set: str, learner: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Meta-train (or validate once, for the learners with nothing to train) and evaluate one learner on one scene set."""
    overrides = [f"train.threads={args.threads}", *(args.overrides or [])]
    if scene_set == "omniglot":
        overrides += _omniglot_overrides(Path(args.omniglot))
    if learner == "every-character":
        return run_reference(scene_set, args, overrides)
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
    summary = Trainer(build_seg_experiment(config), run_dir, resume=args.resume, progress=not args.no_progress,
                      domain="segmentation").fit()
    wall = time.perf_counter() - start
    result = evaluate_seg_run(run_dir, episodes=args.episodes, seeds=args.seeds, shots=shots, ways=args.ways)
    exp = build_seg_experiment(load_run_config(run_dir))
    exp.learner.load_state_dict(load_weights(run_dir))
    marked = {k: discrimination(exp.learner, exp.source("test", 1, k, exp.config.eval.queries), args.episodes, exp.config.eval.seed)
              for k in shots} if 1 in args.ways else {}
    return {"set": scene_set, "learner": name, "steps": summary.get("steps"), "marked": marked,
            "train_seconds": summary.get("train_seconds") or 0.0, "wall_seconds": wall, "results": result["results"]}


def shot_gain(five: dict[str, Any], one: dict[str, Any]) -> str:
    """5-shot minus 1-shot IoU, paired class by class, ± the 95% CI over the classes both rows scored."""
    a, b = one.get("per_class"), five.get("per_class")
    if not a or not b:
        return ""
    diffs = [b[c] - a[c] for c in a if c in b]
    if len(diffs) < 2:
        return ""
    return f"{statistics.fmean(diffs):+.3f} ± {1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)):.3f}"


def _cells(row: dict[str, Any]) -> list[list[str]]:
    """One line per (ways, shots): scenes, learner, episodes, mIoU, 5-shot gain, FB-IoU, AP50, adaptation, meta-training."""
    by = {(r["metric"], r.get("ways", 1), r["shots"]): r for r in row["results"]}
    lines = []
    for ways, shots in sorted({(r.get("ways", 1), r["shots"]) for r in row["results"]}):
        cells = [f"{by[(m, ways, shots)]['mean']:.3f} ± {by[(m, ways, shots)]['ci95']:.3f}" for m in ("miou", "fb_iou", "ap50")]
        gain = shot_gain(by[("miou", ways, shots)], by[("miou", ways, 1)]) if shots > 1 and ("miou", ways, 1) in by else ""
        adapt = by[("miou", ways, shots)]["median_adapt_seconds"] * 1000
        steps = row["steps"] or 0
        train = f"{steps:,} steps, {row['train_seconds']:.0f} s" if row["train_seconds"] > 1 else "none"
        lines.append([row["set"], f"`{row['learner']}`", f"{ways}-way {shots}-shot", cells[0], gain, *cells[1:],
                      f"{adapt:.1f} ms", train])
    return lines


COLUMNS = ("scenes", "learner", "episodes", "mIoU", "5-shot gain (paired)", "FB-IoU", "AP50", "adaptation (median)", "meta-training")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as docs/benchmarks.md holds it."""
    head = "| " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for row in rows for cells in _cells(row)]
    return "\n".join(lines)


def marked_markdown(rows: list[dict[str, Any]]) -> str:
    """The class-discrimination table: shares of the class's and of the other characters' pixels marked."""
    lines = ["| scenes | learner | shots | class pixels marked | other characters' pixels marked |", "|---|---|---:|---:|---:|"]
    for row in rows:
        for shots, m in sorted((int(k), v) for k, v in (row.get("marked") or {}).items()):
            lines.append(f"| {row['set']} | `{row['learner']}` | {shots} | {m['class']:.3f} | {m['others']:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], episodes: int, seeds: int) -> Table:
    """The benchmark's table, one line per (scene set, learner, shots)."""
    t = Table(title=f"few-shot segmentation; mean ± 95% CI over {seeds} seeds x {episodes} test episodes")
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("scenes", "learner", "episodes") else "right")
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
    parser.add_argument("--ways", type=int, nargs="+", default=[1], help="classes per test episode (default 1; e.g. 1 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-shots", type=int, help="meta-train on episodes of this many shots and test at it only")
    parser.add_argument("--meta-batch", type=int, default=2, help="episodes per meta-batch with --train-shots (default 2)")
    parser.add_argument("--omniglot", default=str(REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"))
    parser.add_argument("--overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-segmentation-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="reuse (or finish) the runs already in --out, e.g. to evaluate them at other --ways")
    parser.add_argument("--results", default="results.json", help="the results file's name in --out (default results.json)")
    parser.add_argument("--render", nargs="+", metavar="JSON", help="print the markdown table of results.json files and stop")
    args = parser.parse_args()
    console = Console()
    if args.render:
        rendered = [row for path in args.render for row in json.loads(Path(path).read_text())["rows"]]
        print(markdown(rendered) + "\n\n" + marked_markdown(rendered))
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
            write_json(out / args.results, {"episodes": args.episodes, "seeds": args.seeds, "threads": args.threads,
                                            "rows": rows})
            console.print(f"done {scene_set} / seg-{learner} ({rows[-1]['wall_seconds']:.0f} s)")
    console.print(table(rows, args.episodes, args.seeds))
    print(markdown(rows) + "\n\n" + marked_markdown(rows))
    console.print(f"results: {out / args.results}")
    print(json.dumps({"out": str(out)}))


if __name__ == "__main__":
    main()
