"""One place mapping names to component factories and their config dataclasses.

Components register themselves where they are defined:

    @register("plasticity", "supsup", SupSupConfig)
    def build_supsup(cfg: SupSupConfig, env: BuildEnv) -> SupSup: ...

A second registration under the same kind and name is an error. Recipes then
name components (`name = "supsup"`) and the registry builds them with their
checked config. `load_plugins()` imports every module of the component packages
so that registrations happen; modules keep heavy imports (Avalanche) inside
functions so that this stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from agentlab.config import ConfigError, build_config, suggest

KINDS = ("stream", "backbone", "plasticity", "memory", "learner", "bench")
PLUGIN_PACKAGES = ("agentlab.backbones", "agentlab.learners", "agentlab.bench", "scenarios", "plasticity", "memory")


@dataclass
class BuildEnv:
    """What a factory may need besides its own config: the seed, where data lives, the built stream."""

    seed: int = 0
    data_root: Path | None = None
    stream: Any = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


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


_loaded = False


def load_plugins() -> None:
    """Import every module of the component packages once, so that all registrations run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            importlib.import_module(info.name)


def entries(kind: str) -> dict[str, Entry]:
    load_plugins()
    return dict(_REGISTRY[kind])


def get(kind: str, name: str, *, where: str = "") -> Entry:
    load_plugins()
    table = _REGISTRY[kind]
    if name not in table:
        key = f"{where}.name" if where else "name"
        raise ConfigError(
            f"{key}={name!r} is not a registered {kind}" + suggest(name, table) + f"; registered: {', '.join(sorted(table))}"
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
