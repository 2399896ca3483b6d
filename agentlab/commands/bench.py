"""`agentlab bench NAME`: run a benchmark and write its JSON (benchmarks are imported only here)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from agentlab.commands.common import add_data_root, add_device, add_threads
from agentlab.errors import UserError

HELP = "run a benchmark and write its JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark name (see `agentlab list`)")
    p.add_argument("--quick", action="store_true", help="small budget, same code, real data (under 2 minutes)")
    p.add_argument("--json", dest="json_path", help="write the result JSON here (default: runs/bench/<name>[-quick].json)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--only", action="append", default=[], metavar="PART[,PART]",
                   help="run only these parts of a long benchmark (e.g. permuted/ewc); spread one benchmark over processes")
    p.add_argument("--resume", action="store_true",
                   help="reuse the parts an earlier or killed invocation completed with the same settings, "
                        "or continue a checkpointed benchmark run (supsup-pmnist)")
    add_data_root(p)
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars and no lines saying what runs")


def _supporting(flag: str) -> list[str]:
    from agentlab import registry

    return sorted(n for n, e in registry.entries("bench").items() if getattr(e.factory, flag, False))


def main(args: argparse.Namespace) -> int:
    from agentlab import registry
    from agentlab.bench import BenchArgs
    from agentlab.checkpoint import atomic_write_text
    from agentlab.context import progress_shown, say
    from agentlab.datasets import data_root
    from agentlab.devices import check_device
    from agentlab.plugins import load_benchmarks
    from agentlab.summary import jsonable, package_versions

    load_benchmarks()
    entry = registry.get("bench", args.name)
    only = tuple(p.strip() for arg in args.only for p in arg.split(",") if p.strip())
    if only and not getattr(entry.factory, "supports_parts", False):
        raise UserError(f"benchmark {args.name!r} has no parts: drop --only (it works with: {', '.join(_supporting('supports_parts'))})")
    if args.resume and not getattr(entry.factory, "supports_resume", False):
        raise UserError(f"benchmark {args.name!r} has nothing to resume: drop --resume (it works with: {', '.join(_supporting('supports_resume'))})")
    if args.device != "cpu" and not getattr(entry.factory, "supports_device", False):
        raise UserError(f"benchmark {args.name!r} runs on the CPU only: drop --device (benchmarks that take it: {', '.join(_supporting('supports_device'))})")
    root = data_root(args.data_root)
    bargs = BenchArgs(quick=args.quick, seed=args.seed, data_root=str(root), only=only, resume=args.resume,
                      device=check_device(args.device))
    env = registry.BuildEnv(seed=args.seed, data_root=root)
    t0 = time.perf_counter()
    with progress_shown(not args.no_progress):  # the loop's and the few-shot trainer's bars, phase lines
        say(f"bench {args.name} ({'quick' if args.quick else 'full'}) started")
        result = entry.factory(bargs, env)
    wall = time.perf_counter() - t0
    mode = "quick" if args.quick else "full"
    body = {"bench": args.name, "mode": mode, "metrics": result.metrics, "rows": result.rows, "goals": result.goals,
            "notes": result.notes, "wall_s": wall, "seed": args.seed, "device": _device_name(bargs.device), "versions": package_versions(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    stem = f"{args.name}{'-quick' if args.quick else ''}{f'-seed{args.seed}' if args.seed else ''}"  # seeds never overwrite each other
    if only:  # a partial result never overwrites the whole benchmark's JSON
        stem += "-only-" + "+".join(p.replace("/", "-") for p in only)
    body["only"] = list(only)
    path = Path(args.json_path) if args.json_path else Path("runs") / "bench" / f"{stem}.json"
    atomic_write_text(path, json.dumps(jsonable(body), indent=2))
    print(f"bench {args.name} ({mode}) in {wall:.1f} s")
    if result.rows:
        keys = list(result.rows[0].keys())
        print("  ".join(f"{k:>14}" for k in keys))
        for row in result.rows:
            print("  ".join(f"{_fmt(row.get(k)):>14}" for k in keys))
    print("metrics:")
    for k, v in result.metrics.items():
        print(f"  {k:<28} {_fmt(v)}")
    for goal, verdict in result.goals.items():
        print(f"  goal: {goal}: {verdict}")
    if result.notes:
        print(result.notes)
    print(f"JSON: {path}")
    return 0


def _device_name(device: str) -> str:
    """What a result JSON records of the device: "cpu", or the GPU's name (timings depend on it)."""
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
