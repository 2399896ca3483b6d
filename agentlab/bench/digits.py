"""`digits`: the embedded default recipe as a benchmark (fine-tuning, replay, joint, SupSup with an episodic memory
on 8x8 digits)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agentlab import recipe as recipes
from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.registry import BuildEnv


@register_bench("digits")
def bench_digits(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Class-incremental 8x8 digits: how much fine-tuning forgets, replay keeps, and the composed agent keeps in fewer bytes."""
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
        kept = {kind: sum(m["bytes"] for m in r.ledger[-1]["modules"].values() if m["kind"] == kind) for kind in ("memory", "learner")}
        rows.append({"agent": label, "avg_acc": r.metrics["avg_acc"], "bwt": r.metrics["bwt"],
                     "forgetting": r.metrics["forgetting"], "memory_bytes": kept["memory"], "buffer_bytes": kept["learner"],
                     "train_s": r.timings["train_s"]})
    composed = next(row for row in rows if row["agent"] == "supsup_memory")
    replay = next(row for row in rows if row["agent"] == "replay")
    metrics["supsup_memory_bytes"], metrics["replay_buffer_bytes"] = composed["memory_bytes"], replay["buffer_bytes"]
    goals = {
        "replay beats fine-tuning": goal(metrics["replay_avg_acc"] > metrics["finetune_avg_acc"], ""),
        "SupSup + episodic memory beats replay with no more bytes than replay's buffer": goal(
            metrics["supsup_memory_avg_acc"] > metrics["replay_avg_acc"] and composed["memory_bytes"] <= replay["buffer_bytes"],
            f"{100 * metrics['supsup_memory_avg_acc']:.1f}% in {composed['memory_bytes']:,} B"),
    }
    return BenchResult(metrics, rows, goals)
