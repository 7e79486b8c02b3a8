"""Small helpers for turning TOML tables into frozen dataclasses, with errors users can act on.

Unknown keys are rejected with the nearest valid key suggested; values are checked against the
dataclass field types (``int``, ``float``, ``str``, ``bool``, optional forms of these,
``int | str``, ``tuple[str, ...]`` and ``dict[str, str]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from batchscore.errors import ConfigError

T = TypeVar("T")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` naming the first key of ``table`` not in ``valid``."""
    valid = list(valid)
    for key in table:
        if key not in valid:
            raise ConfigError(f"unknown key '{key}' in {where}{suggest(key, valid)}")


def expand_env(
    value: Any, where: str, environ: Mapping[str, str], expanded: set[str] | None = None
) -> Any:
    """Replace ``${NAME}`` in every string of ``value`` (recursively) from ``environ``; add
    each value a reference expanded to to ``expanded``."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(
                    f"{where} uses ${{{name}}} but the environment variable {name} is not set; "
                    f"export it or remove the reference"
                )
            if expanded is not None:
                expanded.add(environ[name])
            return environ[name]

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}", environ, expanded) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", environ, expanded) for i, v in enumerate(value)]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; strings from the environment are parsed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value == "" and len(args) == 1):
            return None
        for arg in args[:-1]:  # ``int | str``: a number if it reads as one, else the text
            try:
                return coerce(value, arg, where)
            except ConfigError:
                pass
        return coerce(value, args[-1], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a whole number, not {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, not {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
        return tuple(coerce(v, str, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of strings, not {value!r}")
        return {str(k): coerce(v, str, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {_type_name(tp)}")  # pragma: no cover - a bug


def build(cls: type[T], table: Mapping[str, Any], where: str, **fixed: Any) -> T:
    """Build the frozen dataclass ``cls`` from a config table, checking keys and types."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}
    check_keys(table, fields, where)
    kwargs: dict[str, Any] = dict(fixed)
    for name, f in fields.items():
        if name in table:
            kwargs[name] = coerce(table[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where} needs the key '{name}'")
    return cls(**kwargs)


def environ() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
