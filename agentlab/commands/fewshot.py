"""`agentlab fewshot --ways N --shots K [RECIPE]`: train an episode learner, report N-way K-shot accuracy.

    agentlab fewshot --ways 5 --shots 1 [--queries 15] [--episodes 1000] [RECIPE] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentlab.commands.common import add_data_root, add_overrides, add_threads
from agentlab.fewshot import DEFAULT_RECIPE
HELP = "train an episode learner and report N-way K-shot accuracy with a 95% CI"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help=f"a recipe with an episode stream (default: {DEFAULT_RECIPE})")
    p.add_argument("--ways", type=int, required=True, help="classes per test episode (N)")
    p.add_argument("--shots", type=int, required=True, help="labelled examples per class (K)")
    p.add_argument("--queries", type=int, help="query examples per class (Q; default: the recipe's)")
    p.add_argument("--episodes", type=int, help="test episodes (default: the recipe's)")
    p.add_argument("--protocol", choices=["standard", "sequential"], help="standard episodes or the MANN sequential protocol")
    p.add_argument("--per-class", type=int, help="examples per class in a sequential episode")
    p.add_argument("--train-episodes", type=int, help="training episodes (sets learner.episodes)")
    add_overrides(p)
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    add_data_root(p)
    add_threads(p)
    p.add_argument("--json", dest="json_path", help="also write the results as JSON here")


def main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.checkpoint import atomic_write_text
    from agentlab.datasets import data_root
    from agentlab.fewshot import format_results, protocol_overrides, run_fewshot
    from agentlab.summary import jsonable

    name, table = recipes.read_recipe(args.recipe or DEFAULT_RECIPE)
    overrides = protocol_overrides(args.ways, args.shots, args.queries, args.episodes, args.protocol, args.per_class)
    if args.train_episodes is not None:
        overrides.append(f"learner.episodes={args.train_episodes}")
    overrides += list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
    stream, results = run_fewshot(resolved, data_root(args.data_root))
    print(format_results(stream, results))
    if args.json_path:
        body = {"recipe": name, "stream": stream.name, "protocol": stream.meta, "seed": resolved.seed,
                "results": [r.__dict__ for r in results]}
        atomic_write_text(Path(args.json_path), json.dumps(jsonable(body), indent=2))
        print(f"JSON: {args.json_path}")
    return 0
