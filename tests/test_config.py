"""Config loading: defaults, YAML presets, dotted overrides, clear errors, resolved config written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

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


# ------------------------------------------------------------- YAML words, Literal choices, renames
@dataclass
class Choices:
    RENAMED: ClassVar[dict[str, str]] = {"out": "train.out"}
    gather: Literal["auto", "on", "off"] = "auto"
    flag: bool = True
    train: Optim = field(default_factory=Optim)
    engine: EngineConfig = field(default_factory=EngineConfig)


@pytest.mark.parametrize("word", ["off", "on"])
def test_yaml_words_stay_the_choice_the_user_typed(word, tmp_path):
    assert load_config(Choices, overrides=[f"gather={word}"]).gather == word
    preset = tmp_path / "p.yaml"
    preset.write_text(f"gather: {word}\nflag: {'no' if word == 'off' else 'yes'}\n")
    cfg = load_config(Choices, preset)
    assert cfg.gather == word and cfg.flag is (word == "on")  # bool fields still read yes/no


@pytest.mark.parametrize("spelling", ["no", "false", "fp32"])
def test_precision_no_and_false_mean_fp32(spelling):
    assert load_config(Cfg, overrides=[f"engine.precision={spelling}"]).engine.precision == "fp32"


def test_literal_rejects_other_values_and_lists_them():
    with pytest.raises(ConfigError, match=r"gather.*'sometimes'.*auto.*on.*off"):
        load_config(Choices, overrides=["gather=sometimes"])


def test_renamed_key_names_its_new_spelling(tmp_path):
    with pytest.raises(ConfigError, match=r"'out' was renamed to 'train.out'"):
        load_config(Choices, overrides=["out=runs/x"])
    preset = tmp_path / "old.yaml"
    preset.write_text("out: runs/x\n")
    with pytest.raises(ConfigError, match=r"old.yaml.*'out' was renamed to 'train.out'"):
        load_config(Choices, preset)
    with pytest.raises(ConfigError, match="unknown config key 'RENAMED'"):
        load_config(Choices, overrides=["RENAMED={}"])


def test_numbers_in_exponent_form_are_floats():
    assert load_config(Cfg, overrides=["optim.lr=1e-4"]).optim.lr == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------ presets
def test_preset_lookup_order(tmp_path, monkeypatch):
    from medlearn.config import list_presets, packaged_configs_dir, resolve_preset

    packaged = packaged_configs_dir() / "mrsi" / "tiny.yaml"
    assert packaged.is_file()
    monkeypatch.delenv("MEDLEARN_CONFIGS", raising=False)
    monkeypatch.chdir(tmp_path)  # far from the checkout: names and documented paths still resolve
    assert resolve_preset("mrsi", "tiny") == packaged
    assert resolve_preset("mrsi", "configs/mrsi/tiny.yaml") == packaged
    own = tmp_path / "mine.yaml"
    own.write_text("train: {epochs: 1}\n")
    assert resolve_preset("mrsi", str(own)) == own  # an explicit path wins
    user = tmp_path / "cfgs" / "mrsi"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text("train: {epochs: 2}\n")
    (user / "extra.yaml").write_text("train: {epochs: 3}\n")
    monkeypatch.setenv("MEDLEARN_CONFIGS", str(tmp_path / "cfgs"))
    assert resolve_preset("mrsi", "tiny") == user / "tiny.yaml"  # MEDLEARN_CONFIGS before the package
    assert resolve_preset("mrsi", "paper") == packaged_configs_dir() / "mrsi" / "paper.yaml"
    assert {"extra", "tiny", "paper"} <= set(list_presets("mrsi"))
    with pytest.raises(ConfigError, match=r"unknown mrsi preset 'nope'.*extra.*paper"):
        resolve_preset("mrsi", "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_preset("mrsi", str(tmp_path / "missing.yaml"))
    monkeypatch.setenv("MEDLEARN_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"preset folder '.*nowhere' not found.*MEDLEARN_CONFIGS"):
        resolve_preset("mrsi", "tiny")


def test_a_key_repeated_in_a_config_file_is_refused_with_its_line(tmp_path):
    """YAML forbids repeated keys; PyYAML would keep the last silently, so a config file is refused."""
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  lr: 0.1\nengine:\n  cpu_conv: auto\n  cpu_conv: native\n")
    with pytest.raises(
        ConfigError, match=r"(?s)twice.yaml' is not valid YAML: key 'cpu_conv' appears twice.*line 5"
    ):
        load_config(Cfg, path)
    path.write_text("optim:\n  lr: 0.1\nengine:\n  cpu_conv: native\n")  # the same keys once each
    assert load_config(Cfg, path).engine.cpu_conv == "native"
