"""The meta-training loop.

One loop for every learner: sample a meta-batch, ``learner.meta_step`` writes the meta-gradient,
the optimiser steps. Validation runs every ``val_every`` steps on fixed episodes and keeps the best
checkpoint; ``last.pt`` holds everything needed to continue exactly (weights, optimiser, schedule,
episode-sampler and global RNG states), written atomically so a killed run resumes cleanly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from metakit import distributed as dist
from metakit.config import Config, check_threads
from metakit.episodes import FixedEpisodes, meta_step_each, sample_batch
from metakit.errors import MetakitError
from metakit.evaluation import evaluate_learner
from metakit.experiment import Experiment, build_experiment
from metakit.runs import Run, load_run_config, progress_bar, write_report
from metakit.utils import resolve_device, rng_state, seed_everything, set_rng_state, set_threads

def _make_optimizer(cfg: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.lr <= 0:
        raise MetakitError(f"train.lr must be > 0, got {t.lr}.")
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.momentum > 0)
    raise MetakitError(f"unknown train.optimizer {t.optimizer!r}; use adam, adamw or sgd.")


def _make_schedule(cfg: Config, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    if t.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.steps))
    if t.schedule == "step":
        step_size = t.step_size or max(1, t.steps // 4)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=t.gamma)
    raise MetakitError(f"unknown train.schedule {t.schedule!r}; use constant, cosine or step.")


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return True
    return new > old if metric == "accuracy" else new < old


class Trainer:
    """Meta-trains ``experiment.learner`` and writes the run directory.

    Args:
        experiment: built from the run's config.
        run_dir: where config, metrics, checkpoints, report and plots go.
        resume: continue from ``run_dir/checkpoints/last.pt`` if present.
        progress: show a rich progress bar.
        on_validation: called as ``on_validation(step, value)`` after every validation (e.g. to
            report to an Optuna trial); an exception it raises stops training (pruning).
        domain: the plugin whose run this is, recorded in the run directory so that ``metakit
            evaluate``, ``report`` and ``predict`` hand it to that domain (segmentation trains with
            this trainer too).
    """

    def __init__(
        self, experiment: Experiment, run_dir: str | Path, resume: bool = False, progress: bool = True,
        on_validation: Callable[[int, float], None] | None = None, domain: str = "classification",
    ) -> None:
        self.exp = experiment
        self.on_validation = on_validation
        self.cfg = experiment.config
        self.run = Run(run_dir, domain=domain)
        self.paths = self.run.paths
        self.resume = resume
        self.progress = progress
        self.console = Console(stderr=True)
        t = self.cfg.train
        if t.steps < 1 or t.val_every < 1:
            raise MetakitError(f"train.steps and train.val_every must be >= 1, got {t.steps} and {t.val_every}.")
        self.checkpoint_every = t.checkpoint_every or t.val_every
        check_threads("train.threads", t.threads)
        self.device = resolve_device(t.device, "train.device")

    # -- run directory ------------------------------------------------------------------------

    def _prepare_dir(self) -> dict[str, Any] | None:
        """Create the run directory, or load the checkpoint to resume from."""
        p = self.paths
        self.run.writes = dist.is_main()
        resuming = self.run.start(
            self.cfg.to_yaml(), self.resume, lambda: load_run_config(p.root).to_dict(), self.cfg.to_dict(),
            extendable=("train.steps",), started=p.last,
        )
        if resuming:
            return self.run.load("last", f"delete {p.last} to start over", keys=("learner", "state"))
        return None

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Meta-train, validate, checkpoint; returns the training summary (also ``training.json``)."""
        cfg, learner = self.cfg, self.exp.learner
        threads = set_threads(cfg.train.threads)
        seed_everything(cfg.seed)
        learner.to(self.device)
        params = [p for p in learner.parameters() if p.requires_grad]
        if not params:
            return self._fit_without_parameters(threads)
        dist.broadcast_parameters(learner)
        optimizer = _make_optimizer(cfg, params)
        schedule = _make_schedule(cfg, optimizer)
        # Every rank draws the same meta-batch and keeps its own shard of the tasks, so N processes
        # compute the same meta-gradient as one process with the whole meta-batch.
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.episodes.meta_batch % dist.world_size():
            raise MetakitError(
                f"episodes.meta_batch={cfg.episodes.meta_batch} does not split evenly over {dist.world_size()} "
                f"processes; use a multiple of the process count."
            )
        train_source = self.exp.train_source()
        val_episodes = FixedEpisodes(self.exp.val_source(), cfg.eval.val_episodes, cfg.eval.seed + 1)
        state = {"step": 0, "best": None, "best_step": 0, "bad_validations": 0, "train_seconds": 0.0}

        checkpoint = self._prepare_dir()
        if checkpoint is None and cfg.pretrain.objective:
            from metakit.pretraining import pretrain

            # Self-supervised pretraining shapes the backbone before the meta-learner sees labels.
            pretrain(self.exp, self.paths.root, progress=self.progress and dist.is_main())
            self._save_last(learner, optimizer, schedule, generator, state)  # a resume skips pretraining
        if checkpoint is not None:
            learner.load_state_dict(checkpoint["learner"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            schedule.load_state_dict(checkpoint["schedule"])
            generator.set_state(checkpoint["generator"])
            set_rng_state(checkpoint["rng"])
            state = checkpoint["state"]
            self.run.keep_metrics(lambda r: r.get("step", state["step"] + 1) <= state["step"])
        self.run.open_tensorboard(cfg.train.tensorboard)

        metric = learner.metric
        total = cfg.train.steps
        show = self.progress and dist.is_main()
        stopped_early = False
        with progress_bar("[bold]meta-training", self.console, show) as bar:
            task = bar.add_task("train", total=total, completed=state["step"], info="")
            # The steps since the last train record live in the checkpointed state, so the first
            # record after a resume averages the same steps as an uninterrupted run's would.
            window: list[dict[str, float]] = state.setdefault("window", [])
            t_start = time.perf_counter() - state["train_seconds"]
            for step in range(state["step"] + 1, total + 1):
                learner.train()
                optimizer.zero_grad(set_to_none=True)
                if getattr(train_source, "variable", False):
                    # Meta-Dataset episodes differ in size and do not stack: one task at a time, gradients averaged.
                    tasks = [train_source.sample(generator) for _ in range(cfg.episodes.meta_batch)]
                    tasks = [t.to(self.device) for t in tasks[dist.rank() :: dist.world_size()]]
                    stats = meta_step_each(learner.meta_step, tasks, params)
                else:
                    batch = dist.shard(sample_batch(train_source, cfg.episodes.meta_batch, generator)).to(self.device)
                    stats = learner.meta_step(batch)
                dist.average_gradients(params)
                if cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                optimizer.step()
                schedule.step()
                window.append(stats)
                state["step"] = step
                state["train_seconds"] = time.perf_counter() - t_start
                info = f"loss {stats['loss']:.3f} {metric} {stats[metric]:.3f}"
                if step % max(1, cfg.train.val_every // 10) == 0 or step == total:
                    mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    self.run.log({"split": "train", "step": step, **mean, "lr": schedule.get_last_lr()[0], "seconds": round(state["train_seconds"], 3)})
                    window.clear()
                if step % cfg.train.val_every == 0 or step == total:
                    result = evaluate_learner(learner, val_episodes, device=self.device)
                    self.run.log({"split": "val", "step": step, metric: result.mean, "ci95": result.ci95})
                    if _better(metric, result.mean, state["best"]):
                        state.update(best=result.mean, best_step=step, bad_validations=0)
                        self.run.save("best", {"step": step, "learner": learner.state_dict(), metric: result.mean})
                    else:
                        state["bad_validations"] += 1
                    if show:
                        self.console.print(
                            f"step {step}/{total}: val {metric} {result.mean:.4f} ± {result.ci95:.4f} "
                            f"(best {state['best']:.4f} at {state['best_step']})"
                        )
                    stopped_early = cfg.train.patience is not None and state["bad_validations"] > cfg.train.patience
                    if self.on_validation is not None:
                        self.on_validation(step, result.mean)
                if step % self.checkpoint_every == 0 or step == total or stopped_early:
                    state["train_seconds"] = time.perf_counter() - t_start
                    self._save_last(learner, optimizer, schedule, generator, state)
                bar.update(task, completed=step, info=info)
                if stopped_early:
                    break
        self.run.close_tensorboard()
        chosen = self._after_training(learner, show)
        summary = {
            "steps": state["step"],
            "stopped_early": stopped_early,
            "best_step": state["best_step"],
            f"best_val_{metric}": state["best"],
            "metric": metric,
            "train_seconds": round(state["train_seconds"], 2),
            "threads": threads,
            "device": str(self.device),
            "world_size": dist.world_size(),
            "parameters": sum(p.numel() for p in params),
            **chosen,
        }
        if dist.is_main():
            self._write_report(summary)
        return summary

    def _after_training(self, learner: torch.nn.Module, show: bool) -> dict[str, Any]:
        """Let a learner make its post-training choices on the best weights (P>M>F's fine-tuning lr).

        A learner with an ``after_training(experiment, progress)`` method gets the best checkpoint's
        weights, returns what it chose (recorded in ``training.json``) and may change its buffers;
        the changed entries are written into ``best.pt`` and ``last.pt``, so every later
        evaluation uses them.
        """
        hook = getattr(learner, "after_training", None)
        if hook is None or not dist.is_main() or not self.paths.best.is_file():
            return {}
        fix = "delete the run and train again"
        best = self.run.load("best", fix, keys=("learner",))
        learner.load_state_dict(best["learner"])
        before = {k: v.clone() for k, v in learner.state_dict().items()}
        chosen = hook(self.exp, progress=show)
        after = learner.state_dict()
        changed = {k: v for k, v in after.items() if not torch.equal(v, before[k])}
        self.run.save("best", {**best, "learner": after})
        if changed and self.paths.last.is_file():
            last = self.run.load("last", fix, keys=("learner",))
            self.run.save("last", {**last, "learner": {**last["learner"], **changed}})
        return dict(chosen)

    def _fit_without_parameters(self, threads: int) -> dict[str, Any]:
        """A learner with nothing to train (a no-meta-training baseline): validate once, write the run.

        The run directory has what any run has (config, metrics, checkpoints, summary, report), so
        ``evaluate``, ``compare`` and ``cross-domain`` treat baselines like meta-trained learners.
        """
        cfg, learner = self.cfg, self.exp.learner
        self._prepare_dir()  # a finished run is only redone with --resume; it is cheap and deterministic
        self.run.open_tensorboard(cfg.train.tensorboard)
        learner.to(self.device)
        metric = learner.metric
        result = evaluate_learner(
            learner, FixedEpisodes(self.exp.val_source(), cfg.eval.val_episodes, cfg.eval.seed + 1), device=self.device
        )
        state = {"step": 0, "best": result.mean, "best_step": 0, "bad_validations": 0, "train_seconds": 0.0}
        self.run.keep_metrics(lambda r: False)  # a redone baseline's log holds this validation only
        self.run.log({"split": "val", "step": 0, metric: result.mean, "ci95": result.ci95})
        self.run.close_tensorboard()
        if self.progress and dist.is_main():
            self.console.print(
                f"{cfg.learner.name} has no trainable parameters: nothing to meta-train; "
                f"val {metric} {result.mean:.4f} ± {result.ci95:.4f}"
            )
        summary = {
            "steps": 0, "stopped_early": False, "best_step": 0, f"best_val_{metric}": result.mean, "metric": metric,
            "train_seconds": 0.0, "threads": threads, "device": str(self.device), "world_size": dist.world_size(),
            "parameters": 0,
        }
        weights = {"step": 0, "learner": learner.state_dict(), metric: result.mean}
        self.run.save("best", weights)
        self.run.save("last", {**weights, "state": state})
        if dist.is_main():
            self._write_report(summary)
        return summary

    def _write_report(self, summary: dict[str, Any]) -> None:
        """``training.json``, the learning curve and ``report.md`` of a finished run."""
        from metakit.reporting import run_report

        write_report(self.paths.root, run_report(self.paths.root, training=summary))

    def _save_last(self, learner, optimizer, schedule, generator, state) -> None:  # noqa: ANN001
        self.run.save("last", {
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "rng": rng_state(),
            "state": dict(state),
        })


def train(
    config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Build the experiment for ``config`` and meta-train it into ``run_dir`` (see :class:`Trainer`)."""
    return Trainer(build_experiment(config), run_dir, resume=resume, progress=progress, on_validation=on_validation).fit()
