"""Architecture search (metakit.nas): relaxation vs discretisation, genotype JSON, the CLI end to end, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from metakit.backbones import build_backbone, count_parameters
from metakit.cli import main
from metakit.config import config_from_dict
from metakit.episodes import sample_batch
from metakit.errors import MetakitError
from metakit.experiment import build_experiment
from metakit.nas import DEFAULT_OPS, Genotype, MixedOp, SearchSpace, derive, discretize, random_genotype
from metakit.nas.network import one_hot_weights
from metakit.nas.space import edge_index, num_edges


@pytest.fixture(autouse=True)
def _one_thread():
    """The cell networks are hundreds of tiny operations: with a second OpenMP thread on a busy
    machine each one can wait for a descheduled thread (a 0.1 ms convolution took 50 ms), so one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_supernet(**options):
    opts = {"channels": 4, "cells": 2, "nodes": 2, "reductions": [1], **options}
    return build_backbone("supernet", (1, 12, 12), **opts)


def test_mixed_op_reduces_to_the_chosen_op():
    torch.manual_seed(0)
    mixed = MixedOp(DEFAULT_OPS, channels=4, stride=1)
    x = torch.randn(6, 4, 8, 8)
    alpha = torch.randn(len(DEFAULT_OPS))
    alpha[DEFAULT_OPS.index("none")] = 10.0  # 'none' is strongest but never chosen
    chosen = mixed.discretize(torch.softmax(alpha, 0), k=1)
    best = max((i for i, o in enumerate(DEFAULT_OPS) if o != "none"), key=lambda i: alpha[i].item())
    assert chosen is mixed.ops[best]
    onehot = torch.zeros(len(DEFAULT_OPS))
    onehot[best] = 1.0
    assert torch.equal(mixed(x, onehot), chosen(x))
    # Top-2 on the edge: the sum of the two strongest operations.
    two = mixed.discretize(torch.softmax(alpha, 0), k=2)
    top = sorted((i for i, o in enumerate(DEFAULT_OPS) if o != "none"), key=lambda i: -alpha[i].item())[:2]
    weights = torch.zeros(len(DEFAULT_OPS))
    weights[top] = 1.0
    torch.testing.assert_close(mixed(x, weights), two(x), rtol=0, atol=1e-6)


def test_supernet_reduces_to_the_derived_network():
    torch.manual_seed(1)
    net = tiny_supernet(nodes=3)
    with torch.no_grad():
        net.alpha_normal.normal_()
        net.alpha_reduce.normal_()
    genotype = discretize({k: v.detach() for k, v in net.edge_weights().items()}, net.space)
    derived = derive(net, genotype)
    assert count_parameters(derived) < count_parameters(net)
    x = torch.randn(5, 1, 12, 12)
    # Mixing weights one on the kept operations: exactly the discrete network.
    torch.testing.assert_close(net.forward_with_weights(x, one_hot_weights(genotype)), derived(x), rtol=0, atol=1e-6)
    # The continuous relaxation itself tends to it as the architecture weights sharpen.
    with torch.no_grad():
        for label, alpha in (("normal", net.alpha_normal), ("reduce", net.alpha_reduce)):
            alpha.fill_(0.0)
            alpha[:, DEFAULT_OPS.index("none")] = 40.0  # dropped edges: 'none'
            for w_row, row in zip(one_hot_weights(genotype)[label], alpha):
                if w_row.any():
                    row.copy_(40.0 * w_row)
    assert discretize({k: v.detach() for k, v in net.edge_weights().items()}, net.space) == genotype
    torch.testing.assert_close(net(x), derived(x), rtol=1e-4, atol=1e-4)


def test_discretisation_keeps_top_edges_and_ops():
    space = SearchSpace.create(nodes=2, cells=1, channels=4, reductions=[])
    ops = space.ops
    w = torch.full((num_edges(2), len(ops)), 0.01)
    w[edge_index(0, 1), ops.index("sep_conv_5x5")] = 0.9
    w[edge_index(0, 0), ops.index("none")] = 0.99  # strongest weight, but 'none' never counts
    w[edge_index(0, 0), ops.index("max_pool_3x3")] = 0.2
    w[edge_index(1, 2), ops.index("skip_connect")] = 0.8
    w[edge_index(1, 0), ops.index("avg_pool_3x3")] = 0.5
    w[edge_index(1, 1), ops.index("dil_conv_3x3")] = 0.3
    g = discretize({"normal": w}, space, edges_per_node=2, ops_per_edge=1)
    assert g.normal == ((("max_pool_3x3", 0), ("sep_conv_5x5", 1)), (("avg_pool_3x3", 0), ("skip_connect", 2)))
    assert g.reduce == ()
    one = discretize({"normal": w}, space, edges_per_node=1, ops_per_edge=2)
    # Node 0 keeps its strongest edge (from c_k-1) with its two strongest ops (ties: the earlier op).
    assert one.normal[0] == (("sep_conv_3x3", 1), ("sep_conv_5x5", 1))
    assert {s for _, s in one.normal[1]} == {2}


