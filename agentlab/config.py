"""Typed, frozen configuration: dataclasses built from TOML tables with exact error messages.

Every component declares a frozen dataclass of its arguments (one docstring line
each, cleanrl style) and checks ranges in `__post_init__` by raising
`ConfigError`. `build_config(cls, table, where=...)` turns a TOML table into
that dataclass: unknown keys, wrong types and bad values fail with a message that
names the key, the value and what is allowed, with close matches suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Iterable, Literal, Mapping, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


from agentlab.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem a user can fix; the CLI prints it and exits with code 2."""


def suggest(word: str, allowed: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when `word` is close to one of `allowed`, else ''."""
    close = difflib.get_close_matches(word, list(allowed), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def check(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a `ConfigError` naming the key, the value and what is allowed unless `condition`."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        return "a table"
    if tp is type(None):
        return "none"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` converted to type `tp`, or a `ConfigError` naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        allowed = [str(a) for a in get_args(tp)]
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {_type_name(tp)}" + suggest(str(value), allowed))
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {_type_name(tp)}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r} is not allowed: {key} must be a table")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            if math.isfinite(number):
                return number
            raise ConfigError(f"{key}={value!r} is not allowed: {key} must be a finite number")
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return build_config(tp, value, where=key)
    else:
        return value
    raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {_type_name(tp)}")


def build_config(cls: type[T], table: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Instantiate the frozen dataclass `cls` from `table`, checking keys and types.

    `where` is the dotted path of the table in the recipe, used in messages.
    """
    if table is not None and not isinstance(table, Mapping):
        raise ConfigError(f"{where or 'config'}={table!r} is not allowed: {where or 'config'} must be a table")
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in table:
        if key not in fields:
            raise ConfigError(
                f"unknown key {prefix}{key!r}" + suggest(key, fields) + f"; allowed keys: {', '.join(sorted(fields)) or '(none)'}"
            )
    kwargs = {k: coerce(hints[k], v, prefix + k) for k, v in table.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(prefix + str(e)) from None
        raise


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax where it parses (1, 0.5, true, [1, 2], "s"), else the bare string."""
    from agentlab._toml import loads

    try:
        return loads(f"v = {text}")["v"]
    except Exception:
        return text


def set_path(table: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `table[a][b][c] = value` for `dotted='a.b.c'`, creating tables as needed.

    Integer parts index into arrays of tables (`plasticity.0.sparsity`).
    """
    parts = dotted.split(".")
    if not isinstance(table, dict):
        raise ConfigError(f"--set {dotted}: the table it would change is a value ({table!r}), not a table")
    node: Any = table
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: {here} indexes a list of {len(node)} entries; use 0..{len(node) - 1}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {here} is a value ({node!r}), not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: index {last!r} out of range for a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value
