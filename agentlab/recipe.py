"""Recipes: TOML files naming a stream and one or more agents to run over it.

    description = "..."
    seed = 0
    [stream]                 name = a registered stream, plus its config keys
    [loop]                   `agentlab.loop.LoopConfig` keys
    [agents.<label>]         one table per agent compared in the run:
        backbone = { name = "mlp", hidden = [100] }
        learner = { name = "replay", buffer_size = 200 }
        plasticity = [ { name = "supsup", ... } ]      (optional)
        memory = [ { name = "dnc", ... } ]             (optional)

A recipe with a single agent may write `[backbone]`, `[learner]`,
`[[plasticity]]`, `[[memory]]` at the top level instead of `[agents.X]`.

`--set key=value` overrides any key: `stream.scenario="task"`,
`agents.replay.learner.buffer_size=500`; a key under `backbone.`, `learner.`,
`plasticity.` or `memory.` without `agents.` applies to every agent.
"""

from __future__ import annotations

import copy
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agentlab import registry
from agentlab._toml import TOMLDecodeError, load
from agentlab.agent import Agent
from agentlab.config import ConfigError, build_config, parse_value, set_path, suggest
from agentlab.loop import LoopConfig
from agentlab.plugins import load_plugins
from agentlab.rundir import check_name
from agentlab.scenarios.exclude import KEY as EXCLUDE_KEY
from agentlab.scenarios.exclude import check_excluded, exclude_tasks

SEED_MAX = 2**63 - 1
# keys `--resume --set` may change: they act on the tasks still to train, not on what was trained already
RESUME_KEYS = (
    "description", "learner.lr", "learner.epochs", "learner.max_steps", "learner.grad_clip",
    "loop.log_every", "loop.eval_batch_size", "loop.checkpoint", "loop.keep_checkpoints", "loop.stop_after_tasks",
    "loop.device",
)
TOP_KEYS = ("description", "seed", "deterministic", "stream", "loop", "agents", "backbone", "learner", "plasticity", "memory")
AGENT_KEYS = ("backbone", "learner", "plasticity", "memory")
DEFAULT_RECIPE = "digits-split"


def recipes_dir() -> Path:
    return Path(str(importlib.resources.files("agentlab") / "recipes"))


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.toml"))}


def read_recipe(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(recipe name, raw table) for a shipped recipe name or a path to a TOML file."""
    shipped = shipped_recipes()
    path = Path(name_or_path)
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}" + ("" if path.suffix == ".toml" else " (a recipe file ends in .toml)"))
    else:
        raise ConfigError(
            f"unknown recipe {name_or_path!r}" + suggest(name_or_path, shipped)
            + f"; shipped recipes: {', '.join(shipped)}; or give a path to a .toml file"
        )
    try:
        with open(path, "rb") as f:
            table = load(f)
    except TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {path} is not UTF-8 text ({e.reason} at byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"recipe {path} cannot be read: {e.strerror or e}") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} nests arrays or tables too deeply to read") from None
    check_depth(table, f"recipe {path}")
    return path.stem, table


MAX_DEPTH = 32


def check_depth(value: Any, what: str) -> None:
    """Refuse values nested deeper than `MAX_DEPTH` (no recipe needs it; copying and checking them would recurse)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            raise ConfigError(f"{what} nests arrays or tables more than {MAX_DEPTH} deep")
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)


