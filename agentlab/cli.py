"""The `agentlab` command: run recipes, list components, report runs, run benchmarks, few-shot evaluation.

    agentlab run [RECIPE] [--set k=v ...] [--out DIR] [--resume DIR] [--seed N] [--device D] [--threads N]
    agentlab list
    agentlab report RUN_DIR
    agentlab bench NAME [--quick] [--json PATH] [--seed N]
    agentlab fewshot --ways N --shots K [--queries Q] [--episodes E] [RECIPE]

Each subcommand is one module of `agentlab.commands`. Exit codes: 0 success, 1 a run that failed
(NaN loss) or was interrupted, 2 bad input (a message naming the key, the value and what is allowed).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from agentlab.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentlab")
    except PackageNotFoundError:  # a source tree that was not installed
        from agentlab import __version__

        return __version__


def parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per module of `agentlab.commands`."""
    from agentlab.commands import COMMANDS

    p = argparse.ArgumentParser(prog="agentlab", description="Continual-learning agents over task streams.")
    p.add_argument("--version", action="version", version=f"agentlab {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=mod.HELP.replace("%", "%%"), description=mod.HELP.replace("%", "%%"))
        mod.add_arguments(sp)
        sp.set_defaults(_main=mod.main)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from agentlab.commands.common import set_threads

    try:
        set_threads(getattr(args, "threads", None))
        return args._main(args)
    except UserError as e:
        print(f"agentlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `agentlab list | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
