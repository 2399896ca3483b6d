"""`fnnsp`: FNNSP controller masks on >= 10 binary pair tasks from MNIST and Fashion-MNIST (task given).

Goal: average accuracy >= 95% (the FNNSP paper reports 86.6%), backward transfer >= -0.5
points, and the fraction of weights each task updates reported. Quick: 2,000 training
and 500 test examples per task.
"""

from __future__ import annotations

import time

import numpy as np

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.bench import run_recipe_table
from agentlab.registry import BuildEnv


@register_bench("fnnsp")
def bench_fnnsp(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """FNNSP on the fnnsp-pairs stream beside fine-tuning."""
    overrides = ["stream.max_per_task=2000", "stream.max_eval_per_task=500"] if args.quick else []
    t0 = time.perf_counter()
    runs = run_recipe_table("fnnsp", overrides, args)
    wall = time.perf_counter() - t0
    r, agent = runs["fnnsp"]
    fracs = agent.plasticity[0].frac_updated  # task -> fraction of backbone weights changed by that task
    metrics = {"avg_acc": r.metrics["avg_acc"], "bwt": r.metrics["bwt"],
               "frac_weights_updated": float(np.mean(list(fracs.values())))}
    rows = [{"agent": k, "avg_acc": v.metrics["avg_acc"], "bwt": v.metrics["bwt"], "train_s": v.timings["train_s"]}
            for k, (v, _) in runs.items()]
    goals = {
        "avg_acc >= 95%": goal(metrics["avg_acc"] >= 0.95, f"{100 * metrics['avg_acc']:.2f}%"),
        "bwt >= -0.5 points": goal(metrics["bwt"] >= -0.005, f"{100 * metrics['bwt']:+.2f} points"),
    }
    per_task = ", ".join(f"{t}: {100 * f:.1f}%" for t, f in sorted(fracs.items()))
    return BenchResult(metrics, rows, goals, f"wall {wall:.0f} s; weights updated per task: {per_task}")
