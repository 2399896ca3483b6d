"""`compose`: compositions of plasticity and memory modules on Split MNIST class-incremental, beside their parts.

Runs the shipped recipe `compose-split` (5 tasks of 2 digits, no task label at test time): replay with a
1,000-image buffer; SupSup alone (task inferred from each test image by the one-shot entropy gradient) and
SupSup with an episodic memory that infers it by nearest neighbours; SET alone and with replay; SET's sparse
random network under SupSup's masks; FNNSP's module gates under SupSup's masks; LoRA alone and with replay.
One row per agent: average accuracy, BWT, task-inference accuracy, bytes the agent keeps and of the module
that decides the comparison (the memory; the replay buffer), train time.

Goal: SupSup + episodic memory, the task inferred from each test image alone, at least 92% average accuracy
with the memory's bytes at most those of the 1,000-image replay buffer. Quick mode: 2,000 training and 500
test images per task.
"""

from __future__ import annotations

import time
from typing import Any

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench, run_recipe_table
from agentlab.registry import BuildEnv


def _module_bytes(r: Any, kind: str) -> int:
    """Bytes the last ledger entry gives modules of `kind` ("memory", "learner", "plasticity")."""
    mods = r.ledger[-1]["modules"] if r.ledger else {}
    return int(sum(m["bytes"] for m in mods.values() if m["kind"] == kind))


@register_bench("compose")
def bench_compose(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Compositions (SupSup + episodic memory, SET + replay, SET + SupSup, FNNSP + SupSup, LoRA + replay) beside their parts."""
    overrides = ["stream.max_per_task=2000", "stream.max_eval_per_task=500"] if args.quick else []
    t0 = time.perf_counter()
    results = {k: r for k, (r, _) in run_recipe_table("compose-split", overrides, args).items()}
    wall = time.perf_counter() - t0
    rows, metrics = [], {}
    for label, r in results.items():
        m = r.metrics
        rows.append({"agent": label, "avg_acc": m["avg_acc"], "bwt": m["bwt"], "task_inference": m.get("task_inference_acc"),
                     "bytes": r.ledger[-1]["total_bytes"], "memory_bytes": _module_bytes(r, "memory"),
                     "learner_bytes": _module_bytes(r, "learner"), "train_s": r.timings["train_s"]})
        metrics[f"{label}_acc"] = m["avg_acc"]
    sm, rp = results["supsup_memory"], results["replay_1000"]
    metrics.update({
        "supsup_memory_acc": sm.metrics["avg_acc"],
        "supsup_memory_task_inference": sm.metrics.get("task_inference_acc", float("nan")),
        "supsup_memory_bytes": _module_bytes(sm, "memory"),
        "replay_1000_acc": rp.metrics["avg_acc"],
        "replay_1000_bytes": _module_bytes(rp, "learner"),
        "supsup_alone_acc": results["supsup_alone"].metrics["avg_acc"],
    })
    ok_acc = metrics["supsup_memory_acc"] >= 0.92
    ok_bytes = metrics["supsup_memory_bytes"] <= metrics["replay_1000_bytes"]
    goals = {
        "SupSup + episodic memory >= 92% class-IL, task inferred per image, memory bytes <= a 1,000-image replay buffer": goal(
            ok_acc and ok_bytes, f"{100 * metrics['supsup_memory_acc']:.2f}%, {metrics['supsup_memory_bytes']:,} B "
                                 f"against {metrics['replay_1000_bytes']:,} B"),
    }
    return BenchResult(metrics, rows, goals, f"wall {wall:.0f} s")
