"""The `agentlab` command: run recipes, list components, report runs, run benchmarks.

    agentlab run [RECIPE] [--set k=v ...] [--out DIR] [--resume DIR] [--seed N] [--deterministic]
    agentlab list
    agentlab report RUN_DIR
    agentlab bench NAME [--quick] [--json PATH] [--seed N]
    agentlab fewshot --ways N --shots K [--queries Q] [--episodes E] [RECIPE]

Exit codes: 0 success, 1 a run that failed (NaN loss) or was interrupted, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from agentlab.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentlab", description="Continual-learning agents over task streams.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe (default: the embedded 8x8-digits comparison)")
    r.add_argument("recipe", nargs="?", default=None, help="a shipped recipe name (see `agentlab list`) or a .toml path")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set learner.lr=0.01 (repeatable)")
    r.add_argument("--out", default="runs", help="folder under which the run directory is created (default: runs)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted run from its last checkpoint")
    r.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    r.add_argument("--deterministic", action="store_true", help="ask PyTorch for deterministic kernels")
    r.add_argument("--data-root", help="where data sets live (default: $AGENTLAB_DATA, else ~/.cache/agentlab/data)")
    r.add_argument("--agent", action="append", help="run only this agent of the recipe (repeatable)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--threads", type=int, help="PyTorch CPU threads (default: $AGENTLAB_THREADS, else PyTorch's choice)")

    sub.add_parser("list", help="list recipes, registered components and benchmarks")

    rep = sub.add_parser("report", help="print the tables of a finished run from its summary.json")
    rep.add_argument("run_dir")

    b = sub.add_parser("bench", help="run a benchmark and write its JSON")
    b.add_argument("name", help="benchmark name (see `agentlab list`)")
    b.add_argument("--quick", action="store_true", help="small budget, same code, real data (under 2 minutes)")
    b.add_argument("--json", dest="json_path", help="write the result JSON here (default: runs/bench/<name>[-quick].json)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only", action="append", default=[], metavar="PART[,PART]",
                   help="run only these parts of a long benchmark (e.g. permuted/ewc); spread one benchmark over processes")
    b.add_argument("--resume", action="store_true",
                   help="reuse the parts an earlier or killed invocation completed with the same settings, "
                        "or continue a checkpointed benchmark run (supsup-pmnist)")
    b.add_argument("--data-root", help="where data sets live")
    b.add_argument("--device", default="cpu", help="torch device to train on: cpu (default), cuda or cuda:N; benchmarks that stay on the CPU refuse it")
    b.add_argument("--threads", type=int, help="PyTorch CPU threads (default: $AGENTLAB_THREADS, else PyTorch's choice)")

    from agentlab.fewshot import add_parser as add_fewshot

    add_fewshot(sub)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.report import run_report
    from agentlab.runner import default_data_root, load_run_config, run_recipe
    from agentlab.summary import read_summary

    if args.resume:
        run_dir = Path(args.resume)
        name, table, root = load_run_config(run_dir)
        if args.recipe or args.overrides or args.seed is not None:
            raise UserError("--resume continues a run with its saved config; do not combine it with a recipe, --set or --seed")
        resolved = recipes.resolve(name, table)
        data_root = Path(args.data_root) if args.data_root else (root or default_data_root())
    else:
        name, table = recipes.read_recipe(args.recipe or recipes.DEFAULT_RECIPE)
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.deterministic:
            overrides.append("deterministic=true")
        resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
        data_root = default_data_root(args.data_root)
        run_dir = None
    t0 = time.perf_counter()
    run_dir, results = run_recipe(
        resolved, out_root=Path(args.out), run_dir=run_dir, resume=bool(args.resume), data_root=data_root,
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
    return EXIT_FAILED if bad else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab import registry

    print("recipes:")
    for name, path in recipes.shipped_recipes().items():
        from agentlab._toml import load

        with open(path, "rb") as f:
            desc = load(f).get("description", "")
        print(f"  {name:<24} {desc}")
    for kind in registry.KINDS:
        table = registry.entries(kind)
        print({"plasticity": "plasticity:", "memory": "memory:", "bench": "benchmarks:"}.get(kind, f"{kind}s:"))
        for name, e in sorted(table.items()):
            print(f"  {name:<24} {e.doc}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from agentlab.report import run_report
    from agentlab.summary import read_summary

    try:
        summary = read_summary(Path(args.run_dir))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if "agents" not in summary:
        raise UserError(f"{args.run_dir} holds one agent's summary; give the run directory above it")
    print(run_report(summary))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from agentlab import registry
    from agentlab.bench import BenchArgs, check_device
    from agentlab.checkpoint import atomic_write_text
    from agentlab.runner import default_data_root
    from agentlab.summary import jsonable, package_versions

    entry = registry.get("bench", args.name)
    only = tuple(p.strip() for arg in args.only for p in arg.split(",") if p.strip())
    if only and not getattr(entry.factory, "supports_parts", False):
        with_parts = sorted(n for n, e in registry.entries("bench").items() if getattr(e.factory, "supports_parts", False))
        raise UserError(f"benchmark {args.name!r} has no parts: drop --only (it works with: {', '.join(with_parts)})")
    if args.resume and not getattr(entry.factory, "supports_resume", False):
        with_resume = sorted(n for n, e in registry.entries("bench").items() if getattr(e.factory, "supports_resume", False))
        raise UserError(f"benchmark {args.name!r} has nothing to resume: drop --resume (it works with: {', '.join(with_resume)})")
    if args.device != "cpu" and not getattr(entry.factory, "supports_device", False):
        gpu = sorted(n for n, e in registry.entries("bench").items() if getattr(e.factory, "supports_device", False))
        raise UserError(f"benchmark {args.name!r} runs on the CPU only: drop --device (benchmarks that take it: {', '.join(gpu)})")
    root = default_data_root(args.data_root)
    bargs = BenchArgs(quick=args.quick, seed=args.seed, data_root=str(root), only=only, resume=args.resume,
                      device=check_device(args.device))
    env = registry.BuildEnv(seed=args.seed, data_root=root)
    t0 = time.perf_counter()
    result = entry.factory(bargs, env)
    wall = time.perf_counter() - t0
    mode = "quick" if args.quick else "full"
    body = {"bench": args.name, "mode": mode, "metrics": result.metrics, "rows": result.rows, "goals": result.goals,
            "notes": result.notes, "wall_s": wall, "seed": args.seed, "device": _device_name(bargs.device), "versions": package_versions()}
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
    return EXIT_OK


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


def set_threads(n: int | None) -> None:
    """CPU threads for PyTorch. On a busy 2-core machine its default of one thread per core
    can spin-wait against other processes; small models run fastest with 1 thread."""
    import os

    if n is None and os.environ.get("AGENTLAB_THREADS"):
        try:
            n = int(os.environ["AGENTLAB_THREADS"])
        except ValueError:
            raise UserError(f"AGENTLAB_THREADS={os.environ['AGENTLAB_THREADS']!r} is not an integer") from None
    if n is None:
        return
    if n < 1:
        raise UserError(f"--threads={n} is not allowed: threads must be an integer >= 1")
    import torch

    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from agentlab.fewshot import cmd_fewshot

    commands = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "bench": cmd_bench, "fewshot": cmd_fewshot}
    try:
        set_threads(getattr(args, "threads", None))
        return commands[args.command](args)
    except UserError as e:
        print(f"agentlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
