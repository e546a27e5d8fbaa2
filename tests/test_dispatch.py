"""``metakit evaluate``, ``report`` and ``predict`` take any domain's run directory and dispatch on the domain it records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from metakit.cli import main
from metakit.runs import run_domain

REPO = Path(__file__).resolve().parents[1]
needs_gym = pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="gymnasium not installed")

#: The smallest classification run of tests/test_cli.py (the conftest's synthetic dataset).
TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
    "backbone": {"name": "conv4", "hidden": 8},
    "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
    "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 10, "val_episodes": 5},
    "train": {"steps": 4, "val_every": 2, "threads": 1},
}
#: Recsys on a little synthetic data with the two closed-form baselines (no network to fit).
RECSYS = ["data.synthetic.users=120", "data.synthetic.items=200", "data.synthetic.max_ratings=120",
          "methods=[global_mean, item_popularity]", "eval.scenarios=[warm]", "threads=1"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"] if args[0] != "report" else list(args))
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("classification")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", str(tmp / "tiny.yaml"), "--out", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run"


def test_classification_run_records_its_domain_and_dispatches(classification_run, tmp_path, capsys):
    assert json.loads((classification_run / "run.json").read_text()) == {"domain": "classification"}
    code, out, _ = run(capsys, "evaluate", str(classification_run), "--episodes", "6", "--json", str(tmp_path / "e.json"))
    assert code == 0 and "5-way 1-shot" in out and json.loads((tmp_path / "e.json").read_text())["learner"] == "protonet"
    (classification_run / "report.md").unlink()
    code, out, _ = run(capsys, "report", str(classification_run))
    report = (classification_run / "report.md").read_text()
    assert code == 0 and "# metakit run `tiny`" in report and "## Meta-training" in report and "## Evaluation" in report


def test_a_run_without_the_record_is_a_classification_run(classification_run, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.yaml", "training.json", "metrics.jsonl"):
        (old / name).write_bytes((classification_run / name).read_bytes())
    assert run_domain(old) == "classification" and not (old / "run.json").exists()
    code, _, _ = run(capsys, "report", str(old))
    assert code == 0 and "# metakit run `tiny`" in (old / "report.md").read_text()
    # Resuming such a run gives it the record.
    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "last.pt").write_bytes((classification_run / "checkpoints" / "last.pt").read_bytes())
    config = classification_run.parent / "tiny.yaml"
    code, _, err = run(capsys, "train", str(config), "train.steps=5", "--out", str(old), "--resume")
    assert code == 0, err
    assert json.loads((old / "run.json").read_text()) == {"domain": "classification"}


def test_recsys_run_dispatches_evaluate_and_report(tmp_path, capsys):
    out = tmp_path / "recsys"
    code, _, _ = run(capsys, "recsys", "train", str(REPO / "configs" / "recsys-melu-synthetic.yaml"), *RECSYS, "--out", str(out))
    assert code == 0 and run_domain(out) == "recsys"
    code, out_text, _ = run(capsys, "evaluate", str(out), "--json", str(tmp_path / "r.json"))
    scored = json.loads((tmp_path / "r.json").read_text())["results"]["warm"]
    assert code == 0 and set(scored) == {"global_mean", "item_popularity"}
    (out / "report.md").unlink()
    assert run(capsys, "report", str(out))[0] == 0
    assert "# metakit recsys run `recsys-melu-synthetic`" in (out / "report.md").read_text()
    code, _, err = run(capsys, "predict", str(out), "--support", str(tmp_path), "--query", str(tmp_path))
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "metakit predict does not support recsys runs" in err and "metakit evaluate, metakit report RUN_DIR" in err


#: The smallest meta-RL run of tests/test_rl.py, one iteration.
RL = {
    "name": "tiny", "env": "point2d", "seed": 3, "policy": {"hidden": [16]},
    "train": {"iterations": 1, "meta_batch": 3, "episodes_per_task": 4, "checkpoint_every": 1},
    "maml": {"outer_steps": 2}, "eval": {"tasks": 3, "adapt_steps": 1, "baselines": False},
}


@needs_gym
def test_rl_run_dispatches_evaluate_and_report(tmp_path, capsys):
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(RL))
    out = tmp_path / "rl"
    assert run(capsys, "rl", "train", str(tmp_path / "rl.yaml"), "--out", str(out))[0] == 0
    assert run_domain(out) == "rl"
    code, out_text, _ = run(capsys, "evaluate", str(out))
    assert code == 0 and "maml-rl return" in out_text
    assert "## Held-out tasks (3" in (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert run(capsys, "report", str(out))[0] == 0
    assert "# tiny: maml-rl on point2d" in (out / "report.md").read_text()


def test_a_domain_without_the_hook_says_which_commands_it_has(tmp_path, capsys):
    search = tmp_path / "search"
    search.mkdir()
    (search / "run.json").write_text(json.dumps({"domain": "nas"}))
    code, _, err = run(capsys, "report", str(search))
    assert code == 2 and err.count("error:") == 1
    assert f"{search} is a nas run, and metakit report does not support nas runs; metakit evaluate RUN_DIR" in err
    assert "see metakit nas --help" in err
    # evaluate reaches the nas domain's own command, whose check of the folder speaks.
    code, _, err = run(capsys, "evaluate", str(search))
    assert code == 2 and "is not a nas search run directory" in err


@pytest.mark.parametrize("record, message", [
    ("{not json", "does not name the run's domain"),
    ('{"domain": "chess"}', "is a 'chess' run, but no installed plugin is named 'chess'"),
])
def test_a_bad_record_is_one_line(tmp_path, capsys, record, message):
    (tmp_path / "run.json").write_text(record)
    for command in ("evaluate", "report"):
        code, _, err = run(capsys, command, str(tmp_path))
        assert code == 2 and message in err and "Traceback" not in err


def test_not_a_run_directory_is_one_line(tmp_path, capsys):
    for command in ("evaluate", "report"):
        code, _, err = run(capsys, command, str(tmp_path / "nothing"))
        assert code == 2 and "is not a metakit run directory (no config.yaml)" in err
