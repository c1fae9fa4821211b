"""Config loading: defaults, YAML presets, dotted overrides, clear errors, resolved config written."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from medlearn.config import MISSING, load_config, parse_overrides, save_config
from medlearn.engine import EngineConfig
from medlearn.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class Required:
    data_root: str = MISSING
    steps: int = 1


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["a.b=1", "c=[1, 2]", "d=hello", "e=1e-4", "f=true"]) == {
        "a.b": 1, "c": [1, 2], "d": "hello", "e": 1e-4, "f": True,
    }  # fmt: skip


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"steps": 20, "optim": {"lr": 0.1}}))
    cfg = load_config(Cfg, preset, ["optim.lr=0.5", "engine.precision=bf16", "optim.betas=[0.5,0.9]"])
    assert isinstance(cfg, Cfg) and isinstance(cfg.optim, Optim)
    assert cfg.steps == 20 and cfg.optim.lr == 0.5 and cfg.optim.betas == [0.5, 0.9]
    assert cfg.engine.precision == "bf16" and cfg.name == "run"


def test_unknown_key_names_key_and_lists_valid(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, overrides=["optim.learning_rate=1"])
    msg = str(err.value)
    assert "optim.learning_rate" in msg and "lr" in msg and "betas" in msg
    preset = tmp_path / "bad.yaml"
    preset.write_text("stepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, preset)
    assert "stepz" in str(err.value) and "steps" in str(err.value) and "bad.yaml" in str(err.value)


def test_wrong_type_is_reported_with_key():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, overrides=["steps=many"])
    assert "steps" in str(err.value)


def test_invalid_engine_choice_lists_options():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, overrides=["engine.precision=fp8"])
    assert "fp32" in str(err.value) and "bf16" in str(err.value)


def test_missing_required_value():
    with pytest.raises(ConfigError) as err:
        load_config(Required)
    assert "data_root" in str(err.value)
    assert load_config(Required, overrides=["data_root=/x"]).data_root == "/x"


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, overrides=["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Cfg, overrides=["steps=3", "optim.lr=0.25"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["steps"] == 3 and data["optim"]["lr"] == 0.25 and data["engine"]["precision"] == "fp32"
    again = load_config(Cfg, path)
    assert again == cfg
