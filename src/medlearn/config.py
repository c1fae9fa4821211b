"""Typed configs on OmegaConf: a dataclass schema, a YAML preset, dotted overrides, one clear error.

A task describes its configuration as nested dataclasses; string choices are ``Literal`` types.
:func:`load_config` layers, in order: the schema's defaults, a YAML preset (``OmegaConf.merge``),
and ``key=value`` overrides (``OmegaConf.update`` on dotted keys).  The schema is in OmegaConf's
struct mode, so an unknown key, a wrong type, a value outside a ``Literal`` or a missing required
value stops with one :class:`~medlearn.errors.ConfigError` that names the key and what is valid.
A key that was renamed names its new spelling (schemas list them in a ``RENAMED`` class variable).

YAML is read with the YAML 1.2 rule for booleans: only ``true``/``false`` are booleans, so the
documented choices ``off``, ``on``, ``no`` and ``yes`` arrive as the strings the user typed
(``loss.gather=off``); a ``bool`` field still accepts them.

Presets: :func:`resolve_preset` is the one lookup of ``<task>/<name>.yaml`` files (an explicit
path, then the folder named by ``$MEDLEARN_CONFIGS``, then the presets shipped in the package).

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Optim:
    ...     lr: float = 1e-3
    >>> @dataclass
    ... class Cfg:
    ...     name: str = "run"
    ...     optim: Optim = field(default_factory=Optim)
    >>> load_config(Cfg, overrides=["optim.lr=0.5"]).optim.lr
    0.5
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from medlearn.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "CONFIGS_ENV",
    "MISSING",
    "configs_dir",
    "list_presets",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "resolve_preset",
    "save_config",
    "to_dict",
    "to_yaml",
]

CONFIGS_ENV = "MEDLEARN_CONFIGS"
_WORDS_TRUE = {"yes", "on", "y", "true"}
_WORDS_FALSE = {"no", "off", "n", "false"}


# ------------------------------------------------------------------------------------------ YAML
class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans (true/false only), ``1e-4`` read as a float, and
    a repeated key refused (PyYAML keeps the last one silently; YAML forbids repeats)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Yaml12Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 booleans (``off`` stays a string) and ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[1,2]"]`` into ``{"a.b": 1, "c": [1, 2]}`` (values read as YAML 1.2).

    Raises:
        ConfigError: if an item has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            out[key] = read_yaml(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


# ----------------------------------------------------------------------------------- schema walk
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``; anything else unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _field_type(schema: type, dotted: str) -> tuple[type | None, Any]:
    """(dataclass holding the leaf, type of the leaf) for ``dotted``, or (None, None) when unknown."""
    node: Any = schema
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not _is_dataclass_type(node):
            return None, None
        hints = typing.get_type_hints(node)
        if part not in {f.name for f in dataclasses.fields(node)}:  # ClassVars (RENAMED) are not keys
            return (node, None) if i == len(parts) - 1 else (None, None)
        if i == len(parts) - 1:
            return node, _unwrap_optional(hints[part])
        node = _unwrap_optional(hints[part])
    return None, None


def _coerce(tp: Any, value: Any) -> Any:
    """Map a YAML word to the field's type: ``off`` for a bool, ``False`` for a Literal with ``off``/``no``."""
    if tp is bool and isinstance(value, str) and value.lower() in _WORDS_TRUE | _WORDS_FALSE:
        return value.lower() in _WORDS_TRUE
    if typing.get_origin(tp) is typing.Literal and isinstance(value, bool):
        words = _WORDS_TRUE if value else _WORDS_FALSE
        for choice in typing.get_args(tp):
            if isinstance(choice, str) and choice.lower() in words:
                return choice
    return value


