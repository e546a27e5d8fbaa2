"""The command line: commands work end to end; bad input gives one line, exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metakit.cli import QUICKSTART, main

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, **sections: dict) -> Path:
    cfg = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
        "eval": {"ways": [5], "shots": [1, 2], "queries": 3, "episodes": 30, "val_episodes": 10},
        "train": {"steps": 10, "val_every": 5, "threads": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_evaluate_with_json(tmp_path, capsys):
    code, out, _ = run_main(capsys, ["train", str(tiny(tmp_path)), "train.steps=6", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 0 and "trained 6 steps" in out
    code, out, _ = run_main(capsys, ["evaluate", str(tmp_path / "r"), "--episodes", "40", "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert code == 0 and "5-way 1-shot" in out and "5-way 2-shot" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert [r["episodes"] for r in data["results"]] == [40, 40]
    assert data["meta_training_seconds"] > 0 and data["learner"] == "protonet"
    assert "## Evaluation" in (tmp_path / "r" / "report.md").read_text()
    # Evaluation is reproducible: same run, same episodes, same numbers.
    run_main(capsys, ["evaluate", str(tmp_path / "r"), "--episodes", "40", "--json", str(tmp_path / "f.json"), "--no-progress"])
    again = json.loads((tmp_path / "f.json").read_text())
    assert [r["mean"] for r in again["results"]] == [r["mean"] for r in data["results"]]


def test_train_with_evaluate_flag(tmp_path, capsys):
    code, out, _ = run_main(capsys, ["train", str(tiny(tmp_path)), "--out", str(tmp_path / "r"), "--evaluate", "--no-progress"])
    assert code == 0 and "accuracy" in out and (tmp_path / "r" / "evaluation.json").is_file()


def test_datasets_lists_every_dataset(tmp_path, capsys):
    code, out, _ = run_main(capsys, ["datasets", "--json", str(tmp_path / "d.json")])
    names = [row["name"] for row in json.loads((tmp_path / "d.json").read_text())]
    assert code == 0 and {"glyphs", "omniglot", "sinusoid"} <= set(names)
    assert all(row["license"] and row["source"] for row in json.loads((tmp_path / "d.json").read_text()))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["dataset.name=imagenet"], "unknown dataset 'imagenet'"),
        (["learner.name=maml_plus"], "unknown learner 'maml_plus'"),
        (["episodes.ways=50"], "impossible episode spec: 50-way"),
        (["episodes.shots=10"], "impossible episode spec: shots + queries"),
        (["train.stepz=3"], "unknown config key train.stepz. Did you mean steps"),
        (["train.optimizer=adagrad"], "unknown train.optimizer 'adagrad'"),
        (["train.lr=-1"], "train.lr must be > 0"),
        (["train.steps"], "must look like key=value"),
        (["learner.name=maml", "learner.inner_lr=0"], "inner_lr must be > 0"),
        (["learner.name=maml", "learner.inner_steps=-1"], "inner_steps must be an integer >= 0"),
        (["learner.name=maml", "learner.adapt=[classifier]"], "no parameter named 'classifier'"),
        (["learner.first_order=true"], "unknown option 'first_order' for learner 'protonet'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, overrides, needle):
    code, out, err = run_main(capsys, ["train", str(tiny(tmp_path)), *overrides, "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert needle in " ".join(err.split())
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_or_broken_run_dirs(tmp_path, capsys):
    code, _, err = run_main(capsys, ["evaluate", str(tmp_path / "nope")])
    assert code == 2 and "not a metakit run directory" in err
    run_main(capsys, ["train", str(tiny(tmp_path)), "train.steps=2", "train.val_every=1", "--out", str(tmp_path / "r"), "--no-progress"])
    (tmp_path / "r" / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_main(capsys, ["evaluate", str(tmp_path / "r")])
    assert code == 2 and "corrupt" in err and "Traceback" not in err


def test_missing_dataset_file_is_one_line(tmp_path, capsys):
    path = tiny(tmp_path, dataset={"name": "omniglot", "root": str(tmp_path / "nowhere.zip"), "download": False})
    code, _, err = run_main(capsys, ["train", str(path), "--out", str(tmp_path / "r")])
    assert code == 2 and "nowhere.zip" in " ".join(err.split()) and "Traceback" not in err


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [\n")
    code, _, err = run_main(capsys, ["train", str(bad)])
    assert code == 2 and "malformed YAML" in err


def test_quickstart_config_file_matches_the_builtin():
    assert yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text()) == QUICKSTART


def test_every_config_in_configs_is_valid():
    from metakit.config import load_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith("rl-"):
            continue  # meta-RL configs have their own schema, validated in tests/test_rl.py
        if path.name.startswith("nas-"):
            from metakit.nas.search import load_nas_spec

            load_nas_spec(path)
            continue
        if path.name.startswith("recsys-"):
            from metakit.recsys.config import load_recsys_config

            load_recsys_config(path)
            continue
        if path.name.endswith("-tune.yaml"):
            continue  # `metakit tune` configs (run config + tune: section), validated in tests/test_hpo.py
        load_config(path)


def test_help_on_every_command():
    for cmd in ([], ["quickstart"], ["train"], ["evaluate"], ["datasets"]):
        proc = subprocess.run([sys.executable, "-m", "metakit", *cmd, "--help"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
        assert proc.returncode == 0 and "usage: metakit" in proc.stdout


def test_unknown_command_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "metakit", "trian"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.parametrize(("config", "command"), [("seg-glyphs-panet.yaml", "metakit segment train"),
                                                 ("rl-point2d-mamlrl.yaml", "metakit rl train"),
                                                 ("recsys-ml100k.yaml", "metakit recsys train")])
def test_train_names_the_command_for_another_domains_config(tmp_path, capsys, config, command):
    path = str(Path(__file__).resolve().parents[1] / "configs" / config)
    assert main(["train", path, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"`{command} {path}`" in err
    assert not (tmp_path / "run").exists()
