"""What self-supervised pretraining adds to ProtoNet + Conv-4 on Glyphs under a short CPU budget.

Four ways to get a 5-way 1-shot classifier for the held-out Unicode blocks of Glyphs, all
evaluated on the same 1000 fixed test episodes (15 queries per class):

(a) ProtoNet meta-training from a random initialisation (``--meta-steps`` steps);
(b) the same, after rotation-prediction pretraining (RotNet, Gidaris et al. 2018);
(c) the same, after SimCLR-style contrastive pretraining (Chen et al. 2020);
(d) no meta-training at all: the frozen backbone (random, rotation- or SimCLR-pretrained) with
    nearest-prototype classification (and, with ``--linear-head``, a linear head fitted to each
    support set: the adaptation of the fine-tuning baseline, Chen et al. 2019);
(e) with ``--matched`` (default on): ProtoNet from random initialisation given the pretraining's
    wall time as extra meta-training steps (steps added = mean pretraining seconds / seconds per
    meta-step of run (a), validation included; an estimate, the table shows the time actually
    spent): does pretraining beat spending the same CPU time on more meta-training?

Pretraining uses only the training split's images, never their labels, for ``--pretrain-steps``
steps of 256 backbone inputs each (rotation: 64 images x 4 rotations; SimCLR: 128 images x 2
views). Meta-training and evaluation go through ``metakit.training.train`` and
``metakit.evaluation.evaluate_run`` with ``configs/glyphs-protonet-{rotation,simclr}.yaml``.

    flock /tmp/metakit-cpu.lock python benchmarks/ssl_pretraining.py --threads 2 --meta-steps 300 --pretrain-steps 500

Glyphs is rendered on first use (about 25 s) and cached.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from metakit.config import Config, config_from_dict, load_config, merge, parse_overrides
from metakit.episodes import FixedEpisodes
from metakit.evaluation import evaluate_learner, evaluate_run
from metakit.experiment import build_experiment
from metakit.training import train
from metakit.utils import load_checkpoint, set_threads, write_json

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"rotation": REPO / "configs" / "glyphs-protonet-rotation.yaml", "simclr": REPO / "configs" / "glyphs-protonet-simclr.yaml"}


def _config(objective: str | None, args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """The run config: the objective's YAML (rotation's for no pretraining) plus the budget overrides."""
    overrides = [
        f"train.steps={args.meta_steps}", f"train.val_every={max(1, args.meta_steps // 3)}", f"train.threads={args.threads}",
        f"eval.episodes={args.episodes}", "eval.ways=[5]", "eval.shots=[1]", f"pretrain.steps={args.pretrain_steps}",
        f"seed={args.seed}", *extra,
    ]
    if objective is None:
        overrides.append("pretrain.objective=null")
    return load_config(CONFIGS[objective or "rotation"], overrides)


def _frozen(config: Config, backbone_state: dict[str, torch.Tensor] | None, learner: str) -> dict[str, Any]:
    """Evaluate a frozen backbone with ``learner``'s adaptation (no meta-training) on the test episodes."""
    options = {"protonet": [], "finetune": ["learner.head_steps=100", "learner.head_lr=0.01"]}[learner]
    cfg = config_from_dict(merge(config.to_dict(), parse_overrides([f"learner.name={learner}", *options])))
    exp = build_experiment(cfg)  # seeded: the same random initialisation as run (a) starts from
    if backbone_state is not None:
        exp.learner.backbone.load_state_dict(backbone_state)
    ev = cfg.eval
    episodes = FixedEpisodes(exp.source("test", ev.ways[0], ev.shots[0], ev.queries), ev.episodes, ev.seed)
    start = time.perf_counter()
    result = evaluate_learner(exp.learner, episodes)
    return {**result.to_dict(), "eval_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-steps", type=int, default=300, help="ProtoNet meta-training steps per run")
    parser.add_argument("--pretrain-steps", type=int, default=500, help="self-supervised pretraining steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000, help="fixed 5-way 1-shot test episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-frozen", action="store_true", help="skip (d), the frozen-feature rows")
    parser.add_argument("--linear-head", action="store_true", help="add (d) rows with a linear head per episode (~1 min each)")
    parser.add_argument("--no-matched", action="store_true", help="skip (e), the compute-matched random-init run")
    parser.add_argument("--out", default=str(REPO / "runs" / f"bench-ssl-pretraining-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = parser.parse_args()
    threads = set_threads(args.threads)
    out = Path(args.out)
    wall = time.perf_counter()

    rows: list[dict[str, Any]] = []
    backbones: dict[str, dict[str, torch.Tensor] | None] = {"none": None}
    plan: list[tuple[str | None, int]] = [(None, args.meta_steps), ("rotation", args.meta_steps), ("simclr", args.meta_steps)]
    if not args.no_matched:
        plan.append((None, 0))  # step count filled in once (a)-(c) have measured their times
    for objective, steps in plan:
        name = objective or "none"
        run_dir = out / name
        if steps == 0:  # (e): as many extra meta-steps as the pretraining's mean wall time buys
            per_step = rows[0]["meta_seconds"] / args.meta_steps
            pre = [r["pretrain_seconds"] for r in rows if r["pretrain_seconds"]]
            steps = args.meta_steps + max(1, round(sum(pre) / len(pre) / per_step))
            run_dir = out / f"none-matched-{steps}"
        config = _config(objective, args, [f"train.steps={steps}", f"train.val_every={max(1, steps // 3)}"])
        summary = train(config, run_dir)
        result = evaluate_run(str(run_dir), progress=False)["results"][0]
        pre = json.loads((run_dir / "pretraining.json").read_text()) if objective else None
        if objective:
            backbones[name] = load_checkpoint(run_dir / "checkpoints" / "pretrained_backbone.pt", "re-run this benchmark", keys=("backbone",))["backbone"]
        rows.append({
            "init": name, "meta_training": f"ProtoNet {summary['steps']} steps", "result": result,
            "pretrain_seconds": pre["seconds"] if pre else 0.0, "pretext_accuracy": pre["final_accuracy_mean10"] if pre else None,
            "meta_seconds": summary["train_seconds"], "best_step": summary["best_step"],
        })
    if not args.no_frozen:
        base = _config(None, args)
        learners = [("protonet", "none (prototypes)")] + ([("finetune", "none (linear head)")] if args.linear_head else [])
        for name, state in backbones.items():
            pre_seconds = next(r["pretrain_seconds"] for r in rows if r["init"] == name)
            for learner, label in learners:
                rows.append({
                    "init": name, "meta_training": label, "result": _frozen(base, state, learner),
                    "pretrain_seconds": pre_seconds, "pretext_accuracy": None, "meta_seconds": 0.0, "best_step": None,
                })

    batches = {o: load_config(CONFIGS[o]).pretrain.batch_size for o in CONFIGS}
    table = Table(title=(
        f"Glyphs 5-way 1-shot, {args.episodes} fixed test episodes, ProtoNet Conv-4, {threads} threads; pretraining "
        f"{args.pretrain_steps} steps (rotation {batches['rotation']} images x 4, SimCLR {batches['simclr']} images x 2 views)"
    ))
    for col in ("backbone init", "meta-training", "accuracy ± 95% CI", "pretext acc.", "pretrain time", "meta-train time", "threads"):
        table.add_column(col, justify="left" if col in ("backbone init", "meta-training") else "right")
    for r in rows:
        res = r["result"]
        table.add_row(
            {"none": "random", "rotation": "rotation SSL", "simclr": "SimCLR SSL"}[r["init"]], r["meta_training"],
            f"{100 * res['mean']:.2f} ± {100 * res['ci95']:.2f}",
            f"{100 * r['pretext_accuracy']:.1f}%" if r["pretext_accuracy"] is not None else "-",
            f"{r['pretrain_seconds']:.0f} s" if r["pretrain_seconds"] else "-",
            f"{r['meta_seconds']:.0f} s" if r["meta_seconds"] else "-",
            str(threads),
        )
    Console(width=150).print(table)
    total = time.perf_counter() - wall
    print(f"torch {torch.__version__}, threads {threads}, seed {args.seed}, total wall time {total / 60:.1f} min, runs in {out}")
    record = {"args": vars(args), "threads": threads, "torch": torch.__version__, "wall_seconds": total, "rows": rows}
    write_json(out / "ssl_benchmark.json", record)
    compact = [
        {"init": r["init"], "meta_training": r["meta_training"], "accuracy": r["result"]["mean"], "ci95": r["result"]["ci95"],
         "pretrain_seconds": r["pretrain_seconds"], "meta_seconds": r["meta_seconds"]}
        for r in rows
    ]
    print(json.dumps({"wall_seconds": round(total, 1), "rows": compact}))


if __name__ == "__main__":
    main()
