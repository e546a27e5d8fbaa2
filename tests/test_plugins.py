"""Plugins: metakit's own domains come through the registry, and an outside package adds a learner
and a toy domain through entry points alone (tests/plugin_example, docs/extending.md).

The outside package is made discoverable for real: its entry points, read from its own
pyproject.toml, are written into a ``*.dist-info`` folder on ``PYTHONPATH``, which is what an
install leaves behind for importlib.metadata; then ``metakit`` runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml

from metakit import registry
from metakit.errors import MetakitError
from metakit.registry import Plugin

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"
DOMAINS = {"classification", "text", "rl", "recsys", "nas", "hpo", "segmentation"}


def install_metadata(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """Write the ``.dist-info`` of an installed distribution ``name`` declaring ``entry_points``."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[metakit.plugins]\n" + "\n".join(lines) + "\n")


def run_metakit(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE)]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "metakit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def example_site(tmp_path: Path) -> Path:
    """A folder on which the example package counts as installed, from its pyproject's entry points."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    install_metadata(tmp_path / "site", project["name"], project["entry-points"]["metakit.plugins"])
    return tmp_path / "site"


def test_every_domain_registers_itself():
    plugins = registry.plugins()
    assert DOMAINS <= set(plugins)
    assert {"rl", "recsys", "nas", "tune"} <= {c for p in plugins.values() for c in p.commands}
    assert plugins["nas"].backbones.keys() == {"supernet", "nas"} and plugins["nas"].config_section == "nas"
    assert plugins["hpo"].config_section == "tune"
    assert "transformer" in registry.names("backbone")


def test_the_domains_bring_their_datasets_and_how_predict_reads_their_inputs():
    plugins = registry.plugins()
    assert set(plugins["text"].datasets) == {"banking77", "hwu64", "clinc150", "csv", "jsonl"}
    assert set(plugins["recsys"].datasets) == {"ml-100k", "ml-1m", "ml-latest-small", "ml-25m", "ml-32m"}
    from metakit.text.inputs import prepare_texts

    assert registry.input_preparer("text") is prepare_texts
    assert registry.input_preparer("audio") is None


def test_a_plugin_backbone_is_imported_when_first_built():
    code = ("import sys; from metakit.backbones import BACKBONES, build_backbone; "
            "assert 'metakit.nas.network' not in sys.modules and 'nas' not in dict(BACKBONES); "
            "m = build_backbone('supernet', (1, 8, 8), channels=4, cells=1, nodes=2, reductions=[0]); "
            "assert 'metakit.nas.network' in sys.modules and m.out_dim > 0")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_names_list_the_plugins_too():
    from metakit.backbones import build_backbone

    with pytest.raises(MetakitError, match="Did you mean 'supernet'.*transformer"):
        build_backbone("supernett", (1, 8, 8))


def test_outside_learner_and_toy_domain_run_through_the_cli(example_site: Path, tmp_path: Path):
    # The toy domain's own subcommand.
    done = run_metakit(example_site, "blobs", "--classes", "6", "--json", "blobs.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "blobs: 6 classes x 20 points in 8 dimensions" in done.stdout
    assert json.loads((tmp_path / "blobs.json").read_text())["accuracy"] > 0.8
    # Its dataset is listed with metakit's own, and both plugins with metakit's domains.
    done = run_metakit(example_site, "datasets", "--json", "datasets.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {"blobs", "glyphs"} <= {row["name"] for row in json.loads((tmp_path / "datasets.json").read_text())}
    done = run_metakit(example_site, "plugins", "--json", "plugins.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = {row["name"]: row for row in json.loads((tmp_path / "plugins.json").read_text())}
    assert set(listed) == DOMAINS | {"nearest", "blobs"}
    assert listed["nearest"]["learners"] == ["nearest_neighbour"] and listed["blobs"]["commands"] == ["blobs"]
    # The outside learner trains and evaluates on the toy domain's dataset, from a config.
    config = {"name": "plugin-example", "dataset": {"name": "blobs", "split": "class", "classes": 40},
              "backbone": {"name": "mlp", "hidden": [16]},
              "learner": {"name": "nearest_neighbour", "temperature": 0.5},
              "episodes": {"ways": 3, "shots": 1, "queries": 2},
              "eval": {"ways": [3], "shots": [1], "queries": 2, "episodes": 10, "val_episodes": 5},
              "train": {"steps": 4, "val_every": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = run_metakit(example_site, "train", "c.yaml", "--out", "run", "--evaluate", "--no-progress",
                       "--json", "eval.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["learner"] == "nearest_neighbour" and result["dataset"] == "blobs"
    assert 0 <= result["results"][0]["mean"] <= 1
    # Options are checked against the outside learner's own signature, as for a built-in one.
    done = run_metakit(example_site, "train", "c.yaml", "learner.temprature=2", "--out", "run2", cwd=tmp_path)
    assert done.returncode == 2 and "temperature" in done.stderr and "Traceback" not in done.stderr


def test_without_the_entry_points_the_outside_names_are_unknown(tmp_path: Path):
    done = run_metakit(tmp_path / "empty", "blobs", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice: 'blobs'" in done.stderr


def test_a_broken_plugin_is_one_error_line(tmp_path: Path):
    install_metadata(tmp_path / "site", "broken-plugin", {"broken": "no_such_module:plugin"})
    done = run_metakit(tmp_path / "site", "--help", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: plugin 'broken' (no_such_module:plugin) failed to load" in " ".join(done.stderr.split())


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, **objects: object) -> None:
    """Make the registry see metakit's own plugins plus ``objects`` as entry points (in-process)."""
    own = list(registry.entry_points(group=registry.ENTRY_POINT_GROUP))
    extra = []
    for name, obj in objects.items():
        setattr(sys.modules[__name__], f"_plugin_{name}", obj)
        extra.append(EntryPoint(name, f"{__name__}:_plugin_{name}", registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "entry_points", lambda group: [*own, *extra])
    registry.plugins.cache_clear()


@pytest.fixture
def fresh_registry():
    yield
    registry.plugins.cache_clear()


def test_a_name_two_plugins_add_is_refused(monkeypatch, fresh_registry):
    _fake_entry_points(monkeypatch, shadow=Plugin(name="shadow", summary="x", backbones={"nas": "math:sqrt"}))
    with pytest.raises(MetakitError, match="plugins 'nas' and 'shadow' both add the backbone 'nas'"):
        registry.plugins()


def test_an_input_kind_two_plugins_prepare_is_refused(monkeypatch, fresh_registry):
    _fake_entry_points(monkeypatch, shadow=Plugin(name="shadow", summary="x", inputs={"text": "math:sqrt"}))
    with pytest.raises(MetakitError, match="plugins 'shadow' and 'text' both add the input 'text'"):
        registry.plugins()


def test_an_entry_point_that_is_no_plugin_is_refused(monkeypatch, fresh_registry):
    _fake_entry_points(monkeypatch, odd={"name": "odd"})
    with pytest.raises(MetakitError, match="is a dict, not a metakit.registry.Plugin"):
        registry.plugins()


def test_a_target_that_does_not_exist_is_one_line(monkeypatch, fresh_registry):
    _fake_entry_points(monkeypatch, typo=Plugin(name="typo", summary="x", learners={"typo": "metakit.learners:NoSuch"}))
    from metakit.learners import LEARNERS

    with pytest.raises(MetakitError, match="points at 'metakit.learners:NoSuch', but metakit.learners has no 'NoSuch'"):
        LEARNERS.get_or_fail("typo")


@pytest.mark.parametrize(("extra", "argv", "line"), [
    ("gymnasium", ["rl", "train", "configs/rl-point2d-mamlrl.yaml"], "metakit rl needs gymnasium (the rl extra)"),
    ("optuna", ["tune", "configs/glyphs-maml-tune.yaml"], "metakit tune needs Optuna (the hpo extra)"),
])
def test_a_missing_extra_fails_only_its_domain_in_one_line(monkeypatch, capsys, tmp_path, extra, argv, line):
    from metakit.cli import main

    monkeypatch.setitem(sys.modules, extra, None)  # `import extra` now raises ImportError, as when not installed
    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0
    repo = Path(__file__).resolve().parents[1]
    assert main([*argv[:-1], str(repo / argv[-1]), "--out", str(tmp_path / "run")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {line}" in err and "Traceback" not in err
