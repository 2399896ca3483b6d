"""`sweep-scaling`: how well a sweep of independent runs uses k cores through Ray.

N runs of the embedded default recipe (seeds 0..N-1, N = 2k) as one sweep, three times:
in this process one after another (no Ray: the reference), on a local Ray instance with 1 CPU (one run at a
time), and on one with k CPUs (k runs at a time), k = the cores this process may use. Each run takes one CPU
and one PyTorch thread. The timed part is `run_sweep` (dispatch, the runs, the manifest and HPARAMS writes);
Ray's start-up (`ray.init`) and the warm-up of its workers (one short run on each: imports, the registry,
first-call costs; this process makes the same warm-up run before its own timing) are measured apart, as a user
pays them once per sweep, not per run.

    parallel efficiency = seconds_1 / (k * seconds_k)        goal: >= 0.8 at k = 2

Metrics: efficiency_k, k, runs, seconds_1, seconds_k, seconds_local, ray_startup_s (init of the k-CPU
instance), ray_warmup_s. Quick: the default recipe with 1 epoch per task instead of 10, same N. The runs are
timed wall-clock: on a machine that other processes share the figure measures the sharing too.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.registry import BuildEnv


def _points(quick: bool, n: int) -> list[Any]:
    from agentlab import recipe as recipes
    from agentlab.sweep import expand

    name, table = recipes.read_recipe(recipes.DEFAULT_RECIPE)
    if quick:
        table = recipes.apply_overrides(table, ["learner.epochs=1"])
    return expand(name, table, {}, list(range(n)))


def _warm_points(n: int) -> list[Any]:
    """One short run per worker (2 tasks, 1 epoch): the first run in a process pays imports, the registry and
    first-call costs; the warm-up pays them so that the timed runs do not."""
    from agentlab import recipe as recipes
    from agentlab.sweep import expand

    name, table = recipes.read_recipe(recipes.DEFAULT_RECIPE)
    table = recipes.apply_overrides(table, ["learner.epochs=1", "stream.classes_per_task=5"])
    return expand(name, table, {}, list(range(1000, 1000 + n)))


def _timed_sweep(root: Path, points: list[Any], executor: Any, data_root: Path | None) -> float:
    from agentlab.sweep import open_sweep, run_sweep

    shutil.rmtree(root, ignore_errors=True)
    with open_sweep(root, create=True, info={"recipe": points[0].recipe}) as sweep:
        t0 = time.perf_counter()
        entries = run_sweep(sweep, points, executor, data_root=data_root, report=lambda line: print(f"  {line}", flush=True))
        seconds = time.perf_counter() - t0
    bad = [f"{n}: {e['status']}: {e['message']}" for n, e in entries.items() if e["status"] != "completed"]
    if bad:
        raise RuntimeError("sweep-scaling needs every run to complete; " + "; ".join(bad))
    return seconds


@register_bench("sweep-scaling")
def bench_sweep_scaling(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """N default runs on 1 and on k Ray workers (k = cores): parallel efficiency, Ray start-up apart."""
    from agentlab.sweep import LocalExecutor, cpu_count
    from agentlab.sweep_ray import RayExecutor

    k = cpu_count()
    n = 2 * k
    points = _points(args.quick, n)
    out = Path("runs") / "bench" / ("sweep-scaling-quick" if args.quick else "sweep-scaling")
    torch.set_num_threads(1)

    print(f"{n} runs in this process, one after another (after a warm-up run)", flush=True)
    _timed_sweep(out / "local-warm-up", _warm_points(1), LocalExecutor(), env.data_root)
    seconds_local = _timed_sweep(out / "local", points, LocalExecutor(), env.data_root)
    timings: dict[int, dict[str, float]] = {}
    for workers in sorted({1, k}):
        print(f"{n} runs on a local Ray instance with {workers} CPU(s) (after a warm-up run on each worker)", flush=True)
        with RayExecutor(num_cpus=workers, cpus_per_run=1, threads=1) as ex:
            warm_s = _timed_sweep(out / f"ray-{workers}-warm-up", _warm_points(workers), ex, env.data_root)
            seconds = _timed_sweep(out / f"ray-{workers}", points, ex, env.data_root)
        timings[workers] = {"startup": ex.startup_s, "warmup": warm_s, "seconds": seconds}

    s1, sk = timings[1]["seconds"], timings[k]["seconds"]
    eff = s1 / (k * sk)
    metrics = {"efficiency_k": eff, "k": float(k), "runs": float(n), "seconds_1": s1, "seconds_k": sk, "seconds_local": seconds_local,
               "ray_startup_s": timings[k]["startup"], "ray_warmup_s": timings[k]["warmup"]}
    rows = [{"executor": "local (in-process)", "workers": 1, "seconds": seconds_local, "s_per_run": seconds_local / n,
             "startup_s": 0.0, "warmup_s": 0.0}]
    rows += [{"executor": "ray", "workers": w, "seconds": t["seconds"], "s_per_run": t["seconds"] / n, "startup_s": t["startup"],
              "warmup_s": t["warmup"]} for w, t in timings.items()]
    goals = {f"parallel efficiency >= 0.8 at k = {k}": goal(eff >= 0.8, f"{eff:.2f}")}
    notes = (f"{n} runs of the default recipe{' (1 epoch per task)' if args.quick else ''}, 1 CPU and 1 thread each; "
             f"efficiency = seconds_1 / (k x seconds_k); Ray start-up and worker warm-up are not in the timed part. "
             f"Wall-clock times: a machine shared with other processes lowers the efficiency.")
    return BenchResult(metrics, rows, goals, notes)