def apply_overrides(table: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `table` with each `key=value` applied (agent-level keys broadcast to every agent)."""
    table = copy.deepcopy(table)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value (for example --set learner.lr=0.01)")
        key, text = item.split("=", 1)
        key, value = key.strip(), parse_value(text.strip())
        check_depth(value, f"--set {key}")
        head = key.split(".", 1)[0]
        if head not in TOP_KEYS:
            raise ConfigError(f"--set {key}: unknown key {head!r}" + suggest(head, TOP_KEYS) + f"; top-level keys: {', '.join(TOP_KEYS)}")
        if head in AGENT_KEYS and "agents" in table:
            if not isinstance(table["agents"], dict):
                raise ConfigError(f"--set {key}: agents={table['agents']!r} is not a table of agents")
            for label in table["agents"]:
                set_path(table["agents"][label], key, value)
        else:
            set_path(table, key, value)
    return table


@dataclass
class Resolved:
    """A recipe after overrides and checks, ready to build."""

    name: str
    table: dict[str, Any]
    seed: int
    deterministic: bool
    loop: LoopConfig
    agents: dict[str, dict[str, Any]]


def resolve(name: str, table: dict[str, Any]) -> Resolved:
    if not isinstance(table, dict):
        raise ConfigError(f"recipe {name!r} must be a table of keys, got {type(table).__name__}")
    check_depth(table, f"recipe {name!r}")
    for key in table:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown key {key!r} in recipe {name!r}" + suggest(key, TOP_KEYS) + f"; allowed: {', '.join(TOP_KEYS)}")
    if not isinstance(table.get("description", ""), str):
        raise ConfigError(f"description={table['description']!r} is not allowed: description must be a string")
    stream = table.get("stream")
    if not isinstance(stream, dict) or "name" not in stream:
        got = "" if stream is None else f" (stream={stream!r})"
        raise ConfigError(f"recipe {name!r} needs a [stream] table with a 'name'{got}")
    _check_component_name(stream, "stream")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed!r} is not allowed: seed must be an integer in [0, 2**63 - 1]")
    det = table.get("deterministic", False)
    if not isinstance(det, bool):
        raise ConfigError(f"deterministic={det!r} is not allowed: deterministic must be true or false")
    loop = build_config(LoopConfig, _table(table.get("loop", {}), "loop"), where="loop")
    if "agents" in table:
        if any(k in table for k in AGENT_KEYS):
            raise ConfigError(f"recipe {name!r} has both [agents.*] and top-level {AGENT_KEYS}: use one form")
        agents = dict(_table(table["agents"], "agents"))
        for label in agents:
            check_name(label, "agent label")
    else:
        agents = {name: {k: table[k] for k in AGENT_KEYS if k in table}}
        check_name(name, "recipe name", " (it is the label of the recipe's only agent: rename the file or use [agents.<label>])")
    if not agents:
        raise ConfigError(f"recipe {name!r} defines no agent")
    for label, spec in agents.items():
        where = f"agents.{label}"
        _table(spec, where)
        for k in spec:
            if k not in AGENT_KEYS:
                raise ConfigError(f"unknown key {where}.{k!r}" + suggest(k, AGENT_KEYS) + f"; allowed: {', '.join(AGENT_KEYS)}")
        for k in ("backbone", "learner"):
            if k not in spec:
                raise ConfigError(f"{where} needs a {k} table with a 'name'")
            _check_component_name(_table(spec[k], f"{where}.{k}"), f"{where}.{k}")
        for k in ("plasticity", "memory"):
            items = spec.get(k, [])
            if not isinstance(items, list):
                raise ConfigError(f"{where}.{k}={items!r} is not allowed: {k} must be a list of tables ([[{k}]])")
            for n, item in enumerate(items):
                _check_component_name(_table(item, f"{where}.{k}.{n}"), f"{where}.{k}.{n}")
    return Resolved(name, table, seed, det, loop, agents)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}={value!r} is not allowed: {where} must be a table")
    return value


def _check_component_name(table: dict[str, Any], where: str) -> None:
    if "name" not in table:
        raise ConfigError(f"{where} needs a 'name' key")
    if not isinstance(table["name"], str):
        raise ConfigError(f"{where}.name={table['name']!r} is not allowed: a component's name is a string")


def check_resume_overrides(overrides: list[str]) -> None:
    """`--resume --set` may change only `RESUME_KEYS` (with or without `agents.<label>.`); the rest are refused in
    one message that lists them."""
    refused = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        short = ".".join(parts[2:]) if parts[0] == "agents" and len(parts) > 2 else key
        if short not in RESUME_KEYS:
            refused.append(key)
    if refused:
        raise ConfigError(
            f"--resume --set {', '.join(refused)}: these keys change what was already trained and cannot change on "
            f"resume (start a new run instead); allowed on resume: {', '.join(RESUME_KEYS)}"
        )


def check_components(resolved: Resolved) -> None:
    """Check every component's name and config without building anything heavy."""
    load_plugins()
    registry.get("stream", resolved.table["stream"]["name"], where="stream")
    st = dict(resolved.table["stream"])
    check_excluded(st.pop(EXCLUDE_KEY, []))
    build_config(registry.get("stream", st.pop("name")).config_cls, st, where="stream")
    for label, spec in resolved.agents.items():
        for kind in ("backbone", "learner"):
            t = dict(spec[kind])
            where = f"agents.{label}.{kind}"
            if "name" not in t:
                raise ConfigError(f"{where} needs a 'name' key")
            build_config(registry.get(kind, t.pop("name"), where=where).config_cls, t, where=where)
        for kind in ("plasticity", "memory"):
            items = spec.get(kind, [])
            if not isinstance(items, list):
                raise ConfigError(f"agents.{label}.{kind} must be a list of tables ([[{kind}]])")
            for n, item in enumerate(items):
                t = dict(item)
                where = f"agents.{label}.{kind}.{n}"
                if "name" not in t:
                    raise ConfigError(f"{where} needs a 'name' key")
                build_config(registry.get(kind, t.pop("name"), where=where).config_cls, t, where=where)


def build_stream(resolved: Resolved, env: registry.BuildEnv) -> Any:
    load_plugins()
    table = dict(resolved.table["stream"])
    excluded = table.pop(EXCLUDE_KEY, [])  # any stream: `agentlab.scenarios.exclude`
    stream = _guard("stream", table, lambda: registry.build("stream", table, env, where="stream"))
    return exclude_tasks(stream, excluded)


def _guard(where: str, table: dict[str, Any], make: Callable[[], Any]) -> Any:
    """`make()`, with a size the machine cannot hold (an allocation that fails, a size that overflows) turned into
    a `ConfigError` naming the component and its settings."""
    import torch

    try:
        return make()
    except (MemoryError, OverflowError, torch.OutOfMemoryError) as e:
        error: BaseException = e
    except RuntimeError as e:
        if not any(w in str(e) for w in SIZE_ERRORS):
            raise
        error = e
    lines = str(error).strip().splitlines()
    why = (lines[0] if lines else type(error).__name__)[-200:]
    sizes = ", ".join(f"{k}={v!r}" for k, v in table.items() if k != "name") or "(defaults)"
    raise ConfigError(f"{where} cannot be built with these sizes ({why}); check: {sizes}")


# what torch's allocator and shape checks say about a size no machine holds
SIZE_ERRORS = ("allocate", "overflow", "out of memory", "too large", "Storage size", "negative dimension")


def build_agent(label: str, spec: dict[str, Any], env: registry.BuildEnv) -> Agent:
    where = f"agents.{label}"
    load_plugins()

    def build(kind: str, table: dict[str, Any], at: str) -> Any:
        return _guard(at, table, lambda: registry.build(kind, table, env, where=at))

    backbone = build("backbone", spec["backbone"], f"{where}.backbone")
    plasticity = [build("plasticity", t, f"{where}.plasticity.{i}") for i, t in enumerate(spec.get("plasticity", []))]
    memory = [build("memory", t, f"{where}.memory.{i}") for i, t in enumerate(spec.get("memory", []))]
    learner = build("learner", spec["learner"], f"{where}.learner")
    sizes = {k: spec[k] for k in ("plasticity", "memory") if spec.get(k)}
    shape = getattr(env.stream, "input_shape", None)
    return _guard(where, sizes, lambda: Agent(backbone, plasticity=plasticity, memory=memory, learner=learner, label=label,
                                              input_shape=shape))
