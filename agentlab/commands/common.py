"""What several subcommands share: their common flags and the process settings those flags make."""

from __future__ import annotations

import argparse
import os

from agentlab.errors import UserError


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, help="PyTorch CPU threads (default: $AGENTLAB_THREADS, else PyTorch's choice)")


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="where data sets live (default: $AGENTLAB_DATA, else ~/.cache/agentlab/data)")


def add_device(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    p.add_argument("--device", default=default,
                   help="torch device to train on: cpu, cuda or cuda:N" + (f" (default: {default})" if default else ""))


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set learner.lr=0.01 (repeatable)")


def set_threads(n: int | None) -> None:
    """CPU threads for PyTorch. On a busy 2-core machine its default of one thread per core
    can spin-wait against other processes; small models run fastest with 1 thread."""
    if n is None and os.environ.get("AGENTLAB_THREADS"):
        try:
            n = int(os.environ["AGENTLAB_THREADS"])
        except ValueError:
            raise UserError(f"AGENTLAB_THREADS={os.environ['AGENTLAB_THREADS']!r} is not allowed: an integer >= 1") from None
    if n is None:
        return
    if n < 1:
        raise UserError(f"--threads={n} is not allowed: threads must be an integer >= 1")
    import torch

    torch.set_num_threads(n)
