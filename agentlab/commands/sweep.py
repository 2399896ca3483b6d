"""`agentlab sweep RECIPE --grid KEY=V1,V2 --seeds 0-9`: recipe × grid × seeds as ordinary runs, on Ray or here."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agentlab.commands.common import add_data_root, add_device, add_overrides, add_threads
from agentlab.errors import UserError

HELP = "run a recipe over a grid of settings and seeds (one run directory each), on Ray or one after another"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None,
                   help="a shipped recipe name or a .toml path (default: digits-split; with --resume it may be left out: the saved sweep's)")
    add_overrides(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis: the key as in --set, its values TOML separated by commas, e.g. learner.lr=0.01,0.1 or "
                        "backbone.hidden=[64],[128,128] (repeatable: the grid is the product)")
    p.add_argument("--seeds", metavar="LIST", help="seeds of every grid point: 0-9, 0,3,5 or 0-2,7 (default: the recipe's seed)")
    p.add_argument("--out", metavar="DIR", help="the sweep directory (default: runs/sweeps/<recipe>__<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: finished runs are skipped, interrupted ones resume from their checkpoints")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray: points in parallel on Ray (the [ray] extra); local: one after another in this process (default: ray)")
    p.add_argument("--address", metavar="ADDR", help="join a running Ray cluster: auto, or ray://HOST:10001 (default: start a local instance)")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: every core of this machine)")
    p.add_argument("--cpus-per-run", type=float, metavar="N", help="CPUs Ray reserves for each run (default: 1; also its PyTorch threads)")
    p.add_argument("--gpus-per-run", type=float, metavar="F", help="GPUs Ray reserves for each run, fractions allowed: 0.25 puts 4 runs "
                                                      "on a GPU (default: 0; needs --device cuda)")
    add_data_root(p)
    add_device(p, default=None)
    add_threads(p)


def _executor(args: argparse.Namespace, device: str):
    from agentlab.sweep import LocalExecutor

    if args.executor == "local":
        given = [f for f, v in (("--address", args.address), ("--ray-cpus", args.ray_cpus), ("--cpus-per-run", args.cpus_per_run),
                                ("--gpus-per-run", args.gpus_per_run)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} set Ray's resources; they do nothing with --executor local: drop them or use --executor ray")
        return LocalExecutor()
    from agentlab.sweep_ray import RayExecutor

    gpus = args.gpus_per_run or 0.0
    if gpus > 0 and not device.startswith("cuda"):
        raise UserError(f"--gpus-per-run={gpus:g} reserves GPUs but the runs train on loop.device={device!r}: add --device cuda")
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"loop.device={device!r}: Ray shows a run no GPU unless it reserves one; give --gpus-per-run (e.g. 1 or 0.5)")
    return RayExecutor(address=args.address, num_cpus=args.ray_cpus, cpus_per_run=args.cpus_per_run or 1.0, gpus_per_run=gpus,
                       threads=args.threads)


def main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab.datasets import data_root
    from agentlab.sweep import check_points, default_out, expand, is_sweep, open_sweep, parse_grid, parse_seeds, print_failures, read_manifest, run_sweep
    from agentlab.sweep_report import aggregate, sweep_report, write_report

    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        raise UserError("--resume continues the sweep in --out DIR: give --out")
    if out is not None and out.exists() and not args.resume:
        if is_sweep(out):
            raise UserError(f"{out} already holds a sweep: add --resume to continue it, or choose another --out")
        if any(out.iterdir()):
            raise UserError(f"--out {out} is a folder with other files: give a new or empty folder for the sweep")
    if args.resume and out is not None and not is_sweep(out):
        raise UserError(f"--resume: {out} holds no sweep ({out / 'sweep.json'} is missing)")

    if args.recipe is None and args.resume:  # the saved sweep, as it was
        if args.grid or args.seeds or args.overrides or args.device:
            raise UserError("--resume without a recipe continues the saved sweep; give the recipe too to change --grid, --seeds or --set")
        saved = read_manifest(out)
        name, table, grid, seeds = saved["recipe"], saved["table"], saved["grid"], saved["seeds"]
    else:
        name, table = recipes.read_recipe(args.recipe or recipes.DEFAULT_RECIPE)
        overrides = list(args.overrides)
        if args.device:
            overrides.append(f'loop.device="{args.device}"')
        table = recipes.apply_overrides(table, overrides)
        grid = parse_grid(args.grid)
        seeds = parse_seeds(args.seeds) if args.seeds else [recipes.resolve(name, table).seed]
    points = expand(name, table, grid, seeds)
    check_points(points)  # bad input stops here, before a sweep directory is made
    device = recipes.resolve(name, points[0].table).loop.device
    executor = _executor(args, device)
    out = out or default_out(name)
    root = data_root(args.data_root)
    if is_sweep(out):
        saved = read_manifest(out)
        if saved.get("recipe") != name or saved.get("table") != _json(table):
            raise UserError(f"{out} holds a sweep of recipe {saved.get('recipe')!r} with other settings; "
                            f"resume it with the same recipe and --set, or choose another --out")
    t0 = time.perf_counter()
    print(f"sweep {out}: {len(points)} run{'s' if len(points) != 1 else ''} ({_shape(grid, seeds)}), executor {executor.name}", flush=True)
    try:
        with executor:  # Ray first: a cluster that cannot be joined leaves no sweep directory behind
            if executor.name == "ray":
                print(f"Ray ready in {executor.startup_s:.1f} s: {executor.slots} run(s) at a time", flush=True)
            with open_sweep(out, create=True, info={"recipe": name, "table": _json(table), "grid": grid, "seeds": seeds}) as sweep:
                sweep.manifest.update(grid=_union_grid(sweep.manifest.get("grid") or {}, grid),
                                      seeds=sorted(set(sweep.manifest.get("seeds") or []) | set(seeds)))
                try:
                    entries = run_sweep(sweep, points, executor, data_root=root)
                except KeyboardInterrupt:
                    print(f"\ninterrupted; continue with: agentlab sweep --resume --out {sweep.root}", file=sys.stderr)
                    return 1
                rows = aggregate(sweep.root, sweep.manifest["points"])
                paths = write_report(sweep.root, sweep.manifest, rows)
    except KeyboardInterrupt:  # during Ray's start-up
        print("\ninterrupted before any run started", file=sys.stderr)
        return 1
    print()
    print(sweep_report(sweep.root, sweep.manifest, rows))
    print(f"\nsweep directory: {sweep.root}   ({time.perf_counter() - t0:.1f} s)")
    print(f"report:          {paths[0]}, {paths[1]}")
    print(f"TensorBoard:     tensorboard --logdir {sweep.root}   (HPARAMS: runs under hparams/)")
    if print_failures(entries):
        print(f"run the failed points again with: agentlab sweep --resume --out {sweep.root}", file=sys.stderr)
        return 1
    return 0


def _json(o):
    from agentlab.summary import jsonable

    return jsonable(o)


def _union_grid(old: dict, new: dict) -> dict:
    out = {k: list(v) for k, v in old.items()}
    for k, values in new.items():
        out.setdefault(k, [])
        out[k] += [v for v in values if v not in out[k]]
    return out


def _shape(grid: dict, seeds: list) -> str:
    axes = [f"{len(v)} {k}" for k, v in grid.items()] + [f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"]
    return " x ".join(axes)
