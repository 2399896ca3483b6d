"""`agentlab size STREAM_OR_RECIPE`: the parameters and MLP width the stream's tasks need (the NNCTD estimate).

    agentlab size split-mnist [--set stream.scenario="task"] [--depth 2] [--probe-steps 1500] [--data-root DIR] [--threads N]

Every factor is printed with how it was measured (agentlab.capacity; docs/capacity.md).
"""

from __future__ import annotations

import argparse
import sys
import time

from agentlab.commands.common import add_data_root, add_overrides, add_threads

HELP = "estimate the parameters and MLP width a stream's tasks need (NNCTD)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="STREAM_OR_RECIPE", help="a registered stream (see `agentlab list`), a shipped recipe or a .toml path")
    add_overrides(p)
    p.add_argument("--depth", type=int, default=2, help="hidden layers of the MLP the width is for (default: 2)")
    p.add_argument("--probe-steps", type=int, help="optimiser steps per probe width (default: the estimate's 1500; fewer = faster, noisier)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsamples and probes (default: 0)")
    add_data_root(p)
    add_threads(p)


def main(args: argparse.Namespace) -> int:
    from agentlab import recipe as recipes
    from agentlab import registry
    from agentlab.capacity import CapacityConfig, estimate, stream_data
    from agentlab.config import ConfigError, build_config
    from agentlab.datasets import data_root
    from agentlab.plugins import load_plugins

    load_plugins()
    streams = registry.entries("stream")
    if args.target in streams:
        name, table = args.target, {"stream": {"name": args.target}}
    else:
        try:
            name, table = recipes.read_recipe(args.target)
        except ConfigError as e:
            raise ConfigError(f"{e}; or a registered stream: {', '.join(sorted(streams))}") from None
    table = recipes.apply_overrides(table, list(args.overrides))
    if "stream" not in table or "name" not in table["stream"]:
        raise ConfigError(f"{name!r} has no [stream] table with a 'name'")
    keys = {"depth": args.depth, "seed": args.seed, **({"probe_steps": args.probe_steps} if args.probe_steps is not None else {})}
    cfg = build_config(CapacityConfig, keys, where="size")
    env = registry.BuildEnv(seed=args.seed, data_root=data_root(args.data_root))
    stream = registry.build("stream", table["stream"], env, where="stream")
    x, y, n, k = stream_data(stream, seed=args.seed)
    t0 = time.perf_counter()
    est = estimate(x, y, k, cfg, n_total=n, say=lambda s: print(f"  ... {s}", file=sys.stderr, flush=True))
    print(f"capacity of {name} ({table['stream']['name']}): {n:,} training examples, {k} classes, input {tuple(x.shape[1:])}")
    print(est.report())
    print(f"\nsuggested: backbone = {{ name = \"mlp\", hidden = {[est.width] * args.depth} }}   ({time.perf_counter() - t0:.0f} s)")
    return 0
