"""Key tables for the docs, generated from the config dataclasses so they cannot drift from the code.

Every config field carries a docstring line (the string literal under it, cleanrl style). This module reads
those lines from the source, and renders one markdown table per component: key, type, default, meaning.

    key_table("plasticity/supsup")     # the table of a registered component (KIND/NAME)
    key_table("loop")                  # the recipe's [loop] table

Pages mark where a table goes; `refresh_text` rewrites everything between the markers:

    <!-- keys: plasticity/supsup -->
    | key | type | default | meaning |
    ...
    <!-- /keys -->

`python -m agentlab.docs_keys [FILE ...]` refreshes README.md and docs/*.md in place (or the files given);
`--check` only reports the stale ones (exit code 1). `agentlab list NAME` prints the same table.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from agentlab.config import ConfigError

MARKER = re.compile(r"(<!-- keys: (?P<target>[^ ]+) -->\n)(?P<body>.*?)(<!-- /keys -->)", re.DOTALL)
REFRESH = "python -m agentlab.docs_keys"
# Recipe tables that are not registered components: target name -> (module, class).
SPECIAL = {"loop": ("agentlab.loop", "LoopConfig"), "moe-layer": ("agentlab.backbones.moe", "MoEConfig")}


@lru_cache(maxsize=None)
def _own_field_docs(cls: type) -> dict[str, str]:
    """Docstring of each field that `cls` itself declares (not its bases), whitespace collapsed."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    docs: dict[str, str] = {}
    body = node.body if node is not None else []
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """The docstring line of every field of the dataclass `cls`, inherited fields included."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            out.update(_own_field_docs(base))
    return out


def type_text(tp: Any) -> str:
    """A field's type as a recipe writer reads it: `int`, `float`, `"a" | "b"`, `list[int]`, `table`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(_toml(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list[{type_text(args[0])}]" if args else "list"
    if origin in (dict, typing.Mapping) or tp is dict:
        return "table"
    if tp is type(None):
        return "none"
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return f"table ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _toml(v: Any) -> str:
    """A value written as in a recipe (TOML): true, 0.001, "text", [1, 2], {}."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if v is None:
        return "none"
    if dataclasses.is_dataclass(v):
        return "{...}"
    return repr(v)


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _toml(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _toml(f.default_factory())  # type: ignore[misc]
    return "required"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_for(cls: type) -> str:
    """The markdown key table of the config dataclass `cls` (fields in declaration order, bases first)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        lines.append(f"| `{f.name}` | {_cell(type_text(hints[f.name]))} | `{_cell(default_text(f))}` | "
                     f"{_cell(docs.get(f.name, ''))} |")
    return "\n".join(lines) + "\n"


def config_class(target: str) -> type:
    """The config dataclass a target names: `KIND/NAME` of a registered component, or `loop`."""
    from agentlab import registry
    from agentlab.plugins import load_plugins

    if target in SPECIAL:
        import importlib

        module, name = SPECIAL[target]
        return getattr(importlib.import_module(module), name)
    kind, sep, name = target.partition("/")
    if not sep or kind not in registry.KINDS:
        raise ConfigError(f"key table target {target!r} is not allowed: write KIND/NAME (KIND one of "
                          f"{', '.join(registry.KINDS)}) or one of {', '.join(SPECIAL)}")
    load_plugins()
    return registry.get(kind, name, where=target).config_cls


def key_table(target: str) -> str:
    return table_for(config_class(target))


def refresh_text(text: str) -> str:
    """`text` with every marked key table regenerated."""
    return MARKER.sub(lambda m: m.group(1) + key_table(m.group("target")) + m.group(4), text)


def targets(text: str) -> list[str]:
    return [m.group("target") for m in MARKER.finditer(text)]


def default_pages(root: Path) -> list[Path]:
    """README.md and every page of docs/ (new pages are picked up without a list to edit)."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def stale_pages(paths: list[Path]) -> list[Path]:
    return [p for p in paths if refresh_text(p.read_text()) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in args
    paths = [Path(a) for a in args if a != "--check"] or default_pages(Path.cwd())
    stale = stale_pages(paths)
    for p in stale:
        if check_only:
            print(f"stale key tables: {p}")
        else:
            p.write_text(refresh_text(p.read_text()))
            print(f"refreshed {p}")
    return 1 if check_only and stale else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
