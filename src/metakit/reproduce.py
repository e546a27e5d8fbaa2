"""Published table rows, re-run with their published protocol: ``metakit reproduce NAME``.

Each row names the paper, the config and overrides that follow its protocol, the published
figure, and what a run costs on 2 CPU cores. The budgets are far below the papers' (tens of
thousands of episodes on GPUs); the output says so beside the numbers. Omniglot rows use the
Vinyals protocol (character split with rotations) on the background set, the part of Omniglot
available without the evaluation zip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metakit.errors import MetakitError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Row:
    """One published result and how to re-run it."""

    name: str
    paper: str
    config: str
    ways: int
    shots: int
    published: float
    published_ci: float | None
    minutes_2cpu: float
    metric: str = "accuracy"
    overrides: tuple[str, ...] = ()
    eval_overrides: tuple[str, ...] = ()
    note: str = ""

    def train_overrides(self) -> list[str]:
        """Config overrides that set the row's test setting (and its training setting)."""
        return [f"eval.ways=[{self.ways}]", f"eval.shots=[{self.shots}]", *self.overrides]


_PAPERS = {
    "protonet": ("Snell et al. 2017, Prototypical Networks, Table 1", {(5, 1): (98.8, None), (5, 5): (99.7, None), (20, 1): (96.0, None), (20, 5): (98.9, None)}),
    "maml": ("Finn et al. 2017, MAML, Table 1", {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)}),
    "matching": ("Vinyals et al. 2016, Matching Networks, Table 1", {(5, 1): (98.1, None), (5, 5): (98.9, None), (20, 1): (93.8, None), (20, 5): (98.5, None)}),
    "relation": ("Sung et al. 2018, Relation Networks, Table 1", {(5, 1): (99.6, 0.2), (5, 5): (99.8, 0.1), (20, 1): (97.6, 0.2), (20, 5): (99.1, 0.1)}),
}
#: Minutes on 2 CPU cores for the default budget of each learner's Vinyals config (1-shot, 5-shot).
_MINUTES = {"protonet": (11, 13), "maml": (15, 20), "matching": (12, 14), "relation": (14, 16)}


def _omniglot_rows() -> list[Row]:
    rows = []
    for learner, (paper, figures) in _PAPERS.items():
        for (ways, shots), (pub, ci) in figures.items():
            # Each paper trains the shots it tests; MAML also trains the ways it tests.
            train = [f"episodes.shots={shots}"]
            if learner in ("maml", "relation"):
                train.append(f"episodes.ways={ways}")
            if learner == "maml" and ways == 20:
                train.append("learner.inner_lr=0.1")  # Finn et al.'s 20-way inner step size
            rows.append(Row(
                name=f"omniglot-{learner}-{ways}w{shots}s", paper=paper, config=f"omniglot-vinyals-{learner}.yaml",
                ways=ways, shots=shots, published=pub, published_ci=ci,
                minutes_2cpu=_MINUTES[learner][shots > 1], overrides=tuple(train),
            ))
    return rows


ROWS: dict[str, Row] = {r.name: r for r in _omniglot_rows()}
for _k, (_pub, _ci) in {5: (1.13, 0.18), 10: (0.77, 0.11)}.items():
    ROWS[f"sinusoid-maml-k{_k}"] = Row(
        name=f"sinusoid-maml-k{_k}", paper="Finn et al. 2017 (MAML), as tabulated by Li et al. 2017 (Meta-SGD), Table 1",
        config="sinusoid-maml.yaml", ways=1, shots=_k, published=_pub, published_ci=_ci, minutes_2cpu=8, metric="mse",
        overrides=(f"episodes.shots={_k}", "eval.ways=[1]"), note="MSE after one adaptation step; lower is better",
    )


def config_path(row: Row) -> Path:
    """The row's config file: the repository's ``configs/`` folder, else ``./configs``."""
    for folder in (REPO_CONFIGS, Path.cwd() / "configs"):
        if (folder / row.config).is_file():
            return folder / row.config
    raise MetakitError(f"config {row.config} not found; run metakit reproduce from a metakit checkout (it reads configs/).")
