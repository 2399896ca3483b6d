"""`agentlab run [RECIPE]`: every agent of a recipe over its stream, into a new run directory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agentlab.commands.common import add_data_root, add_device, add_overrides, add_threads
from agentlab.errors import UserError

HELP = "run a recipe (default: the embedded 8x8-digits comparison)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help="a shipped recipe name (see `agentlab list`) or a .toml path")
    add_overrides(p)
    p.add_argument("--out", default="runs", help="folder under which the run directory is created (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted run from its last checkpoint")
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    p.add_argument("--deterministic", action="store_true", help="ask PyTorch for deterministic kernels")
    add_data_root(p)
    add_device(p, default=None)
    p.add_argument("--agent", action="append", help="run only this agent of the recipe (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)


def main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.datasets import data_root
    from agentlab.report import run_report
    from agentlab.runner import load_run_config, run_recipe
    from agentlab.summary import read_summary

    if args.resume:
        run_dir = Path(args.resume)
        name, table, root = load_run_config(run_dir)
        if args.recipe or args.overrides or args.seed is not None or args.device:
            raise UserError("--resume continues a run with its saved config; do not combine it with a recipe, --set, --seed or --device")
        resolved = recipes.resolve(name, table)
        root = Path(args.data_root) if args.data_root else (root or data_root())
    else:
        name, table = recipes.read_recipe(args.recipe or recipes.DEFAULT_RECIPE)
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.deterministic:
            overrides.append("deterministic=true")
        if args.device:
            overrides.append(f'loop.device="{args.device}"')
        resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
        root = data_root(args.data_root)
        run_dir = None
    t0 = time.perf_counter()
    run_dir, results = run_recipe(
        resolved, out_root=Path(args.out), run_dir=run_dir, resume=bool(args.resume), data_root=root,
        progress=not args.no_progress, only=args.agent,
    )
    print(run_report(read_summary(run_dir)))
    print(f"\nrun directory: {run_dir}   ({time.perf_counter() - t0:.1f} s)")
    print(f"TensorBoard:   tensorboard --logdir {run_dir}")
    bad = [r for r in results.values() if not r.completed]
    for r in bad:
        print(f"agent {r.label}: {r.status}: {r.message}", file=sys.stderr)
        if r.status == "interrupted":
            print(f"resume with: agentlab run --resume {run_dir}", file=sys.stderr)
    return 1 if bad else 0
