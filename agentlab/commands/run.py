"""`agentlab run [RECIPE]`: every agent of a recipe over its stream, into a new run directory."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from pathlib import Path

from agentlab.commands.common import add_data_root, add_device, add_overrides, add_threads
from agentlab.errors import UserError

HELP = "run a recipe (default: the embedded 8x8-digits comparison)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help="a shipped recipe name (see `agentlab list`) or a .toml path")
    add_overrides(p)
    p.add_argument("--out", default="runs", help="folder under which the run directory is created (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted run from its last usable checkpoint; "
                   "--set may change only keys that do not change what was trained (learner.lr, learner.epochs, "
                   "learner.max_steps, learner.grad_clip, loop.log_every, ...)")
    p.add_argument("--restart", action="store_true",
                   help="with --resume: an agent whose checkpoints are all unusable is trained again from task 0 "
                        "(without it, --resume stops with exit code 2 and says what it found)")
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    p.add_argument("--deterministic", action="store_true", help="ask PyTorch for deterministic kernels")
    add_data_root(p)
    add_device(p, default=None)
    p.add_argument("--agent", action="append", help="run only this agent of the recipe (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        # a warning (a damaged checkpoint passed over on --resume) is one line for the user, not a code location
        warnings.showwarning = lambda message, *a, **k: print(f"agentlab: warning: {message}", file=sys.stderr)
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.datasets import data_root
    from agentlab.errors import os_error_text
    from agentlab.report import run_report
    from agentlab.runner import load_run_config, run_recipe
    from agentlab.summary import read_summary

    if hasattr(signal, "SIGXFSZ"):  # over `ulimit -f` a write fails with EFBIG (reported) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resume_overrides: list[str] = []
    if args.resume:
        run_dir = Path(args.resume)
        if args.recipe or args.seed is not None or args.deterministic:
            raise UserError("--resume continues a run with its saved config; do not combine it with a recipe, --seed or "
                            "--deterministic")
        name, table, root, only = load_run_config(run_dir)
        args.agent = args.agent or only  # the agents the run was started with
        resume_overrides = list(args.overrides) + ([f"loop.device={json.dumps(args.device)}"] if args.device is not None else [])
        recipes.check_resume_overrides(resume_overrides)
        resolved = recipes.resolve(name, recipes.apply_overrides(table, resume_overrides))
        if args.data_root:
            root = Path(args.data_root)
        elif root is None or not root.is_dir():
            root = data_root()  # the saved one is not here (a run directory from another machine)
    else:
        if args.restart:
            raise UserError("--restart goes with --resume RUN_DIR (a new run starts from task 0 anyway)")
        name, table = recipes.read_recipe(args.recipe or recipes.DEFAULT_RECIPE)
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.deterministic:
            overrides.append("deterministic=true")
        if args.device is not None:
            overrides.append(f"loop.device={json.dumps(args.device)}")
        resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
        root = data_root(args.data_root)
        run_dir = None
    t0 = time.perf_counter()
    try:
        run_dir, results = run_recipe(
            resolved, out_root=Path(args.out), run_dir=run_dir, resume=bool(args.resume), restart=args.restart,
            data_root=root, progress=not args.no_progress, only=args.agent, resume_overrides=resume_overrides,
        )
    except UserError:
        raise  # bad input that is also an OSError (a data file missing): exit 2 with its own message
    except OSError as e:  # before any agent started: the run directory or its config.json could not be written
        print(f"agentlab: error: cannot write {os_error_text(e)}", file=sys.stderr)
        return 1
    try:
        print(run_report(read_summary(run_dir)))
    except (OSError, ValueError):
        pass  # the summary could not be written: the failure is reported below
    print(f"\nrun directory: {run_dir}   ({time.perf_counter() - t0:.1f} s)")
    print(f"TensorBoard:   tensorboard --logdir {run_dir}   (then open http://localhost:6006/?smoothing=0)")
    bad = [r for r in results.values() if not r.completed]
    for r in bad:
        print(f"agent {r.label}: {r.status}: {r.message}", file=sys.stderr)
        if r.status == "interrupted":
            print(f"resume with: agentlab run --resume {run_dir}", file=sys.stderr)
    return 1 if bad else 0