def test_genotype_round_trips_through_json(tmp_path):
    space = SearchSpace.create(nodes=3, cells=3, channels=8, reductions=[0, 2])
    g = random_genotype(space, random.Random(3), edges_per_node=2, ops_per_edge=2)
    assert Genotype.from_json(g.to_json()) == g
    g.save(tmp_path / "genotype.json")
    again = Genotype.load(tmp_path / "genotype.json")
    assert again == g and again.to_dict() == json.loads((tmp_path / "genotype.json").read_text())
    from_file = build_backbone("nas", (1, 12, 12), genotype=str(tmp_path / "genotype.json"))
    from_dict = build_backbone("nas", (1, 12, 12), genotype=g.to_dict())
    assert count_parameters(from_file) == count_parameters(from_dict) > 0
    assert from_file.space == space
    wider = build_backbone("nas", (1, 12, 12), genotype=g.to_dict(), channels=16)
    assert count_parameters(wider) > count_parameters(from_dict)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: SearchSpace.create(ops=[]), "operation set (ops) is empty"),
        (lambda: SearchSpace.create(ops=["sep_conv_3x3", "conv_7x7"]), "unknown operation 'conv_7x7'"),
        (lambda: SearchSpace.create(ops=["none"]), "only 'none'"),
        (lambda: SearchSpace.create(cells=5), "cells <= 4"),
        (lambda: SearchSpace.create(channels=64), "channels <= 32"),
        (lambda: Genotype.from_dict({"ops": ["sep_conv_3x3"], "normal": [[["conv_9x9", 0]]]}), "unknown operation 'conv_9x9'"),
        (lambda: Genotype.from_dict({"ops": ["sep_conv_3x3"], "normal": [[["sep_conv_3x3", 5]]]}), "input 5"),
        (lambda: build_backbone("nas", (1, 12, 12)), "needs genotype"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(MetakitError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reptile_meta_learns_the_architecture_weights():
    cfg = config_from_dict({
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "supernet", "channels": 4, "cells": 2, "nodes": 2, "reductions": [1]},
        "learner": {"name": "reptile", "inner_steps": 2},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 4, "val_episodes": 4},
    })
    exp = build_experiment(cfg)
    exp.learner.meta_step(sample_batch(exp.train_source(), 2, torch.Generator().manual_seed(0)))
    net = exp.learner.backbone
    assert "backbone.alpha_normal" in exp.learner.parameters_dict()
    assert net.alpha_normal.grad.abs().sum() > 0 and net.alpha_reduce.grad.abs().sum() > 0


