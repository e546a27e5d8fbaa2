"""metakit.hpo: search space, `metakit tune` (samplers, pruning, storages, workers, resume), warm starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="metakit.hpo needs optuna: pip install 'metakit[hpo]' (in the dev extra)")

from metakit.cli import main  # noqa: E402
from metakit.config import load_config  # noqa: E402
from metakit.errors import MetakitError  # noqa: E402
from metakit.hpo import study as studylib  # noqa: E402
from metakit.hpo.metafeatures import metafeature_distances, metafeatures, numpy_metafeatures  # noqa: E402
from metakit.hpo.space import parse_tune  # noqa: E402
from metakit.hpo.tabular import leave_one_task_out  # noqa: E402
from metakit.hpo.tune import TuneOptions, tune  # noqa: E402
from metakit.hpo.warmstart import (  # noqa: E402
    PriorTask, PriorTasks, enqueue_configs, greedy_portfolio, load_portfolio, save_portfolio,
)

TESTS = Path(__file__).resolve().parent
SPACE = {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "episodes.ways": [3, 5]}


def tiny_config(tmp_path: Path, space: dict | None = None, steps: int = 4, file: str = "tiny-tune.yaml", **tune_settings) -> Path:
    cfg = {
        "name": "tiny",
        "seed": 0,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
        "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 20, "val_episodes": 10},
        "train": {"steps": steps, "val_every": 2, "threads": 1},
        "tune": {"trials": 3, "space": SPACE if space is None else space, **tune_settings},
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def worker(args: list[str], **kw) -> subprocess.Popen:
    """`metakit ...` in a fresh process that knows the test-only synthetic dataset."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import conftest; "
        "from metakit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


# -- search space ---------------------------------------------------------------------------------


def test_space_parses_kinds_and_shorthands():
    spec = parse_tune({
        "learner": {"name": "maml"},
        "tune": {"sampler": "grid", "space": {
            "learner.inner_lr": {"low": 0.01, "high": 1.0, "log": True},
            "learner.inner_steps": {"low": 1, "high": 3},
            "train.lr": {"low": 0.001, "high": 0.003, "step": 0.001},
            "episodes.ways": [5, 10],
        }},
    })
    kinds = {p.name: p.kind for p in spec.params}
    assert kinds == {"learner.inner_lr": "float", "learner.inner_steps": "int", "train.lr": "float", "episodes.ways": "categorical"}
    dists = spec.distributions()
    assert dists["learner.inner_lr"].log and dists["learner.inner_steps"].high == 3
    with pytest.raises(MetakitError, match="continuous float"):
        spec.grid()  # inner_lr has no step
    grid = {p.name: p.grid() for p in spec.params if p.name != "learner.inner_lr"}
    assert grid["learner.inner_steps"] == [1, 2, 3] and len(grid["train.lr"]) == 3 and grid["episodes.ways"] == [5, 10]
    nested = spec.config_dict({"learner.inner_lr": 0.1, "episodes.ways": 10})
    assert nested["learner"] == {"name": "maml", "inner_lr": 0.1} and nested["episodes"]["ways"] == 10
    assert "tune" not in nested


