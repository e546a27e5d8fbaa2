"""Meta-RL: task protocol, advantage estimation, training smoke runs, resume, evaluation and bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from metakit.errors import MetakitError

HAS_GYM = importlib.util.find_spec("gymnasium") is not None
HAS_MUJOCO = HAS_GYM and importlib.util.find_spec("mujoco") is not None
HAS_METAWORLD = HAS_MUJOCO and importlib.util.find_spec("metaworld") is not None
needs_gym = pytest.mark.skipif(not HAS_GYM, reason="gymnasium not installed (pip install 'metakit[rl]')")
needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="mujoco not installed (pip install 'metakit[rl]')")
needs_metaworld = pytest.mark.skipif(not HAS_METAWORLD, reason="metaworld not installed (pip install 'metakit[rl]')")


# -- advantages: pure torch, no extra needed --------------------------------------------------------


def test_gae_matches_hand_computation() -> None:
    from metakit.rl.advantages import discounted_returns, gae

    # One column of 3 steps, one padded column that ends after 2 steps.
    rewards = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [0.2, 0.3], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    g, lam = 0.9, 0.8
    # Column 0 by hand: deltas then A_t = d_t + g*lam*A_{t+1}, value after the end = 0.
    d2 = 2.0 - 1.0
    d1 = 0.0 + g * 1.0 - 0.2
    d0 = 1.0 + g * 0.2 - 0.5
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    # Column 1 ends at t=1.
    e1 = 1.0 - 0.3
    e0 = 2.0 + g * 0.3 - 1.0
    expected = torch.tensor([[a0, e0 + g * lam * e1], [a1, e1], [a2, 0.0]])
    assert torch.allclose(gae(rewards, values, mask, g, lam), expected, atol=1e-6)
    returns = discounted_returns(rewards, mask, g)
    assert torch.allclose(returns[:, 0], torch.tensor([1 + g * 0 + g * g * 2, 0 + g * 2, 2.0]))
    assert torch.allclose(returns[:, 1], torch.tensor([2 + g * 1.0, 1.0, 0.0]))


def test_gae_chains_across_padding_inside_a_column() -> None:
    """An RL² trial: episode 1 (padded after its end) then episode 2; the value chain crosses the padding."""
    from metakit.rl.advantages import gae

    rewards = torch.tensor([[1.0], [0.0], [3.0]])
    values = torch.tensor([[0.0], [9.0], [0.5]])
    mask = torch.tensor([[1.0], [0.0], [1.0]])
    adv = gae(rewards, values, mask, 1.0, 1.0)
    # A_2 = 3 - 0.5; A_0 = 1 + V(s_2) - 0 + A_2 (step 1 is padding: skipped, its value 9 unused).
    assert torch.allclose(adv[:, 0], torch.tensor([1 + 0.5 + 2.5, 0.0, 2.5]))


def test_linear_baseline_fits_a_linear_target() -> None:
    from metakit.rl.advantages import LinearFeatureBaseline

    torch.manual_seed(0)
    obs = torch.randn(20, 8, 3)
    mask = torch.ones(20, 8)
    target = 2.0 * obs[..., 0] - obs[..., 2] ** 2 + 0.5
    baseline = LinearFeatureBaseline()
    baseline.fit(obs, target, mask)
    assert torch.allclose(baseline.predict(obs), target, atol=1e-3)


def test_missing_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from metakit.cli import main
    from metakit.rl import tasks

    real = importlib.util.find_spec
    monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name, *a: None if name == "gymnasium" else real(name, *a))
    with pytest.raises(MetakitError, match=r"pip install 'metakit\[rl\]'") as info:
        tasks.make_env("point2d")
    assert "\n" not in str(info.value)
    assert main(["rl", "train", "configs/rl-point2d-mamlrl.yaml", "--out", "/nonexistent/x"]) == 2


def test_config_validation() -> None:
    from metakit.rl.config import rl_config_from_dict

    with pytest.raises(MetakitError, match="Did you mean iterations"):
        rl_config_from_dict({"train": {"iteratons": 3}})
    with pytest.raises(MetakitError, match="unknown algorithm"):
        rl_config_from_dict({"algorithm": "ppo"})
    config = rl_config_from_dict({"env": {"name": "ml1", "task": "push-v3"}})
    assert config.env.options == {"task": "push-v3"}
    assert rl_config_from_dict(config.to_dict()) == config


# -- task protocol ---------------------------------------------------------------------------------


@needs_gym
def test_point2d_tasks_are_seeded_and_change_the_reward() -> None:
    from metakit.rl.tasks import TaskEnv, make_env, task_env

    env = make_env("point2d")
    inner = task_env(env)
    assert isinstance(inner, TaskEnv)
    a = inner.sample_tasks(5, np.random.default_rng(3))
    b = inner.sample_tasks(5, np.random.default_rng(3))
    assert a == b and a != inner.sample_tasks(5, np.random.default_rng(4))
    assert all(-0.5 <= v <= 0.5 for t in a for v in t["goal"])
    rewards = []
    for goal in ([0.1, 0.0], [-0.4, 0.4]):
        inner.set_task({"goal": goal})
        env.reset(seed=0)
        _, r, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
        rewards.append(r)
    assert rewards[0] == pytest.approx(0.0, abs=1e-6)
    assert rewards[1] == pytest.approx(-np.hypot(0.5, 0.4), abs=1e-6)
    # The horizon of the MAML paper.
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        *_, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        if terminated or truncated:
            break
    assert steps == 100


@needs_gym
def test_cartpole_tasks_change_the_dynamics() -> None:
    from metakit.rl.tasks import make_env, task_env

    env = make_env("cartpole")
    inner = task_env(env)
    finals = []
    for task in ({"length": 0.25, "masspole": 0.05}, {"length": 1.0, "masspole": 0.5}):
        inner.set_task(task)
        obs, _ = env.reset(seed=0)
        for _ in range(5):
            obs, *_ = env.step(1)
        finals.append(obs)
    assert not np.allclose(finals[0], finals[1])


@needs_mujoco
def test_cheetah_vel_reward_depends_on_the_target() -> None:
    from metakit.rl.tasks import make_env, task_env

    env = make_env("cheetah-vel")
    inner = task_env(env)
    tasks = inner.sample_tasks(4, np.random.default_rng(0))
    assert all(0 <= t["velocity"] <= 2 for t in tasks)
    rewards = []
    for v in (0.0, 2.0):
        inner.set_task({"velocity": v})
        env.reset(seed=1)
        _, r, *_ = env.step(np.zeros(6, dtype=np.float32))
        rewards.append(r)
    assert rewards[0] > rewards[1] + 1.5  # the cheetah barely moves: close to target 0, far from 2


@needs_metaworld
def test_metaworld_ml1_task_protocol() -> None:
    from metakit.rl.tasks import make_env, task_env

    env = make_env("ml1", options={"task": "reach-v3"})
    inner = task_env(env)
    train = inner.sample_tasks(3, np.random.default_rng(0), "train")
    test = inner.sample_tasks(3, np.random.default_rng(0), "test")
    assert {t["split"] for t in train} == {"train"} and {t["split"] for t in test} == {"test"}
    inner.set_task(test[0])
    obs, _ = env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert obs.shape == (39,) and "success" in info
    with pytest.raises(MetakitError, match="unknown Meta-World ML1 task"):
        make_env("ml1", options={"task": "reachh-v3"})


@needs_gym
def test_bad_env_names_and_options() -> None:
    from metakit.rl.tasks import make_env

    with pytest.raises(MetakitError, match="Did you mean 'point2d'"):
        make_env("pointt2d")
    with pytest.raises(MetakitError, match="no task protocol"):
        make_env("CartPole-v1")
    with pytest.raises(MetakitError, match="bad env options"):
        make_env("point2d", options={"radius": 2})


# -- training, resume, evaluation ------------------------------------------------------------------

SMALL = {
    "name": "tiny", "env": "point2d", "seed": 3,
    "policy": {"hidden": [16]},
    "train": {"iterations": 3, "meta_batch": 3, "episodes_per_task": 4, "checkpoint_every": 1},
    "maml": {"outer_steps": 2}, "rl2": {"epochs": 1, "minibatches": 1, "episodes_per_trial": 2},
    "eval": {"tasks": 4, "adapt_steps": 1},
}


def _small(**changes: dict) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SMALL.items()}
    for section, values in changes.items():
        old = data.get(section)
        data[section] = {**old, **values} if isinstance(values, dict) and isinstance(old, dict) else values
    return data


@needs_gym
def test_maml_rl_smoke_resume_and_evaluation(tmp_path) -> None:
    from metakit.rl.config import rl_config_from_dict
    from metakit.rl.evaluation import evaluate_rl_run
    from metakit.rl.training import train_rl

    config = rl_config_from_dict(_small())
    train_rl(config, tmp_path / "full", progress=False)
    # Stop after 2 iterations, then resume to 3: the same weights and log as the uninterrupted run.
    short = rl_config_from_dict(_small(train={"iterations": 2, "pretrained_iterations": 2}))
    train_rl(short, tmp_path / "resumed", progress=False)
    with pytest.raises(MetakitError, match="--resume"):
        train_rl(config, tmp_path / "resumed", progress=False)
    train_rl(config, tmp_path / "resumed", resume=True, progress=False)
    for phase in ("meta", "pretrained"):
        a = torch.load(tmp_path / "full" / "checkpoints" / f"{phase}.pt", weights_only=False)["algorithm"]["policy"]
        b = torch.load(tmp_path / "resumed" / "checkpoints" / f"{phase}.pt", weights_only=False)["algorithm"]["policy"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    log = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda rows: sorted(  # noqa: E731
        ([{k: v for k, v in r.items() if k != "seconds"} for r in rows]), key=lambda r: (r["phase"], r["iteration"]))
    assert strip(log("full")) == strip(log("resumed"))
    report = evaluate_rl_run(tmp_path / "full", progress=False)
    assert set(report["policies"]) == {"maml-rl", "pretrained", "scratch"}
    assert len(report["policies"]["maml-rl"]["returns"]) == 2  # before and after one step
    for name in ("report.md", "evaluation.json", "learning_curve.png", "adaptation_curve.png", "training.json"):
        assert (tmp_path / "full" / name).is_file()


@needs_gym
def test_rl2_smoke_on_cartpole(tmp_path) -> None:
    from metakit.rl.config import rl_config_from_dict
    from metakit.rl.evaluation import evaluate_rl_run
    from metakit.rl.training import train_rl

    config = rl_config_from_dict(_small(algorithm="rl2", env={"name": "cartpole", "horizon": 30},
                                        train={"iterations": 2, "meta_batch": 2}))
    summary = train_rl(config, tmp_path / "rl2", progress=False)
    assert set(summary["phases"]) == {"meta"} and summary["phases"]["meta"]["env_steps"] > 0
    report = evaluate_rl_run(tmp_path / "rl2", progress=False)
    assert set(report["policies"]) == {"rl2", "scratch"}
    assert len(report["policies"]["rl2"]["returns"]) == 2  # episodes 1 and 2 of a trial


@needs_gym
def test_cli_rl_train_and_evaluate(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from metakit.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small(train={"iterations": 1}, eval={"tasks": 3, "adapt_steps": 1, "baselines": False})))
    out = tmp_path / "run"
    assert main(["rl", "train", str(cfg), "--out", str(out), "--no-progress", "--evaluate", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["tasks"] == 3
    assert main(["rl", "evaluate", str(out), "--no-progress", "--tasks", "2"]) == 0
    assert "maml-rl return" in capsys.readouterr().out
    assert main(["rl", "train", str(cfg), "env.name=CartPole-v1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "no task protocol" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["rl", "evaluate", str(tmp_path / "nothing"), "--no-progress"]) == 2


@needs_mujoco
def test_mujoco_smoke_runs_for_both_algorithms(tmp_path) -> None:
    """A couple of iterations of MAML-RL and RL² on HalfCheetah-Vel (short horizon) run and evaluate."""
    from metakit.rl.config import rl_config_from_dict
    from metakit.rl.evaluation import evaluate_rl_run
    from metakit.rl.training import train_rl

    for algorithm in ("maml-rl", "rl2"):
        config = rl_config_from_dict(_small(algorithm=algorithm, env={"name": "cheetah-vel", "horizon": 10},
                                            train={"iterations": 2, "meta_batch": 2, "episodes_per_task": 2},
                                            eval={"tasks": 2, "adapt_steps": 1, "baselines": False}))
        summary = train_rl(config, tmp_path / algorithm, progress=False)
        # iterations x tasks x (episodes per task, or per trial) x horizon, x2 for MAML's pre/post episodes
        per_iteration = 2 * 2 * 10 * (2 if algorithm == "maml-rl" else 1)
        assert summary["phases"]["meta"]["env_steps"] == 2 * per_iteration
        report = evaluate_rl_run(tmp_path / algorithm, progress=False)
        assert all(np.isfinite(s["mean"]) for s in report["policies"][algorithm]["returns"])


def test_every_rl_config_is_valid() -> None:
    from pathlib import Path

    from metakit.rl.config import load_rl_config

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("rl-*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        assert load_rl_config(path).name == path.stem


@needs_gym
def test_pearl_smoke_resume_and_evaluation(tmp_path) -> None:
    from metakit.rl.config import rl_config_from_dict
    from metakit.rl.evaluation import evaluate_rl_run
    from metakit.rl.training import train_rl

    pearl = {"train_tasks": 5, "updates": 3, "batch_size": 16, "context_size": 8, "hidden": 16}
    config = rl_config_from_dict(_small(algorithm="pearl", env={"name": "point2d", "horizon": 12}, pearl=pearl,
                                        train={"iterations": 3, "meta_batch": 2}))
    train_rl(config, tmp_path / "full", progress=False)
    train_rl(rl_config_from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "iterations": 2}}),
             tmp_path / "resumed", progress=False)
    train_rl(config, tmp_path / "resumed", resume=True, progress=False)
    a, b = (torch.load(tmp_path / d / "checkpoints" / "meta.pt", weights_only=False)["algorithm"]["policy"]
            for d in ("full", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    report = evaluate_rl_run(tmp_path / "full", progress=False)
    assert set(report["policies"]) == {"pearl", "scratch"} and len(report["policies"]["pearl"]["returns"]) == 2
    with pytest.raises(MetakitError, match="continuous"):
        train_rl(rl_config_from_dict(_small(algorithm="pearl", env="cartpole")), tmp_path / "cartpole", progress=False)


def test_rl2_replay_matches_the_rollout_log_probs() -> None:
    """PPO's replay recomputes exactly the log-probabilities and values recorded while acting."""
    from metakit.rl.policies import RecurrentPolicy
    from metakit.rl.rl2 import replay

    for discrete in (False, True):
        torch.manual_seed(0)
        policy = RecurrentPolicy(4, 3, discrete, hidden=16)
        inputs = torch.randn(12, 5, policy.input_size)
        mask = torch.ones(12, 5)
        mask[8:, 1] = 0  # an episode that ended early: its hidden state must freeze
        h, logps, values, actions = policy.initial_state(5), [], [], []
        for t in range(12):
            params, value, h_next = policy.step(inputs[t], h)
            h = torch.where(mask[t, :, None] > 0, h_next, h)
            action = policy.sample(params, torch.Generator().manual_seed(t))
            actions.append(action)
            logps.append(policy.distribution(params).log_prob(action))
            values.append(value)
        logp, value, entropy = replay(policy, inputs, mask, torch.stack(actions))
        assert torch.equal(logp, torch.stack(logps)) and torch.equal(value, torch.stack(values))
        assert entropy.shape == (12, 5) and torch.isfinite(entropy).all()


@needs_gym
def test_meta_rl_benchmark_script_runs_one_row(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util as iu
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "meta_rl.py"
    spec = iu.spec_from_file_location("meta_rl_bench", path)
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small = ["train.iterations=1", "train.meta_batch=2", "env.horizon=10", "pearl.train_tasks=4", "pearl.updates=2",
             "pearl.batch_size=8", "pearl.context_size=4", "pearl.hidden=16"]
    args = ["--only", "point2d-pearl", "--out", str(tmp_path), "--tasks", "2", "--no-progress", "--json", str(tmp_path / "r.json")]
    assert bench.main(args + [f"--set={s}" for s in small]) == 0
    out = capsys.readouterr().out
    assert "point2d-pearl" in out and "scratch" in out
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["evaluation"]["tasks"] == 2 and (tmp_path / "point2d-pearl" / "report.md").is_file()
    # A finished row is resumed (nothing retrained) and re-evaluated; a bad override is one line, exit 2.
    assert bench.main(args + [f"--set={s}" for s in small]) == 0
    assert bench.main(["--only", "point2d-pearl", "--out", str(tmp_path / "x"), "--set", "train.nope=1", "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err
