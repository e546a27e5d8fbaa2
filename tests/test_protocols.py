"""Evaluation protocols: calibration, compare, cross-domain, continual, reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from metakit.calibration import Calibration
from metakit.cli import main
from metakit.compare import compare, cross_domain, parse_dataset_spec
from metakit.continual import continual, continual_metrics
from metakit.errors import MetakitError
from metakit.reproduce import ROWS, config_path


def write_config(tmp_path, name: str, learner: dict, **extra) -> str:
    cfg = {
        "name": name,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": learner,
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 12, "val_episodes": 4},
        "train": {"steps": 4, "val_every": 2, "threads": 1},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_ece_and_nll_match_definitions():
    cal = Calibration(bins=2)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    cal.update(probs, labels)
    # bin [0.5,1): confidences .9 .8 .6 .7 (mean .75), correct 1,0,1,0 -> |0.5 - 0.75| * 4/4
    assert abs(cal.ece() - 0.25) < 1e-12
    expected_nll = -np.mean(np.log([0.9, 0.2, 0.6, 0.3]))
    assert abs(cal.nll() - expected_nll) < 1e-12
    perfect = Calibration()
    perfect.update(torch.tensor([[1.0, 0.0]] * 4), torch.zeros(4, dtype=torch.long))
    assert perfect.ece() == 0.0


def test_compare_same_episodes_table_and_plots(tmp_path):
    a = write_config(tmp_path, "proto", {"name": "protonet"})
    b = write_config(tmp_path, "maml", {"name": "maml", "inner_lr": 0.1})
    report = compare([a, b], tmp_path / "cmp", shots=[1, 2], episodes=10, progress=False)
    assert [r["name"] for r in report["runs"]] == ["proto", "maml"]
    for row in report["runs"]:
        assert [(r["ways"], r["shots"]) for r in row["results"]] == [(3, 1), (3, 2)]
        assert row["parameters"] > 0 and row["meta_training_seconds"] > 0
        assert row["results"][0]["calibration"]["ece"] >= 0
    for f in ("compare.json", "compare.md", "accuracy_vs_shots.png", "reliability.png"):
        assert (tmp_path / "cmp" / f).is_file()
    # Runs already trained are reused, and evaluation is deterministic.
    again = compare([str(tmp_path / "cmp" / "proto")], tmp_path / "cmp", shots=[1, 2], episodes=10, progress=False)
    assert again["runs"][0]["results"][0]["mean"] == report["runs"][0]["results"][0]["mean"]


def test_compare_refuses_different_datasets(tmp_path):
    a = write_config(tmp_path, "a", {"name": "protonet"})
    b = write_config(tmp_path, "b", {"name": "protonet"}, dataset={"name": "synthetic", "split": "class"})
    with pytest.raises(MetakitError, match="needs the same dataset and split"):
        compare([a, b], tmp_path / "cmp", shots=[1], episodes=4, progress=False)
    with pytest.raises(MetakitError, match="neither a run directory nor a config"):
        compare([str(tmp_path / "nope")], tmp_path / "cmp", progress=False)


def test_compare_trained_runs_of_other_shapes_and_lengths_at_chosen_ways(tmp_path):
    # A 5-way ProtoNet trained 3 steps beside a 4-way MAML trained 4 steps, both scored 4-way.
    proto = write_config(tmp_path, "proto", {"name": "protonet"}, episodes={"ways": 5, "shots": 1, "queries": 2, "meta_batch": 1},
                         train={"steps": 3, "val_every": 3, "threads": 1})
    maml = write_config(tmp_path, "maml", {"name": "maml", "inner_lr": 0.1}, episodes={"ways": 4, "shots": 1, "queries": 2, "meta_batch": 2},
                        eval={"ways": [4], "shots": [1], "queries": 2, "episodes": 6, "val_episodes": 2})
    for cfg, run in ((proto, "p"), (maml, "m")):
        main(["train", cfg, "--out", str(tmp_path / run), "--no-progress"])
    runs = [str(tmp_path / "p"), str(tmp_path / "m")]
    code = main(["compare", *runs, "--ways", "4", "--shots", "1", "--episodes", "6", "--out", str(tmp_path / "cmp"),
                 "--json", str(tmp_path / "cmp.json"), "--no-progress"])
    report = json.loads((tmp_path / "cmp.json").read_text())
    assert code == 0 and report["ways"] == [4]
    assert [(r["train_steps"], r["meta_batch"], r["train_episodes"]) for r in report["runs"]] == [(3, 1, "5w1s2q"), (4, 2, "4w1s2q")]
    assert all(r["results"][0]["ways"] == 4 for r in report["runs"])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| 3 x 1 (5w1s2q) |" in table and "| 4 x 2 (4w1s2q) |" in table
    # A setting a run cannot do is one clear error: the 4-way MAML head has no fifth output.
    with pytest.raises(MetakitError, match="5-way episodes but the head has 4 outputs"):
        compare(runs, tmp_path / "cmp5", shots=[1], episodes=2, ways=[5], progress=False)


def test_cross_domain_matrix(tmp_path):
    a = write_config(tmp_path, "proto", {"name": "protonet"})
    main(["train", a, "--out", str(tmp_path / "r"), "--no-progress"])
    report = cross_domain([str(tmp_path / "r")], ["synthetic", "synthetic:noise=0.4"], tmp_path / "x", episodes=8, progress=False)
    cells = report["rows"][0]["cells"]
    assert [c["dataset"] for c in cells] == ["synthetic", "synthetic"] and cells[0]["mean"] != cells[1]["mean"]
    assert (tmp_path / "x" / "cross_domain.md").is_file()
    assert parse_dataset_spec("omniglot:root=/x.zip,image_size=28") == {"name": "omniglot", "root": "/x.zip", "image_size": 28}
    assert parse_dataset_spec("omniglot:fractions=[0.5,0.25,0.25],split=group")["fractions"] == [0.5, 0.25, 0.25]
    with pytest.raises(MetakitError, match="images .* but the learner was trained on"):
        cross_domain([str(tmp_path / "r")], ["synthetic:size=16"], tmp_path / "y", episodes=2, progress=False)


def test_continual_metrics_definitions():
    R = np.array([[0.9, 0.2, 0.3], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]])
    m = continual_metrics(R)
    assert abs(m["acc"] - np.mean([0.4, 0.6, 0.7])) < 1e-12
    assert abs(m["bwt"] - np.mean([0.4 - 0.9, 0.6 - 0.8])) < 1e-12
    assert abs(m["forgetting"] - np.mean([0.9 - 0.4, 0.8 - 0.6])) < 1e-12


@pytest.mark.parametrize("learner", [{"name": "maml", "inner_lr": 0.1}, {"name": "finetune", "head_steps": 5}])
def test_continual_runs_for_learners_that_carry_weights(tmp_path, learner):
    path = write_config(tmp_path, "c", learner)
    main(["train", path, "--out", str(tmp_path / "r"), "--no-progress"])
    report = continual(tmp_path / "r", tasks=3, sequences=2, progress=False)
    R = np.array(report["mean_R"])
    assert R.shape == (3, 3) and ((0 <= R) & (R <= 1)).all()
    assert set(report["summary"]) == {"acc", "bwt", "forgetting"}
    assert (tmp_path / "r" / "continual" / "accuracy_matrix.png").is_file()


def test_continual_refuses_protonet(tmp_path):
    path = write_config(tmp_path, "p", {"name": "protonet"})
    main(["train", path, "--out", str(tmp_path / "r"), "--no-progress"])
    with pytest.raises(MetakitError, match="does not apply to ProtoNet"):
        continual(tmp_path / "r", tasks=2, sequences=1, progress=False)


def test_reproduce_rows_are_valid():
    from metakit.config import load_config

    assert {"omniglot-protonet-20w1s", "omniglot-maml-5w1s", "omniglot-matching-20w5s", "omniglot-relation-5w5s",
            "sinusoid-maml-k5"} <= set(ROWS)
    for row in ROWS.values():
        config = load_config(config_path(row), row.train_overrides())
        assert config.eval.ways == [row.ways] and config.eval.shots == [row.shots]
        if row.config.startswith("omniglot-vinyals"):
            assert config.dataset.split == "vinyals" and config.dataset.rotations


def test_reproduce_cli(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "omniglot-protonet-20w1s" in capsys.readouterr().out
    assert main(["reproduce", "omniglot-protonet-21w1s"]) == 2
    assert "unknown reproduction" in capsys.readouterr().err
    code = main(["reproduce", "sinusoid-maml-k5", "train.val_every=3", "eval.val_episodes=3", "--steps", "3",
                 "--episodes", "5", "--out", str(tmp_path / "r"), "--no-progress", "--json", str(tmp_path / "r.json")])
    assert code == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["published"] == 1.13 and data["results"][0]["metric"] == "mse"
