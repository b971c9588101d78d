"""Typed, validated configuration objects.

Every config in hrm-agent is a frozen dataclass. `build(cls, mapping)` turns a plain mapping
(a TOML table, `--set` overrides, a checkpoint's stored config) into one, and refuses unknown
keys, wrong types and out-of-range values with a message that names the offending field, so a
typo in a profile fails at load time instead of silently training the wrong thing.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any, Literal, Mapping, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(c) for c in get_args(hint))
            raise ConfigError(f"{name}={value!r} is not one of {choices}")
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_type(name, value, args[0])
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a table of fields, got {value!r}")
        return build(hint, value, prefix=f"{name}.")
    return value


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Construct dataclass `cls` from `data`, validating every key and value."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config field '{prefix}{key}'{hint}; valid fields: {', '.join(fields)}"
            )
        kwargs[key] = _check_type(prefix + key, value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def require(condition: bool, message: str) -> None:
    """Range checks inside `__post_init__`: raise ConfigError with `message` if violated."""
    if not condition:
        raise ConfigError(message)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, TOML/JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """JSON text with NaN and infinities as null (`json.dumps` writes a bare NaN, which is not
    JSON: e.g. the optimality ratio of an agent that never reached the goal)."""
    return json.dumps(_finite(value), allow_nan=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `--set section.key=value` override; the value is read as TOML, else as a string."""
    import tomllib

    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested mapping `data` with `--set` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out
