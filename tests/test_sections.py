"""Each domain registers its config section, and one reader (``metakit.config.load_config``) validates them all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from metakit import registry
from metakit.config import Config, config_from_dict, load_config
from metakit.errors import MetakitError

REPO = Path(__file__).resolve().parents[1]
RL = REPO / "configs" / "rl-point2d-mamlrl.yaml"
RECSYS = REPO / "configs" / "recsys-melu-synthetic.yaml"
NAS = REPO / "configs" / "nas-glyphs-metanas.yaml"
TUNE = REPO / "configs" / "glyphs-maml-tune.yaml"


def _domain(path: Path) -> str | None:
    """The domain whose own layout a config file has (rl, recsys), or ``None`` for a run config."""
    return next((d for d in ("rl", "recsys") if path.name.startswith(d + "-")), None)


def test_every_config_in_configs_loads_through_the_one_reader():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path, domain=_domain(path))
        if path.name.startswith("nas-"):
            assert config.section("nas").method in ("metanas", "random"), path
        if path.name.endswith("-tune.yaml"):
            assert config.section("tune").space, path


def test_domain_sections_come_from_the_plugins():
    sections = {p.name: p.config_section for p in registry.plugins().values() if p.config_schema}
    assert sections == {"rl": "rl", "recsys": "recsys", "nas": "nas", "hpo": "tune"}
    for plugin in registry.plugins().values():
        assert bool(plugin.config_schema) == bool(plugin.config_section), plugin.name


def test_the_domain_loaders_are_the_one_reader():
    from metakit.hpo.space import TuneSection
    from metakit.nas.search import NasSettings, load_nas_spec
    from metakit.recsys.config import RecsysConfig, load_recsys_config
    from metakit.rl.config import RLConfig, load_rl_config

    rl = load_config(RL, ["maml.inner_lr=5e-2", "env.goal_radius=0.5"], domain="rl")
    assert isinstance(rl, RLConfig) and rl == load_rl_config(RL, ["maml.inner_lr=5e-2", "env.goal_radius=0.5"])
    assert rl.maml.inner_lr == 0.05 and rl.env.options == {"goal_radius": 0.5}  # env is open, as learner is
    recsys = load_config(RECSYS, ["melu.epochs=3"], domain="recsys")
    assert isinstance(recsys, RecsysConfig) and recsys == load_recsys_config(RECSYS, ["melu.epochs=3"])
    nas = load_config(NAS, ["nas.method=random"])
    assert isinstance(nas.section("nas"), NasSettings)
    assert nas.section("nas") == load_nas_spec(NAS, ["nas.method=random"]).settings
    assert isinstance(load_config(TUNE).section("tune"), TuneSection)
    assert load_config(None).section("nas") is None


@pytest.mark.parametrize("path, override, domain, message", [
    (RL, "train.iteratons=3", "rl", "unknown config key train.iteratons. Did you mean iterations"),
    (RL, "algorithm=ppo", "rl", "unknown algorithm 'ppo'"),  # the section's own check() runs too
    (RECSYS, "melu.epoch=3", "recsys", "unknown config key melu.epoch. Did you mean epochs"),
    (RECSYS, "melu.lr=lots", "recsys", "config key melu.lr must be a number, got 'lots'"),
    (NAS, "nas.edges=2", None, "unknown config key nas.edges."),
    (NAS, "nas.method=evolution", None, "unknown nas.method 'evolution'"),
    (TUNE, "tune.trails=3", None, "unknown config key tune.trails. Did you mean trials"),
    (TUNE, "tune.sampler=bayes", None, "unknown sampler 'bayes'"),
    (TUNE, "nsa.method=random", None, "unknown config key nsa. Did you mean nas"),
])
def test_every_domain_section_fails_the_same_way(path, override, domain, message):
    with pytest.raises(MetakitError) as info:
        load_config(path, [override], domain=domain)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_domain_sections_round_trip_through_the_saved_config(tmp_path):
    for path, domain in ((NAS, None), (TUNE, None), (RL, "rl"), (RECSYS, "recsys")):
        config = load_config(path, domain=domain)
        saved = tmp_path / path.name
        saved.write_text(config.to_yaml(), encoding="utf-8")
        assert load_config(saved, domain=domain) == config, path


def test_a_section_is_no_config_key_of_its_own():
    with pytest.raises(MetakitError, match="unknown config key sections"):
        config_from_dict({"sections": {}})


@dataclass
class ToySection:
    """A domain section as an outside package would register it."""

    rounds: int = 1

    def check(self) -> ToySection:
        if self.rounds < 1:
            raise MetakitError(f"toy.rounds must be >= 1, got {self.rounds}.")
        return self


def test_an_outside_plugin_registers_its_section(monkeypatch):
    toy = registry.Plugin(name="toy", summary="a toy domain", config_section="toy",
                          config_schema=f"{__name__}:ToySection")
    installed = {**registry.plugins(), "toy": toy}
    monkeypatch.setattr(registry, "plugins", lambda: installed)
    config = load_config(None, ["toy.rounds=3", "train.steps=5"])
    assert isinstance(config, Config) and config.section("toy") == ToySection(3) and config.train.steps == 5
    with pytest.raises(MetakitError, match="unknown config key toy.round. Did you mean rounds"):
        load_config(None, ["toy.round=3"])
    with pytest.raises(MetakitError, match="toy.rounds must be >= 1"):
        load_config(None, ["toy.rounds=0"])
    assert yaml.safe_load(config.to_yaml())["toy"] == {"rounds": 3}
