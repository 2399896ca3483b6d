"""`agentlab fewshot`: N-way K-shot accuracy of an episode learner, trained from a recipe or saved in a run directory.

    agentlab fewshot --ways 5 --shots 1 [--queries 15] [--episodes 1000] [RECIPE] [--train-episodes T] [--set k=v ...]
    agentlab fewshot --from RUN_DIR --ways 5 --shots 1 [--episodes 600] [--agent LABEL] [--set stream.k=v ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentlab.commands.common import add_data_root, add_overrides, add_threads
from agentlab.errors import UserError
from agentlab.fewshot import DEFAULT_RECIPE

HELP = "N-way K-shot accuracy with a 95% CI: train an episode learner from a recipe, or evaluate a saved one (--from)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help=f"a recipe with an episode stream (default: {DEFAULT_RECIPE})")
    p.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                   help="evaluate the agents saved in this run directory (their last checkpoints) without training")
    p.add_argument("--agent", action="append", help="with --from: only this agent of the run (repeatable)")
    p.add_argument("--ways", type=int, required=True, help="classes per test episode (N)")
    p.add_argument("--shots", type=int, required=True, help="labelled examples per class (K)")
    p.add_argument("--queries", type=int, help="query examples per class (Q; default: the recipe's)")
    p.add_argument("--episodes", type=int, help="test episodes (default: the recipe's)")
    p.add_argument("--protocol", choices=["standard", "sequential"], help="standard episodes or the MANN sequential protocol")
    p.add_argument("--per-class", type=int, help="examples per class in a sequential episode")
    p.add_argument("--train-episodes", type=int,
                   help="training episodes (sets learner.episodes; default: the recipe's, announced with the time it takes)")
    add_overrides(p)
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    add_data_root(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars and no lines saying what runs")
    p.add_argument("--json", dest="json_path", help="also write the results as JSON here")


def main(args: argparse.Namespace) -> int:
    from agentlab.context import progress_shown

    with progress_shown(not args.no_progress):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.checkpoint import atomic_write_text
    from agentlab.datasets import data_root
    from agentlab.fewshot import format_results, protocol_overrides, run_fewshot, run_saved
    from agentlab.summary import jsonable

    overrides = protocol_overrides(args.ways, args.shots, args.queries, args.episodes, args.protocol, args.per_class)
    if args.from_run:
        flags = (("RECIPE", args.recipe), ("--train-episodes", args.train_episodes), ("--seed", args.seed))
        given = [f for f, v in flags if v is not None]
        if given:
            raise UserError(f"--from evaluates the saved agents as they were trained: drop {', '.join(given)}")
        wrong = [o for o in args.overrides if not o.strip().startswith("stream.")]
        if wrong:
            raise UserError(f"--from: --set may change only the test episodes (stream.* keys), not {', '.join(wrong)}")
        root = Path(args.data_root) if args.data_root else None
        stream, results = run_saved(Path(args.from_run), overrides + list(args.overrides), root, args.agent)
        name = f"--from {args.from_run}"
        seed = None
    else:
        if args.agent:
            raise UserError("--agent goes with --from RUN_DIR (a recipe's agents are all trained)")
        name, table = recipes.read_recipe(args.recipe or DEFAULT_RECIPE)
        if args.train_episodes is not None:
            overrides.append(f"learner.episodes={args.train_episodes}")
        overrides += list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
        stream, results = run_fewshot(resolved, data_root(args.data_root))
        seed = resolved.seed
    print(format_results(stream, results))
    if args.json_path:
        body = {"recipe": name, "stream": stream.name, "protocol": stream.meta, "seed": seed,
                "results": [r.__dict__ for r in results]}
        atomic_write_text(Path(args.json_path), json.dumps(jsonable(body), indent=2))
        print(f"JSON: {args.json_path}")
    return 0
