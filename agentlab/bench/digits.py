"""`digits`: the embedded default recipe as a benchmark (fine-tuning, replay, joint on 8x8 digits)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agentlab import recipe as recipes
from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.registry import BuildEnv


@register_bench("digits")
def bench_digits(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Class-incremental 8x8 digits: how much fine-tuning forgets and replay keeps."""
    name, table = recipes.read_recipe("digits-split")
    overrides = [f"seed={args.seed}"] + (["learner.epochs=1"] if args.quick else [])
    resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
    from agentlab.runner import run_recipe

    with tempfile.TemporaryDirectory() as tmp:
        _, results = run_recipe(resolved, run_dir=Path(tmp) / "run")
    metrics, rows = {}, []
    for label, r in results.items():
        metrics[f"{label}_avg_acc"] = r.metrics["avg_acc"]
        metrics[f"{label}_forgetting"] = r.metrics["forgetting"]
        rows.append({"agent": label, "avg_acc": r.metrics["avg_acc"], "bwt": r.metrics["bwt"],
                     "forgetting": r.metrics["forgetting"], "train_s": r.timings["train_s"]})
    ok = metrics["replay_avg_acc"] > metrics["finetune_avg_acc"]
    return BenchResult(metrics, rows, {"replay beats fine-tuning": "met" if ok else "NOT met"})