def _coerce_tree(schema: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        _, tp = _field_type(schema, dotted)
        out[key] = _coerce_tree(schema, value, dotted) if isinstance(value, dict) else _coerce(tp, value)
    return out


def _renamed(schema: type) -> dict[str, str]:
    return dict(getattr(schema, "RENAMED", {}) or {})


def _unknown_key_error(schema: type, dotted: str, source: str) -> ConfigError:
    new = _renamed(schema).get(dotted)
    if new:
        return ConfigError(f"{source}: config key '{dotted}' was renamed to '{new}' (write {new}=...)")
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    holder: Any = schema
    for part in [p for p in parent.split(".") if p]:
        hints = typing.get_type_hints(holder) if _is_dataclass_type(holder) else {}
        holder = _unwrap_optional(hints.get(part))
    valid = [f.name for f in dataclasses.fields(holder)] if _is_dataclass_type(holder) else []
    where = f" under '{parent}'" if parent else ""
    return ConfigError(f"{source}: unknown config key '{dotted}'. Valid keys{where}: {', '.join(valid)}")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        items.append((dotted, value))
        if isinstance(value, dict):
            items.extend(_flatten(value, dotted))
    return items


def _check_keys(schema: type, data: Any, source: str) -> None:
    """Unknown (or renamed) keys of a YAML mapping, named before OmegaConf sees them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    for dotted, value in _flatten(data):
        holder, tp = _field_type(schema, dotted)
        if holder is None or tp is None:
            if holder is not None or not _inside_free_dict(schema, dotted):
                raise _unknown_key_error(schema, dotted, source)
            continue
        if _is_dataclass_type(tp) and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{source}: config key '{dotted}' must be a mapping of keys, got {value!r}")


def _inside_free_dict(schema: type, dotted: str) -> bool:
    """True when a prefix of ``dotted`` is a ``dict[str, Any]`` field (free-form keys, e.g. ``arch``)."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        _, tp = _field_type(schema, ".".join(parts[:i]))
        if tp is dict or typing.get_origin(tp) is dict:
            return True
    return False


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """``("a.b", v)`` -> ``{"a": {"b": v}}``."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _friendly(err: OmegaConfBaseException, schema: type, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        return _unknown_key_error(schema, str(key), source)
    msg = str(err).splitlines()[0]
    return ConfigError(f"{source}: bad value for config key '{key}': {msg}")


# ------------------------------------------------------------------------------------------- load
def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and dotted overrides.

    Args:
        schema: a dataclass type whose fields have defaults (``MISSING`` for required ones).
        path: YAML preset; its keys must exist in ``schema``.
        overrides: ``key=value`` strings, values parsed as YAML (``optim.lr=2e-4``, ``sites=[A,B]``).

    Returns:
        An instance of ``schema`` (a real dataclass object, not an OmegaConf node).

    Raises:
        ConfigError: unknown or renamed key, wrong type, value outside a ``Literal``, missing
            required value, unreadable YAML file.
    """
    cfg: DictConfig = OmegaConf.structured(schema)  # struct mode: unknown keys are refused
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        source = f"config file '{p}'"
        try:
            data = read_yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
        _check_keys(schema, data, source)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(_coerce_tree(schema, data)))
        except OmegaConfBaseException as exc:
            raise _friendly(exc, schema, source) from None
    for key, value in parse_overrides(overrides).items():
        source = "command-line override"
        holder, tp = _field_type(schema, key)
        if tp is None and not _inside_free_dict(schema, key):
            raise _unknown_key_error(schema, key, source)
        if isinstance(value, dict):
            _check_keys(schema, {key: value} if "." not in key else _nest(key, value), source)
            value = _coerce_tree(schema, value, key)
        else:
            value = _coerce(tp, value)
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as exc:
            raise _friendly(exc, schema, source) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config value(s) not set: {', '.join(missing)} (set them as key=value)")
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, schema, "config") from None
    return typing.cast(T, obj)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (paths become strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config to ``path`` (YAML, atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------- presets
def packaged_configs_dir() -> Path:
    """The presets shipped inside the package: ``medlearn/configs/<task>/<preset>.yaml``."""
    return Path(__file__).resolve().parent / "configs"


def configs_dir() -> Path:
    """Where named presets are looked up: ``$MEDLEARN_CONFIGS`` when set, else the packaged presets.

    Raises:
        ConfigError: when ``$MEDLEARN_CONFIGS`` names a folder that does not exist.
    """
    env = os.environ.get(CONFIGS_ENV, "")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise ConfigError(
                f"preset folder '{path}' not found: {CONFIGS_ENV} must name a folder with "
                "<task>/<preset>.yaml files (unset it to use the presets shipped with medlearn)"
            )
        return path
    return packaged_configs_dir()


def list_presets(task: str) -> list[str]:
    """Names of the presets of ``task`` (``paper``, ``small``, ``tiny``, ``demo`` ...), sorted.

    With ``$MEDLEARN_CONFIGS`` set, its presets come first and the packaged ones fill in.
    """
    names: set[str] = set()
    for folder in dict.fromkeys([configs_dir() / task, packaged_configs_dir() / task]):
        if folder.is_dir():
            names |= {p.stem for p in folder.glob("*.yaml")}
    return sorted(names)


def resolve_preset(task: str, ref: str | Path) -> Path:
    """The YAML file of a preset: ``ref`` as a path when that file exists or ends in ``.yaml``,
    else ``<$MEDLEARN_CONFIGS>/<task>/<ref>.yaml``, else the packaged ``configs/<task>/<ref>.yaml``.

    A path like ``configs/mrsi/tiny.yaml`` that does not exist relative to the working folder is
    also looked up by its name, so documented commands work from any folder.

    Raises:
        ConfigError: when nothing matches (the valid preset names are listed).
    """
    p = Path(ref)
    if p.is_file():
        return p
    name = p.stem if p.suffix in (".yaml", ".yml") else str(ref)
    looks_like_preset = p.suffix not in (".yaml", ".yml") or (
        len(p.parts) >= 2 and p.parts[-2] == task and p.parts[-3:-2] in ((), ("configs",))
    )
    if looks_like_preset and "/" not in name:
        for folder in dict.fromkeys([configs_dir() / task, packaged_configs_dir() / task]):
            candidate = folder / f"{name}.yaml"
            if candidate.is_file():
                return candidate
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file '{p}' does not exist")
    raise ConfigError(
        f"unknown {task} preset '{ref}'; valid presets: {', '.join(list_presets(task)) or '(none)'} "
        "(or give the path of a YAML file)"
    )
