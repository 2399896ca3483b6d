"""One place mapping names to component factories and their config dataclasses.

Components register themselves where they are defined:

    @register("plasticity", "supsup", SupSupConfig)
    def build_supsup(cfg: SupSupConfig, env: BuildEnv) -> SupSup: ...

A second registration under the same kind and name is an error. Recipes then
name components (`name = "supsup"`) and the registry builds them with their
checked config. The registry is core: it imports no component. A component is
registered once its module is imported; the application (`agentlab.plugins`)
imports every shipped module, and third-party packages declared under the
`agentlab.plugins` entry-point group, before it looks a name up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from agentlab.config import ConfigError, build_config, suggest

KINDS = ("stream", "backbone", "plasticity", "memory", "learner", "bench")


@dataclass
class BuildEnv:
    """What a factory may need besides its own config: the seed, where data lives, the built stream."""

    seed: int = 0
    data_root: Path | None = None
    stream: Any = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def stream_sizes(self, in_size: int, out_size: int, *, where: str, keys: tuple[str, str] = ("in_features", "out_features"),
                     flatten: bool = True) -> tuple[int, int]:
        """`(in_size, out_size)` with a 0 taken from the stream: the input's flattened size (`flatten`, for
        layers over whole examples) or its last axis (sequence models), and the stream's number of classes."""
        if not in_size:
            shape = getattr(self.stream, "input_shape", None)
            if not shape:
                raise ConfigError(f"{where}.{keys[0]}=0 but the stream does not say its input shape; set {where}.{keys[0]}")
            in_size = math.prod(shape) if flatten else int(shape[-1])
        if not out_size:
            out_size = int(getattr(self.stream, "n_classes", 0) or 0)
            if not out_size:
                raise ConfigError(f"{where}.{keys[1]}=0 but the stream does not say its number of classes; set {where}.{keys[1]}")
        return in_size, out_size


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    config_cls: type
    doc: str


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}


def register(kind: str, name: str, config_cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering `factory(cfg, env)` under `kind`/`name`; duplicates are refused."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are {KINDS}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY[kind]
        if name in table:
            old = table[name].factory
            raise ValueError(
                f"duplicate {kind} name {name!r}: already registered by {old.__module__}.{old.__qualname__}"
            )
        doc = (factory.__doc__ or config_cls.__doc__ or "").strip().splitlines()
        table[name] = Entry(kind, name, factory, config_cls, doc[0] if doc else "")
        return factory

    return deco


def unregister(kind: str, name: str) -> None:
    """Remove an entry (tests use this to clean up after registering throw-away components)."""
    _REGISTRY[kind].pop(name, None)


def entries(kind: str) -> dict[str, Entry]:
    """Every registered component of `kind` (those whose modules were imported; see `agentlab.plugins`)."""
    return dict(_REGISTRY[kind])


def get(kind: str, name: str, *, where: str = "") -> Entry:
    table = _REGISTRY[kind]
    if name not in table:
        key = f"{where}.name" if where else "name"
        hint = "" if table else " (no module registering one was imported: call agentlab.plugins.load_plugins() first)"
        raise ConfigError(
            f"{key}={name!r} is not a registered {kind}" + suggest(name, table) + f"; registered: {', '.join(sorted(table))}" + hint
        )
    return table[name]


def build(kind: str, table: Mapping[str, Any], env: BuildEnv, *, where: str = "") -> Any:
    """Build the component that `table` names (`{"name": ..., **config}`) with its checked config."""
    table = dict(table)
    if "name" not in table:
        raise ConfigError(f"{where or kind} needs a 'name' key naming a registered {kind}")
    entry = get(kind, table.pop("name"), where=where)
    cfg = build_config(entry.config_cls, table, where=where)
    return entry.factory(cfg, env)