def nas_config(tmp_path: Path, **nas) -> Path:
    cfg = {
        "name": "tinynas",
        "seed": 0,
        "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "supernet", "channels": 4, "cells": 2, "nodes": 2, "reductions": [1]},
        "learner": {"name": "fomaml", "inner_lr": 0.4, "inner_steps": 1},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
        "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 6, "val_episodes": 4},
        "train": {"steps": 3, "val_every": 3, "threads": 1},
        "nas": {"random_architectures": 2, "conv4": {"hidden": 4}, "evaluate": {"train": {"steps": 2}}, **nas},
    }
    path = tmp_path / "nas.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_main(capsys, args):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_tiny_search_and_evaluate_end_to_end(tmp_path, capsys):
    config, run = nas_config(tmp_path, warmup_steps=2), tmp_path / "search"
    code, out, _ = run_main(capsys, ["nas", "search", str(config), "--out", str(run), "--no-progress", "--json", str(tmp_path / "s.json")])
    assert code == 0 and "normal: n0 =" in out
    for name in ("genotype.json", "genotype.png", "alphas.json", "search.json", "checkpoints/last.pt", "report.md"):
        assert (run / name).is_file(), name
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["search_seconds"] > 0 and summary["steps"] == 3 and summary["warmup_steps"] == 2
    # The warm-up trains the network weights only: its architecture weights are still the initial ones.
    start = build_experiment(config_from_dict({k: v for k, v in yaml.safe_load(config.read_text()).items() if k != "nas"}))
    warm = torch.load(run / "warmup" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    assert torch.equal(warm["backbone.alpha_normal"], start.learner.backbone.alpha_normal.detach())
    assert not torch.equal(warm["backbone.stem.0.weight"], start.learner.backbone.stem[0].weight.detach())
    searched = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["learner"]
    assert not torch.equal(searched["backbone.alpha_normal"], warm["backbone.alpha_normal"])
    found = Genotype.load(run / "genotype.json")
    # A finished search is not redone by accident; --resume continues it (here: already done, same genotype).
    code, _, err = run_main(capsys, ["nas", "search", str(config), "--out", str(run), "--no-progress"])
    assert code == 2 and "--resume" in err
    code, _, _ = run_main(capsys, ["nas", "search", str(config), "--out", str(run), "--resume", "--no-progress"])
    assert code == 0 and Genotype.load(run / "genotype.json") == found

    code, _, err = run_main(capsys, ["nas", "evaluate", str(run), "--only", "random-9"])
    assert code == 2 and "unknown model 'random-9'" in err and "found, conv4, random-1, random-2" in err
    code, out, _ = run_main(capsys, ["nas", "evaluate", str(run), "--only", "found", "--no-progress"])
    assert code == 0 and "Not evaluated yet: conv4, random-1, random-2" in out
    code, out, _ = run_main(capsys, ["nas", "evaluate", str(run), "--no-progress", "--json", str(tmp_path / "e.json")])
    report = json.loads((tmp_path / "e.json").read_text())
    assert [m["model"] for m in report["models"]] == ["found", "conv4", "random-1", "random-2"]
    assert report["pending"] == [] and (run / "nas_evaluation.png").is_file()
    found_params = report["models"][0]["backbone_parameters"]
    randoms = [m for m in report["models"] if m["kind"] == "random"]
    assert all(Genotype.from_dict(m["genotype"]) != found for m in randoms)
    assert all(abs(m["backbone_parameters"] / found_params - 1) <= 0.5 for m in randoms)
    assert all(m["results"][0]["episodes"] == 6 and m["steps"] == 2 for m in report["models"])

    # The found architecture trains with the ordinary `metakit train` through the nas backbone.
    train_cfg = yaml.safe_load(config.read_text())
    train_cfg.pop("nas")
    train_cfg["backbone"] = {"name": "nas", "genotype": str(run / "genotype.json")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    code, out, _ = run_main(capsys, ["train", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "t"), "--no-progress"])
    assert code == 0 and "trained 3 steps" in out


@pytest.mark.slow
def test_random_search_scores_candidates(tmp_path, capsys):
    config = nas_config(tmp_path, method="random", candidates=2, candidate_steps=2)
    code, _, _ = run_main(capsys, ["nas", "search", str(config), "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "search.json").read_text())
    assert len(summary["candidates"]) == 2 and summary["best_candidate"] in (0, 1)
    best = summary["candidates"][summary["best_candidate"]]
    assert best["val_accuracy"] == max(c["val_accuracy"] for c in summary["candidates"])
    assert Genotype.load(tmp_path / "r" / "genotype.json") == Genotype.from_dict(best["genotype"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backbone.ops=[]"], "operation set (ops) is empty"),
        (["backbone.ops=[sep_conv_3x3,conv_7x7]"], "unknown operation 'conv_7x7'"),
        (["nas.method=evolution"], "unknown nas.method 'evolution'"),
        (["nas.ops_per_edge=9"], "nas.ops_per_edge"),
        (["backbone.name=conv4"], "backbone.name: supernet"),
        (["nas.evalute={}"], "Did you mean evaluate"),
        (["nas.backbone.channels=64"], "channels <= 32"),
        (["nas.conv4.width=3"], "unknown option 'width' for nas.conv4"),
        (["nas.evaluate.train.stepz=3"], "unknown config key train.stepz"),
    ],
)
def test_cli_bad_input_gives_one_line(tmp_path, capsys, overrides, message):
    code, _, err = run_main(capsys, ["nas", "search", str(nas_config(tmp_path)), *overrides, "--out", str(tmp_path / "x")])
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_evaluate_needs_a_finished_search(tmp_path, capsys):
    code, _, err = run_main(capsys, ["nas", "evaluate", str(tmp_path)])
    assert code == 2 and "not a nas search run directory" in err


def test_same_seed_same_search(tmp_path, capsys):
    config = nas_config(tmp_path)
    for out in ("a", "b"):
        assert run_main(capsys, ["nas", "search", str(config), "--out", str(tmp_path / out), "--no-progress"])[0] == 0
    alphas = [json.loads((tmp_path / out / "alphas.json").read_text()) for out in ("a", "b")]
    assert alphas[0] == alphas[1]
    assert (tmp_path / "a" / "genotype.json").read_text() == (tmp_path / "b" / "genotype.json").read_text()


def test_nas_help(capsys):
    for cmd in (["nas", "--help"], ["nas", "search", "--help"], ["nas", "evaluate", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(cmd)
        assert done.value.code == 0
    assert "--only" in capsys.readouterr().out
