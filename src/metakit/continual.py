"""Continual (task-incremental) evaluation: tasks learned one after another.

A sequence of T test tasks is learned in order, each starting from the weights the previous task
left (not from the meta-learned initialisation). After learning task t the model is scored on the
query sets of all T tasks, each under its own labels (the task identity is known, as in
task-incremental learning), which fills the accuracy matrix ``R[t, j]``. From R (Lopez-Paz &
Ranzato 2017; Chaudhry et al. 2018):

- average accuracy ``ACC = mean_j R[T-1, j]``,
- backward transfer ``BWT = mean_{j<T-1} (R[T-1, j] - R[j, j])`` (negative = forgetting),
- forgetting ``F = mean_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j])``.

It applies to learners whose adaptation changes weights that can be carried forward: the
fine-tuning baselines (the linear head) and the MAML family (the adapted parameters).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from metakit.episodes import Episode, FixedEpisodes
from metakit.errors import MetakitError
from metakit.evaluation import load_trained, mean_ci95
from metakit.learners import Learner
from metakit.runs import Plot, Report, pyplot, write_report


class _GradientState:
    """MAML-family: the adapted parameters move on from task to task."""

    def __init__(self, learner: Any, steps: int) -> None:
        self.learner, self.steps = learner, steps
        self.params = {k: v.detach() for k, v in learner.parameters_dict().items()}

    def learn(self, ep: Episode) -> None:
        params = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        with torch.enable_grad():
            for step in range(self.steps):
                loss = self.learner.loss(self.learner.forward_with(params, ep.support_x, ep.ways), ep.support_y)
                params = self.learner.inner_update(params, loss, min(step, self.learner.inner_steps - 1), False)
        self.params = {k: v.detach() for k, v in params.items()}

    def predict(self, ep: Episode) -> torch.Tensor:
        return self.learner.forward_with(self.params, ep.query_x, ep.ways)


class _HeadState:
    """Fine-tuning baselines: one linear head, trained on each task's support features in turn."""

    def __init__(self, learner: Any, steps: int) -> None:
        self.learner, self.steps, self.head = learner, steps, None

    def learn(self, ep: Episode) -> None:
        features = self.learner._features(ep.support_x)
        if self.head is None:
            self.head = torch.nn.Linear(features.shape[-1], ep.ways).to(features)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
        opt = torch.optim.Adam(self.head.parameters(), lr=self.learner.head_lr, weight_decay=self.learner.head_weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(self.head(features), ep.support_y).backward()
                opt.step()

    def predict(self, ep: Episode) -> torch.Tensor:
        return self.head(self.learner._features(ep.query_x))


def _state(learner: Learner, steps: int | None) -> _GradientState | _HeadState:
    name = type(learner).__name__
    if hasattr(learner, "head_steps") and hasattr(learner, "_features"):
        return _HeadState(learner, steps or learner.head_steps)
    if hasattr(learner, "inner_update") and name not in ("MAMLPlusPlus", "CAVIA"):
        return _GradientState(learner, steps or max(1, learner.eval_inner_steps))
    raise MetakitError(
        f"continual evaluation does not apply to {name}: it needs adaptation that changes carried-over weights "
        f"(finetune, baselinepp, maml, fomaml, metasgd, anil, reptile)."
    )


def continual_metrics(R: np.ndarray) -> dict[str, float]:
    """ACC, BWT and forgetting of one accuracy matrix ``R[t, j]`` (rows: after learning task t)."""
    T = R.shape[0]
    acc = float(R[-1].mean())
    if T == 1:
        return {"acc": acc, "bwt": 0.0, "forgetting": 0.0}
    bwt = float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))
    forgetting = float(np.mean([R[: T - 1, j].max() - R[-1, j] for j in range(T - 1)]))
    return {"acc": acc, "bwt": bwt, "forgetting": forgetting}


def continual(
    run_dir: str | Path,
    tasks: int = 5,
    sequences: int = 20,
    steps: int | None = None,
    ways: int | None = None,
    shots: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``sequences`` task sequences of length ``tasks`` from fixed test episodes; write a report."""
    if tasks < 2 or sequences < 1:
        raise MetakitError(f"continual evaluation needs tasks >= 2 and sequences >= 1, got {tasks} and {sequences}.")
    exp = load_trained(run_dir)
    learner, ev = exp.learner, exp.config.eval
    _state(learner, steps)  # fail fast for learners it does not apply to
    n, k = ways or ev.ways[0], shots or ev.shots[0]
    fixed = FixedEpisodes(exp.source("test", n, k, ev.queries), tasks * sequences, ev.seed)
    learner.eval()
    matrices, per_seq = [], []
    with Progress(transient=True, disable=not progress) as bar, torch.no_grad():
        job = bar.add_task("continual sequences", total=sequences)
        for s in range(sequences):
            eps = [fixed[s * tasks + t] for t in range(tasks)]
            state = _state(learner, steps)
            R = np.zeros((tasks, tasks))
            for t, ep in enumerate(eps):
                state.learn(ep)
                for j, other in enumerate(eps):
                    R[t, j] = (state.predict(other).argmax(-1) == other.query_y).float().mean().item()
            matrices.append(R)
            per_seq.append(continual_metrics(R))
            bar.advance(job)
    summary = {}
    for key in ("acc", "bwt", "forgetting"):
        mean, ci, _ = mean_ci95([m[key] for m in per_seq])
        summary[key] = {"mean": mean, "ci95": ci}
    report = {
        "run": str(run_dir), "learner": exp.config.learner.name, "dataset": exp.config.dataset.name,
        "ways": n, "shots": k, "queries": ev.queries, "tasks": tasks, "sequences": sequences,
        "steps": steps, "episode_seed": ev.seed, "date": time.strftime("%Y-%m-%d"),
        "mean_R": np.mean(matrices, axis=0).tolist(), "summary": summary,
    }
    heatmap = _heatmap(np.mean(matrices, axis=0), f"{exp.config.name}: mean R over {sequences} sequences")
    write_report(out or Path(run_dir) / "continual", Report(
        data={"continual.json": report}, plots={"accuracy_matrix.png": Plot(heatmap)},
        text={"continual.md": continual_markdown([report])},
    ))
    return report


def continual_markdown(reports: list[dict[str, Any]]) -> str:
    """One row per learner: ACC, BWT, forgetting ± 95% CI."""
    lines = ["| learner | setting | ACC | BWT | forgetting |", "|---|---|---|---|---|"]
    for r in reports:
        s = r["summary"]
        cell = lambda key: f"{100 * s[key]['mean']:.2f} ± {100 * s[key]['ci95']:.2f}"  # noqa: E731
        lines.append(f"| {r['learner']} | {r['ways']}w{r['shots']}s, {r['tasks']} tasks x {r['sequences']} | {cell('acc')} | {cell('bwt')} | {cell('forgetting')} |")
    return "\n".join(lines) + "\n"


def _heatmap(R: np.ndarray, title: str) -> Any:
    """The mean accuracy matrix, one cell per (task learned, task evaluated)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for (i, j), v in np.ndenumerate(R):
        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after learning task t")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
