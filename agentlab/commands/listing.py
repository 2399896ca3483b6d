"""`agentlab list [NAME]`: shipped recipes, every registered component and the benchmarks; with NAME, one of them.

`agentlab list supsup` (or `agentlab list plasticity/supsup`, where a name is registered under two kinds) prints the
component's key table, the same one the docs carry (`agentlab.docs_keys`); `agentlab list loop` the recipe's
`[loop]` keys; a recipe's name prints its file.
"""

from __future__ import annotations

import argparse

from agentlab.errors import UserError

HELP = "list recipes, registered components and benchmarks; with NAME, the keys of one"
HEADINGS = {"plasticity": "plasticity:", "memory": "memory:", "bench": "benchmarks:"}
USE = {"stream": '[stream] name = "{}"', "backbone": 'backbone = {{ name = "{}", ... }}',
       "plasticity": 'plasticity = [ {{ name = "{}", ... }} ]', "memory": 'memory = [ {{ name = "{}", ... }} ]',
       "learner": 'learner = {{ name = "{}", ... }}'}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a component (NAME or KIND/NAME), `loop`, a recipe or a benchmark: print its keys or its file")


def main(args: argparse.Namespace) -> int:
    from agentlab.plugins import load_benchmarks

    load_benchmarks()
    if args.name:
        print(describe(args.name), end="")
        return 0
    from agentlab import recipe as recipes
    from agentlab import registry
    from agentlab._toml import load

    print("recipes:")
    for name, path in recipes.shipped_recipes().items():
        with open(path, "rb") as f:
            desc = load(f).get("description", "")
        print(f"  {name:<24} {desc}")
    for kind in registry.KINDS:
        print(HEADINGS.get(kind, f"{kind}s:"))
        for name, e in sorted(registry.entries(kind).items()):
            print(f"  {name:<24} {e.doc}")
    print("\n`agentlab list NAME` prints the keys of one component (KIND/NAME where a name has two kinds).")
    return 0


def describe(name: str) -> str:
    """What `agentlab list NAME` prints: a component's key table, the loop's keys, a recipe's file, a benchmark's use."""
    from agentlab import docs_keys
    from agentlab import recipe as recipes
    from agentlab import registry
    from agentlab.config import suggest

    if name in docs_keys.SPECIAL:
        return f"[{name}] keys of a recipe\n\n" + docs_keys.key_table(name)
    kind, sep, short = name.rpartition("/")
    kinds = [kind] if sep else [k for k in registry.KINDS if short in registry.entries(k)]
    if sep and kind not in registry.KINDS:
        raise UserError(f"{name!r}: {kind!r} is not a kind; kinds are {', '.join(registry.KINDS)}")
    shipped = recipes.shipped_recipes()
    blocks = []
    for k in kinds:
        e = registry.get(k, short, where=name)
        if k == "bench":
            blocks.append(f"benchmark {short}: {e.doc}\n\nrun: agentlab bench {short} [--quick] [--json PATH] "
                          f"(options: agentlab bench --help)\n")
            continue
        cls = e.config_cls
        blocks.append(f"{k} {short}: {e.doc}\nin a recipe: {USE[k].format(short)}   ({cls.__module__}.{cls.__qualname__})\n\n"
                      + docs_keys.table_for(cls))
    if not sep and short in shipped:
        blocks.append(f"recipe {short}: {shipped[short]}\n\n" + open(shipped[short]).read())
    if not blocks:
        known = set(shipped) | set(docs_keys.SPECIAL) | {n for k in registry.KINDS for n in registry.entries(k)}
        raise UserError(f"{name!r} is not a registered component, a recipe or `loop`" + suggest(short, known)
                        + "; `agentlab list` shows every name")
    return "\n".join(blocks)