@pytest.mark.parametrize("tune_section, message", [
    ({}, "empty"),
    ({"space": {}}, "empty"),
    ({"space": "lr"}, "must be a mapping"),
    ({"space": {"train.lr": {"low": 1.0, "high": 0.1}}}, "above high"),
    ({"space": {"train.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"train.lr": {"low": 0.1}}}, "needs low and high"),
    ({"space": {"train.lr": 0.1}}, "must be a mapping"),
    ({"space": {"train.lr": {"low": 0.1, "high": 1, "spread": 2}}}, "unknown key 'spread'"),
    ({"space": {"train.lrr": {"low": 0.1, "high": 1.0}}}, "unknown config key train.lrr"),
    ({"space": {"train.lr": {"choices": []}}}, "non-empty list"),
    ({"sampler": "bayes", "space": SPACE}, "unknown sampler 'bayes'"),
    ({"pruner": "asha", "space": SPACE}, "unknown pruner 'asha'"),
    ({"trials": 0, "space": SPACE}, "positive integer"),
])
def test_bad_search_spaces_fail_with_one_line(tune_section, message):
    with pytest.raises(MetakitError, match=message) as info:
        parse_tune({"name": "x", "tune": tune_section})
    assert "\n" not in str(info.value)


def test_config_without_tune_section():
    with pytest.raises(MetakitError, match="no tune: section"):
        parse_tune({"name": "x"})


# -- metakit tune -----------------------------------------------------------------------------------


def test_tune_writes_best_config_trials_and_plots(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    code, out, err = run_cli(capsys, ["tune", str(cfg), "--out", str(tmp_path / "t"), "--no-progress", "--json", str(tmp_path / "s.json")])
    assert code == 0, err
    t = tmp_path / "t"
    for name in ("best.yaml", "trials.csv", "trials.md", "tune.json", "tune.md", "optimization_history.png",
                 "param_importances.png", "study.db"):
        assert (t / name).is_file(), name
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{t / 'study.db'}")
    finished = [tr for tr in study.trials if tr.state.is_finished()]
    assert len(finished) == 3 and all(tr.intermediate_values for tr in finished)  # validation reported to Optuna
    best = load_config(t / "best.yaml")  # ready to run: a valid metakit config without the tune section
    assert best.train.lr == pytest.approx(study.best_params["train.lr"]) and best.episodes.ways == study.best_params["episodes.ways"]
    assert len((t / "trials.csv").read_text().strip().splitlines()) == 1 + len(study.trials)
    # A second run of the same command finds the study complete and only rewrites the results.
    code, _, _ = run_cli(capsys, ["tune", str(cfg), "--out", str(t), "--no-progress"])
    assert code == 0 and len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{t / 'study.db'}").trials) == len(study.trials)


@pytest.mark.parametrize("sampler", ["grid", "random", "cmaes"])
def test_each_optuna_sampler_runs(tmp_path, sampler):
    space = {"train.lr": {"low": 0.001, "high": 0.003, "step": 0.001}, "backbone.hidden": {"low": 4, "high": 8, "step": 4}}
    cfg = tiny_config(tmp_path, space=space, steps=2)
    summary = tune(load_spec(cfg), tmp_path / "t", TuneOptions(trials=2, sampler=sampler, pruner="none", progress=False,
                                                               metafeatures="none"))
    assert summary["sampler"] == sampler and summary["counts"] == {"COMPLETE": 2}
    if sampler == "grid":
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
        pairs = {(t.params["train.lr"], t.params["backbone.hidden"]) for t in study.trials}
        assert len(pairs) == 2 and all(lr in (0.001, 0.002, 0.003) for lr, _ in pairs)


def load_spec(path: Path):
    from metakit.hpo.space import load_tune_spec

    return load_tune_spec(path)


def test_pruning_hook_stops_training(tmp_path):
    """The trainer reports every validation; a pruner's exception ends the run at that step."""
    from metakit.training import train

    seen = []

    def hook(step: int, value: float) -> None:
        seen.append(step)
        if step >= 4:
            raise optuna.TrialPruned()

    from metakit.config import config_from_dict

    spec = load_spec(tiny_config(tmp_path, steps=10))
    config = config_from_dict(spec.config_dict({"train.lr": 1e-3, "episodes.ways": 5}))
    with pytest.raises(optuna.TrialPruned):
        train(config, tmp_path / "run", progress=False, on_validation=hook)
    assert seen == [2, 4]
    assert isinstance(studylib.make_pruner("hyperband", 2, 10), optuna.pruners.HyperbandPruner)
    assert isinstance(studylib.make_pruner("median"), optuna.pruners.MedianPruner)


def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    empty = tiny_config(tmp_path, space={}, file="empty.yaml")
    cases = [
        ["tune", str(empty), "--out", str(tmp_path / "a")],
        ["tune", str(cfg), "--sampler", "hyperopt", "--out", str(tmp_path / "b")],
        ["tune", str(cfg), "--storage", f"sqlite:///{tmp_path}/no/such/dir/s.db", "--out", str(tmp_path / "c")],
        ["tune", str(cfg), "--storage", "postgresql://metakit@127.0.0.1:9/none", "--out", str(tmp_path / "d")],
        ["tune", str(cfg), "--storage", "not-a-storage", "--out", str(tmp_path / "e2")],
        ["tune", str(cfg), "--warm-start", str(tmp_path / "missing.db"), "--out", str(tmp_path / "f")],
        ["tune", str(cfg), "learner.bogus=1", "--out", str(tmp_path / "g")],
    ]
    for args in cases:
        code, _, err = run_cli(capsys, args + ["--no-progress"])
        assert code == 2, (args, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("tune: {space: [\n")
    code, _, err = run_cli(capsys, ["tune", str(malformed)])
    assert code == 2 and "malformed YAML" in err


def test_interrupted_trial_is_requeued_and_the_study_resumes(tmp_path, monkeypatch):
    """Ctrl-C inside a trial: the trial is re-queued with the same parameters, a rerun finishes the study."""
    import metakit.training as training

    real = training.train
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train", flaky)
    spec = load_spec(tiny_config(tmp_path))
    options = TuneOptions(trials=3, pruner="none", progress=False, metafeatures="none")
    with pytest.raises(KeyboardInterrupt):
        tune(spec, tmp_path / "t", options)
    storage = f"sqlite:///{tmp_path / 't' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "WAITING"]
    assert study.trials[2].params == study.trials[1].params and study.trials[2].system_attrs["failed_trial"] == 1
    summary = tune(spec, tmp_path / "t", options)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert summary["counts"] == {"COMPLETE": 3, "FAIL": 1}
    assert study.trials[2].state.name == "COMPLETE" and study.trials[2].params == study.trials[1].params


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_killed_worker_loses_no_trial(tmp_path):
    """SIGKILL mid-trial: the next worker on this host re-queues the orphaned trial and the study completes."""
    cfg = tiny_config(tmp_path, steps=40)
    db = tmp_path / "study.db"
    args = ["tune", str(cfg), "--storage", f"sqlite:///{db}", "--trials", "2", "--pruner", "none", "--out",
            str(tmp_path / "t"), "--no-progress", "--metafeatures", "none"]
    proc = worker(args)

    def running() -> bool:
        if not db.exists():
            return False
        try:  # read-only look: never race the worker to create the schema
            storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True, skip_compatibility_check=True)
            st = optuna.load_study(study_name="tiny", storage=storage)
        except Exception:  # noqa: BLE001 - the worker is still creating the schema
            return False
        # Mid-training: the trial has its worker and its sampled parameters recorded.
        return any(t.state.name == "RUNNING" and "worker" in t.user_attrs and len(t.params) == 2 for t in st.trials)

    _wait_for(lambda: running() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    killed = [t for t in study.trials if t.state.name == "RUNNING"]
    assert len(killed) == 1
    proc = worker(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "re-queued" in err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    assert study.trials[killed[0].number].state.name == "FAIL"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(tmp_path, kind):
    """Two processes on one storage: every trial is recorded exactly once and the study stops at --trials."""
    cfg = tiny_config(tmp_path, steps=4)
    storage = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'shared.log'}"
    trials = 8  # ~0.5 s each: long enough that both workers overlap
    procs = [
        worker(["tune", str(cfg), "--storage", storage, "--study", "shared", "--trials", str(trials), "--pruner", "none",
                "--out", str(tmp_path / f"w{i}"), "--no-progress", "--metafeatures", "none"])
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=studylib.open_storage(storage, heartbeat=None))
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))) and trials <= len(numbers) <= trials + 1  # workers may race by one
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both processes did work
    run_dirs = sorted(p.name for w in ("w0", "w1") for p in (tmp_path / w / "trials").glob("trial-*"))
    assert run_dirs == [f"trial-{n:04d}" for n in numbers]  # each trial ran exactly once, in exactly one worker


# -- warm starts ----------------------------------------------------------------------------------


def quadratic_tasks(count: int = 8, configs: int = 60, seed: int = 0) -> PriorTasks:
    """Tasks whose optimum x* moves with a meta-feature m: score = -(x - x*)^2, x* = 0.2 + 0.6 m."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(count):
        m = i / (count - 1)
        xs = rng.uniform(0, 1, configs)
        flags = rng.choice(["a", "b"], configs)
        scores = -((xs - (0.2 + 0.6 * m)) ** 2) - 0.05 * (flags == "b")
        tasks.append(PriorTask(f"t{i}", [{"x": float(x), "flag": str(f)} for x, f in zip(xs, flags)], scores,
                               {"m": m, "noise": float(rng.normal())}))
    return PriorTasks(tasks, {"x": FloatDistribution(0, 1), "flag": CategoricalDistribution(["a", "b"])})


def test_knn_warm_start_picks_the_nearest_tasks_best():
    prior = quadratic_tasks()
    configs = prior.knn_configs({"m": 1.0, "noise": prior.tasks[-1].metafeatures["noise"]}, size=3, k=3)
    best_last = prior.tasks[-1].configs[prior.tasks[-1].ranked()[0]]
    assert configs[0] == best_last and len(configs) == 3
    assert all(c["x"] > 0.5 for c in configs)  # the nearest tasks have optima near 0.8


def test_greedy_portfolio_minimises_average_regret():
    regret = np.array([
        [0.0, 0.0, 1.0, 1.0],   # good on tasks 0, 1
        [0.4, 0.4, 0.4, 0.4],   # mediocre everywhere, the best single choice (mean 0.4 < 0.5)
        [1.0, 1.0, 0.0, 0.0],   # good on tasks 2, 3
    ])
    assert greedy_portfolio(regret, 1) == [1]
    assert greedy_portfolio(regret, 3)[:2] == [1, 0] and greedy_portfolio(regret, 3) == [1, 0, 2]
    assert greedy_portfolio(np.zeros((3, 2)), 3) == [0]  # stops once nothing helps


def test_portfolio_file_and_enqueue_with_any_objective(tmp_path):
    prior = quadratic_tasks()
    portfolio = prior.portfolio(size=3)
    assert 1 <= len(portfolio) <= 3 and all(c["flag"] == "a" for c in portfolio)
    save_portfolio(tmp_path / "p.yaml", portfolio, prior.space, {"tasks": len(prior.tasks)})
    configs, space = load_portfolio(tmp_path / "p.yaml")
    assert configs == portfolio and set(space) == {"x", "flag"}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    assert enqueue_configs(study, configs + [{"x": 7.0, "flag": "a"}], space=space) == len(configs) + 1
    assert enqueue_configs(study, configs, space=space) == 0  # already queued: no duplicates
    study.optimize(lambda t: -(t.suggest_float("x", 0, 1) - 0.5) ** 2 - 0.05 * (t.suggest_categorical("flag", ["a", "b"]) == "b"),
                   n_trials=len(configs) + 3)
    first = [t.params for t in study.trials[: len(configs) + 1]]
    assert first[: len(configs)] == configs and first[-1]["x"] == 1.0  # clipped into the space
    assert study.trials[0].user_attrs["warm_start"] == "warm-start"
    bad = tmp_path / "bad.yaml"
    bad.write_text("configs: 3\n")
    with pytest.raises(MetakitError, match="not a metakit portfolio"):
        load_portfolio(bad)


def test_transfer_surrogate_ranks_candidates():
    prior = quadratic_tasks()
    candidates = [{"x": x, "flag": "a"} for x in np.linspace(0, 1, 11)]
    near_one = prior.surrogate_configs(candidates, {"m": 1.0, "noise": 0.0}, size=1)
    near_zero = prior.surrogate_configs(candidates, {"m": 0.0, "noise": 0.0}, size=1)
    assert near_one[0]["x"] > near_zero[0]["x"]


def test_loto_warm_starts_beat_random_at_first_trials():
    prior = quadratic_tasks(count=6, configs=40)
    result = leave_one_task_out(prior, trials=5, seeds=(0,), warm_size=3, methods=("random", "knn+tpe", "portfolio+tpe"))
    assert len(result.tasks) == 6
    for curve in result.curves.values():
        assert (np.diff(curve, axis=2) <= 1e-12).all() and curve.min() >= 0 and curve.max() <= 1
    assert result.median_curve("knn+tpe")[0] < result.median_curve("random")[0]
    rows = {r["method"]: r for r in result.summary(at=(1, 5))}
    assert set(rows) == {"random", "knn+tpe", "portfolio+tpe"} and "median@5" in rows["random"]


def test_cli_warm_start_from_a_prior_study(tmp_path, capsys):
    prior_cfg = tiny_config(tmp_path)
    code, _, err = run_cli(capsys, ["tune", str(prior_cfg), "--out", str(tmp_path / "prior"), "--no-progress", "--pruner", "none"])
    assert code == 0, err
    prior = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'prior' / 'study.db'}")
    code, _, err = run_cli(capsys, ["tune", str(prior_cfg), "--study", "new", "--trials", "2", "--out", str(tmp_path / "new"),
                                    "--warm-start", str(tmp_path / "prior" / "study.db"), "--warm-start-size", "1",
                                    "--no-progress", "--pruner", "none"])
    assert code == 0, err
    new = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'study.db'}")
    assert new.trials[0].params == prior.best_params and new.trials[0].user_attrs["warm_start"] == "knn"
    assert "metafeatures" in new.user_attrs and "warm start" in err
    # The same prior as a portfolio file.
    prior_tasks = PriorTasks.from_storage(f"sqlite:///{tmp_path / 'prior' / 'study.db'}")
    save_portfolio(tmp_path / "p.yaml", prior_tasks.portfolio(size=2), prior_tasks.space)
    code, _, err = run_cli(capsys, ["tune", str(prior_cfg), "--study", "p", "--trials", "1", "--out", str(tmp_path / "p"),
                                    "--warm-start", str(tmp_path / "p.yaml"), "--no-progress", "--metafeatures", "none"])
    assert code == 0, err
    from_file = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'p' / 'study.db'}")
    assert from_file.trials[0].params == prior.best_params  # one prior task: its best comes first


# -- meta-features and the OpenML meta-dataset ------------------------------------------------------


def test_numpy_metafeatures_are_deterministic_and_informative():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (x[:, 0] > 0).astype(int)
    a, b = numpy_metafeatures(x, y, seed=1), numpy_metafeatures(x, y, seed=1)
    assert a == b and all(np.isfinite(v) for v in a.values())
    noise = numpy_metafeatures(x, rng.integers(0, 2, 300), seed=1)
    assert a["landmark_stump"] > 0.9 > 0.7 > noise["landmark_stump"]
    assert a["log_classes"] == pytest.approx(np.log(2))
    d = metafeature_distances(a, [a, noise])
    assert d[0] == pytest.approx(0) and d[1] > 0
    with pytest.raises(MetakitError, match="meta-feature backend"):
        metafeatures(x, y, backend="sklearn")


def test_pymfe_backend():
    pytest.importorskip("pymfe", reason="pymfe is in the hpo extra, not in dev; the numpy backend is the default")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    feats = metafeatures(x, (x[:, 0] > 0).astype(int), backend="pymfe")
    assert len(feats) > 10 and all(k.startswith("pymfe.") for k in feats)


def test_openml_meta_dataset(shared_data):
    from metakit.hpo.openml import load_openml_hpo

    root = shared_data / "hpo-openml100-random-search"
    rf, ada = load_openml_hpo("rf", root), load_openml_hpo("adaboost", root)
    assert len(rf.tasks) == 94 and {len(t.configs) for t in rf.tasks} == {500}
    assert len(ada.tasks) == 100 and {len(t.configs) for t in ada.tasks} == {400}
    assert ada.space["learning_rate"].log and set(rf.space) >= {"max_features", "min_samples_leaf", "bootstrap"}
    assert all(t.metafeatures for t in ada.tasks)
    with pytest.raises(MetakitError, match="not found"):
        load_openml_hpo("rf", root / "nowhere")


def test_shipped_tune_configs_are_valid():
    from metakit.hpo.space import load_tune_spec

    paths = sorted((TESTS.parent / "configs").glob("*-tune.yaml"))
    assert paths
    for path in paths:
        spec = load_tune_spec(path)
        # Every shipped space tunes the inner loop (what the MAML family is most sensitive to).
        assert {"learner.inner_lr", "learner.inner_steps"} <= {p.name for p in spec.params}, path
