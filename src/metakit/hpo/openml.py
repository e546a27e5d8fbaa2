"""Loader for the OpenML-100 random-search meta-dataset (``../shared/data/hpo-openml100-random-search``).

Real evaluations of scikit-learn pipelines (Gijsbers et al., symbolicdefaults; runs from OpenML):
RandomForest on 94 tasks x 500 random configurations (``rf.arff``) and AdaBoost on 100 tasks x
400 (``adaboost.arff``), plus OpenML meta-features per task (``metadata.csv``). Each task becomes
a :class:`~metakit.hpo.warmstart.PriorTask`; the search space is read from the ARFF header and
the data (constant columns dropped, integer-valued numeric columns as ints, a float range spanning
two or more decades on a log scale).

The data are never copied into the repository: pass ``root`` or set ``METAKIT_HPO_OPENML``;
the default is ``../shared/data/hpo-openml100-random-search`` next to the repository.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from metakit.errors import MetakitError, unknown_name
from metakit.hpo.warmstart import PriorTask, PriorTasks

ENV = "METAKIT_HPO_OPENML"
FILES = {"rf": "rf.arff", "adaboost": "adaboost.arff"}
FOLDER = "hpo-openml100-random-search"


def default_root() -> Path:
    """``$METAKIT_HPO_OPENML``, else ``../shared/data/hpo-openml100-random-search`` beside the repository."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(__file__).resolve().parents[4] / "shared" / "data" / FOLDER


def _short(column: str) -> str:
    parts = column.split("__")
    return "_".join(parts[-2:]) if parts[-1] == "strategy" else parts[-1]


def read_arff(path: Path) -> tuple[list[str], list[list[str] | None], list[list[str]], dict[str, Any]]:
    """A minimal ARFF reader: ``(names, nominal values or None per column, rows, header JSON)``."""
    names: list[str] = []
    nominal: list[list[str] | None] = []
    rows: list[list[str]] = []
    header: dict[str, Any] = {}
    in_data = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("%"):
                if not header and line[1:].strip().startswith("{"):
                    try:
                        header = json.loads(line[1:])
                    except json.JSONDecodeError:
                        pass
                continue
            if in_data:
                rows.append([v.strip().strip("'\"") for v in line.split(",")])
            elif line.upper().startswith("@ATTRIBUTE"):
                _, name, kind = line.split(None, 2)
                names.append(name)
                nominal.append([v.strip().strip("'\"") for v in kind.strip("{} ").split(",")] if kind.startswith("{") else None)
            elif line.upper().startswith("@DATA"):
                in_data = True
    if not names or not rows or any(len(r) != len(names) for r in rows):
        raise MetakitError(f"{path} is not a well-formed ARFF file with {len(names)} columns per row.")
    return names, nominal, rows, header


def _value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _space(names: list[str], nominal: list[list[str] | None], columns: list[list[Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for name, nom, col in zip(names, nominal, columns):
        distinct = sorted({repr(v) for v in col})
        if len(distinct) < 2:
            continue  # constant in the search (n_estimators=100, max_depth=None, ...): not a hyperparameter here
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)
        if not numeric:
            choices = []
            for v in col:
                if v not in choices:
                    choices.append(v)
            order = [_value(v) for v in nom] if nom else choices
            space[_short(name)] = CategoricalDistribution([v for v in order if v in choices])
            continue
        lo, hi = min(col), max(col)
        if all(float(v).is_integer() for v in col):
            space[_short(name)] = IntDistribution(int(lo), int(hi))
        else:
            log = lo > 0 and hi / lo >= 100
            space[_short(name)] = FloatDistribution(float(lo), float(hi), log=log)
    return space


def read_metadata(root: Path) -> dict[int, dict[str, float]]:
    """OpenML meta-features per task id from ``metadata.csv`` (simple + kernel-distance features)."""
    path = root / "metadata.csv"
    if not path.is_file():
        raise MetakitError(f"{path} not found; the OpenML meta-dataset folder is incomplete.")
    out: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            n = float(row["NumberOfInstances"])
            p = max(float(row["NumberOfFeatures"]), 1.0)
            classes = max(float(row["NumberOfClasses"]), 1.0)
            out[int(row["task_id"])] = {
                "log_instances": math.log(n),
                "log_features": math.log(p),
                "log_classes": math.log(classes),
                "log_instances_per_feature": math.log(n / p),
                "binary_feature_fraction": float(row["NumberOfBinaryFeatures"]) / p,
                "symbolic_feature_fraction": float(row["NumberOfSymbolicFeatures"]) / p,
                "majority_fraction": float(row["MajorityClassPercentage"]),
                "missing_fraction": float(row["NumberOfMissingValues"]) / (n * p),
                "median_kernel_distance": float(row["MedianKernelDistance"]),
            }
    return out


def load_openml_hpo(algorithm: str, root: str | Path | None = None) -> PriorTasks:
    """The random-search results of ``algorithm`` (``rf`` or ``adaboost``) as prior tasks.

    Raises:
        MetakitError: unknown algorithm, or the data folder is missing (says where to put it).
    """
    if algorithm not in FILES:
        raise unknown_name("OpenML HPO algorithm", algorithm, FILES)
    folder = Path(root) if root is not None else default_root()
    path = folder / FILES[algorithm]
    if not path.is_file():
        raise MetakitError(
            f"{path} not found; place the {FOLDER} files (see ../shared/data/README.md) there or set {ENV}."
        )
    names, nominal, rows, _ = read_arff(path)
    if "predictive_accuracy" not in names or "task_id" not in names:
        raise MetakitError(f"{path} lacks the predictive_accuracy and task_id columns.")
    acc_i, task_i = names.index("predictive_accuracy"), names.index("task_id")
    hp = [i for i in range(len(names)) if i not in (acc_i, task_i)]
    parsed = [[_value(r[i]) for i in hp] for r in rows]
    space = _space([names[i] for i in hp], [nominal[i] for i in hp], [list(c) for c in zip(*parsed)])
    short = [_short(names[i]) for i in hp]
    metadata = read_metadata(folder)
    by_task: dict[int, tuple[list[dict[str, Any]], list[float]]] = {}
    for r, values in zip(rows, parsed):
        configs, scores = by_task.setdefault(int(float(r[task_i])), ([], []))
        configs.append({k: v for k, v in zip(short, values) if k in space})
        scores.append(float(r[acc_i]))
    tasks = [
        PriorTask(str(tid), configs, np.array(scores), dict(metadata.get(tid, {})))
        for tid, (configs, scores) in sorted(by_task.items())
    ]
    return PriorTasks(tasks, space)
