"""Typed dataclass configs: YAML presets plus dotted ``key=value`` overrides, validated.

A task describes its configuration as nested dataclasses.  :func:`load_config` builds one from a
YAML file and command-line overrides and stops with one :class:`~medlearn.errors.ConfigError`
that names the key and lists the valid ones when a key is unknown, a value has the wrong type or a
required value is missing.

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
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medlearn.errors import ConfigError

T = TypeVar("T")

__all__ = ["MISSING", "load_config", "to_dict", "to_yaml", "save_config", "parse_overrides"]


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[1,2]"]`` into ``{"a.b": 1, "c": [1, 2]}`` (values read as YAML).

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
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; users mean a number
            try:
                value = float(value) if any(c in value.lower() for c in ".e") else value
            except ValueError:
                pass
        out[key] = value
    return out


def _field_types(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_keys(schema: type, data: Any, where: str, source: str) -> None:
    """Reject keys that the dataclass ``schema`` does not have, recursively."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: '{where or '<root>'}' must be a mapping of keys, got {type(data).__name__}"
        )
    hints = _field_types(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            raise ConfigError(
                f"{source}: unknown config key '{path}'. Valid keys"
                f"{' under ' + repr(where) if where else ''}: {', '.join(valid)}"
            )
        tp = hints[key]
        if _is_dataclass_type(tp) and value is not None:
            _check_keys(tp, value, path, source)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}' conflicts with another override of '{p}'")
        node[parts[-1]] = value
    return nested


def _friendly(err: OmegaConfBaseException, schema: type, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    valid = ""
    node: Any = schema
    for part in str(key).split(".")[:-1]:
        hints = _field_types(node) if _is_dataclass_type(node) else {}
        node = hints.get(part)
    if _is_dataclass_type(node):
        valid = f" Valid keys here: {', '.join(f.name for f in dataclasses.fields(node))}."
    return ConfigError(f"{source}: bad value for config key '{key}': {msg}.{valid}")


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and dotted overrides.

    Args:
        schema: a dataclass type whose fields have defaults (use ``MISSING`` for required ones).
        path: YAML preset; its keys must exist in ``schema``.
        overrides: ``key=value`` strings, values parsed as YAML (``optim.lr=2e-4``, ``sites=[A,B]``).

    Returns:
        An instance of ``schema`` (a real dataclass object, not an OmegaConf node).

    Raises:
        ConfigError: unknown key (with the list of valid keys), wrong type, missing required value,
            unreadable YAML file.
    """
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
        _check_keys(schema, data, "", f"config file '{p}'")
        layers.append((data, f"config file '{p}'"))
    if overrides:
        nested = _nest(parse_overrides(overrides))
        _check_keys(schema, nested, "", "command-line override")
        layers.append((nested, "command-line override"))
    merged = base
    for data, source in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as exc:
            raise _friendly(exc, schema, source) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"required config value(s) not set: {', '.join(missing)} (set them as key=value)")
    try:
        obj = OmegaConf.to_object(merged)
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
    """Write the resolved config to ``path`` (YAML) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path
