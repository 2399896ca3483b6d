"""`agentlab forget RUN_DIR --task K`: a new run directory whose agents are as if task K had never been in the stream."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentlab.commands.common import add_data_root, add_threads

HELP = "remove one task (or person) from a finished run's agents, exactly, into a new run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `agentlab run` (read, never changed)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=int, metavar="K", help="the id of the task to forget")
    which.add_argument("--person", metavar="NAME", help="on a personalization stream: the person to forget")
    p.add_argument("--agent", action="append", help="forget in this agent only (repeatable; default: every agent of the run)")
    p.add_argument("--how", choices=("auto", "drop", "retrain"), default="auto",
                   help="drop: each module removes the task's state itself (isolation methods, seconds); retrain: train "
                        "the tasks after it again from the checkpoint before it (exact for any learner); auto (default): "
                        "drop where it is exact, else retrain")
    p.add_argument("--verify", action="store_true",
                   help="also train the stream without the task from scratch and compare, bit for bit")
    p.add_argument("--out", help="folder for the new run directory (default: the folder holding RUN_DIR)")
    add_data_root(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while retraining")
    add_threads(p)


def main(args: argparse.Namespace) -> int:
    from agentlab.forgetting import ForgetRequest, forget, format_report

    req = ForgetRequest(
        run_dir=Path(args.run_dir), task=args.task, person=args.person, agents=args.agent, how=args.how,
        verify=args.verify, out_root=Path(args.out) if args.out else None,
        data_root=Path(args.data_root) if args.data_root else None, progress=not args.no_progress,
    )
    new_dir, body = forget(req, notify=lambda line: print(line, file=sys.stderr))
    print(format_report(body))
    print(f"\nrun directory: {new_dir}   (report: {new_dir / 'forget.json'})")
    return 0
