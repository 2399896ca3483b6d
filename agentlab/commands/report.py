"""`agentlab report RUN_DIR`: the tables of a finished run again, from its summary.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentlab.errors import UserError

HELP = "print the tables of a finished run from its summary.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `agentlab run`")


def main(args: argparse.Namespace) -> int:
    from agentlab.report import run_report
    from agentlab.summary import read_summary

    try:
        summary = read_summary(Path(args.run_dir))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if "agents" not in summary:
        raise UserError(f"{args.run_dir} holds one agent's summary; give the run directory above it")
    print(run_report(summary))
    return 0
