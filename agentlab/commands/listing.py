"""`agentlab list`: shipped recipes, every registered component and the benchmarks."""

from __future__ import annotations

import argparse

HELP = "list recipes, registered components and benchmarks"
HEADINGS = {"plasticity": "plasticity:", "memory": "memory:", "bench": "benchmarks:"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab import registry
    from agentlab._toml import load
    from agentlab.plugins import load_benchmarks

    load_benchmarks()
    print("recipes:")
    for name, path in recipes.shipped_recipes().items():
        with open(path, "rb") as f:
            desc = load(f).get("description", "")
        print(f"  {name:<24} {desc}")
    for kind in registry.KINDS:
        print(HEADINGS.get(kind, f"{kind}s:"))
        for name, e in sorted(registry.entries(kind).items()):
            print(f"  {name:<24} {e.doc}")
    return 0
