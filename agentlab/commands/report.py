"""`agentlab report DIR`: a run directory's tables again from its summary.json, or a sweep directory's aggregate."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentlab.errors import UserError

HELP = "print a finished run's tables, or a sweep's means over seeds (and write its report.json and report.csv)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="a run directory written by `agentlab run`, or a sweep directory of `agentlab sweep`")


def main(args: argparse.Namespace) -> int:
    from agentlab.sweep import is_sweep

    if is_sweep(Path(args.run_dir)):
        return _sweep(Path(args.run_dir))
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


def _sweep(root: Path) -> int:
    """One row per grid point and agent: mean, SD and 95% CI over seeds; written beside the manifest."""
    from agentlab.sweep import read_manifest
    from agentlab.sweep_report import aggregate, sweep_report, write_report

    manifest = read_manifest(root)
    rows = aggregate(root, manifest["points"])
    json_path, csv_path = write_report(root, manifest, rows)
    print(sweep_report(root, manifest, rows))
    print(f"\nreport: {json_path}, {csv_path}")
    return 0
