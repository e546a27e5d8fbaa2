"""Config validation: unknown keys name the closest valid keys, types are checked, overrides apply."""

from __future__ import annotations

import pytest

from metakit.config import config_from_dict, load_config, parse_overrides
from metakit.errors import MetakitError
from metakit.experiment import build_experiment


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nlearner: {name: protonet, distance: cosine}\ntrain: {steps: 10}\n")
    cfg = load_config(path, ["train.steps=20", "eval.shots=[1, 5, 10]", "backbone.hidden=32"])
    assert cfg.train.steps == 20 and cfg.eval.shots == [1, 5, 10]
    assert cfg.learner.options == {"distance": "cosine"} and cfg.backbone.options == {"hidden": 32}
    again = config_from_dict(cfg.to_dict())
    assert again == cfg  # the saved resolved config round-trips


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"trian": {}}, r"unknown config key trian\. Did you mean train"),
        ({"train": {"step": 5}}, r"unknown config key train\.step\. Did you mean steps"),
        ({"eval": {"episode": 5}}, r"Did you mean episodes"),
        ({"train": {"steps": "many"}}, r"train\.steps must be an integer"),
        ({"train": {"lr": "fast"}}, r"train\.lr must be a number"),
        ({"train": {"tensorboard": "yes"}}, r"must be true or false"),
        ({"train": 5}, r"section train must be a mapping"),
    ],
)
def test_bad_configs_fail_with_one_line(data, needle):
    with pytest.raises(MetakitError, match=needle) as err:
        config_from_dict(data)
    assert "\n" not in str(err.value)


def test_open_sections_are_checked_against_what_they_build():
    with pytest.raises(MetakitError, match=r"unknown option 'distanse' for learner 'protonet'\. Did you mean distance"):
        build_experiment(config_from_dict({"dataset": {"name": "synthetic"}, "learner": {"name": "protonet", "distanse": "x"}}))
    with pytest.raises(MetakitError, match=r"unknown option 'hiden' for backbone 'conv4'\. Did you mean hidden"):
        build_experiment(config_from_dict({"dataset": {"name": "synthetic"}, "backbone": {"name": "conv4", "hiden": 3}}))
    with pytest.raises(MetakitError, match=r"unknown option 'nois' for dataset 'synthetic'\. Did you mean noise"):
        build_experiment(config_from_dict({"dataset": {"name": "synthetic", "nois": 3}}))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"dataset": {"name": "omniglott"}}, r"unknown dataset 'omniglott'\. Did you mean 'omniglot'"),
        ({"dataset": {"name": "synthetic"}, "learner": {"name": "protonets"}}, r"unknown learner 'protonets'\. Did you mean 'protonet'"),
        ({"dataset": {"name": "synthetic"}, "backbone": {"name": "conv5"}}, r"unknown backbone 'conv5'\. Did you mean 'conv4'"),
        ({"dataset": {"name": "synthetic"}, "episodes": {"ways": 30}}, r"30-way needs 30 classes"),
        ({"dataset": {"name": "synthetic"}, "episodes": {"queries": 1}, "eval": {"shots": [12], "queries": 1}}, r"shots \+ queries = 12 \+ 1 = 13"),
        ({"dataset": {"name": "synthetic"}, "episodes": {"augment": "blur"}}, r"unknown augmentation 'blur'"),
    ],
)
def test_bad_names_and_specs_fail_before_training(data, needle):
    with pytest.raises(MetakitError, match=needle):
        build_experiment(config_from_dict(data))


def test_override_syntax():
    assert parse_overrides(["a.b=1", "a.c=[1,2]", "d=hello"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "hello"}
    with pytest.raises(MetakitError, match="key=value"):
        parse_overrides(["train.steps"])


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {steps: 10\nlearner: [\n")
    with pytest.raises(MetakitError, match=r"malformed YAML in .*bad\.yaml at line"):
        load_config(path)
    with pytest.raises(MetakitError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(MetakitError, match="must hold a mapping"):
        load_config(path)


def test_options_section_reads_keys_types_and_defaults_from_a_constructor():
    from metakit.config import options_section, section_from_dict

    class Algo:
        def __init__(self, policy: object, lr: float = 0.1, steps: int = 3, first_order: bool = False,
                     gamma: float = 0.99) -> None:
            pass

    Section = options_section(Algo, "AlgoConfig", "An algorithm's options.", exclude=("gamma",),
                              extra=(("tasks", int, 7),))
    got = section_from_dict(Section, {"lr": "1e-2", "steps": 5}, "algo")
    assert (got.lr, got.steps, got.first_order, got.tasks) == (0.01, 5, False, 7)
    assert [f for f in Section.__dataclass_fields__] == ["tasks", "lr", "steps", "first_order"]
    with pytest.raises(MetakitError, match="algo.gamma"):
        section_from_dict(Section, {"gamma": 0.5}, "algo")  # excluded: the caller fills it
    with pytest.raises(MetakitError, match="must be an integer"):
        section_from_dict(Section, {"steps": 1.5}, "algo")


def test_rl_sections_follow_the_algorithms_constructors():
    import inspect

    from metakit.rl.config import MamlConfig, PearlConfig, RL2Config
    from metakit.rl.maml_rl import MamlRL
    from metakit.rl.pearl import PEARL
    from metakit.rl.rl2 import RL2

    for section, algo in ((MamlConfig, MamlRL), (RL2Config, RL2), (PearlConfig, PEARL)):
        params = inspect.signature(algo).parameters
        for name, f in section.__dataclass_fields__.items():
            if name in params and name != "train_tasks":  # PEARL's is the task list built from the count
                assert f.default == params[name].default, (algo.__name__, name)
