"""`rl-cartpole`: continual reinforcement learning on CartPole with PPO, through the shipped recipes.

    rl-cartpole-finetune   cartpole-physics, 5 tasks (physics drawn per task), one MLP policy fine-tuned by PPO
    rl-cartpole-supsup     the same stream, SupSup: one supermask per task over a fixed random MLP
    rl-cartpole-po         cartpole-po (velocities hidden): a DNC attached at the head (reset per episode) against
                           the memoryless MLP, same PPO settings and budget

Every figure is a return over 20 evaluation episodes with fixed seeds, normalised per task by the random policy's
return and the solved return (475), so 1 = solved and 0 = random (agentlab.scenarios.env_task); raw returns are
measured again on the final agents.

Goals: PPO solves every task it trains on (mean return >= 475 right after training) over at least 5 tasks, for
fine-tuning and SupSup; fine-tuning forgets (BWT < 0 on normalised returns); SupSup keeps what it learned (BWT >=
-0.02 and average normalised return >= 0.95 after the last task); on cartpole-po the agent with a memory reaches at
least twice the memoryless agent's mean return. Quick mode: 3 tasks of 8,192 steps and 8,192 steps on cartpole-po
(the goals are the full mode's; quick figures show the code runs end to end).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench, run_recipe_table
from agentlab.registry import BuildEnv

SOLVED = 1.0  # a normalised return of 1 (capped) is a mean return at or above the solved return


def _stream(recipe: str, overrides: list[str], seed: int) -> Any:
    from agentlab import recipe as recipes

    name, table = recipes.read_recipe(recipe)
    resolved = recipes.resolve(name, recipes.apply_overrides(table, [f"seed={seed}", *overrides]))
    return recipes.build_stream(resolved, BuildEnv(seed=seed))


def _raw_returns(agent: Any, stream: Any) -> list[float]:
    from agentlab.evaluate import evaluate

    return [evaluate(agent, stream[j]).extra["return"] for j in range(len(stream))]


def _env_steps(r: Any, spec: dict[str, Any], budget: int) -> int:
    per = spec["num_envs"] * spec["num_steps"]
    return len(r.task_names) * max(1, budget // per) * per


@register_bench("rl-cartpole")
def bench_rl_cartpole(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """PPO on cartpole-physics (fine-tuning forgets, SupSup keeps) and cartpole-po (a DNC memory against none)."""
    budget = 8192 if args.quick else 100_000
    n_tasks = 3 if args.quick else 5
    phys = [f"stream.n_tasks={n_tasks}", f"stream.budget_steps={budget}"]
    po = [f"stream.budget_steps={budget}"]
    t0 = time.perf_counter()
    runs: dict[str, tuple[Any, Any]] = {}
    runs.update(run_recipe_table("rl-cartpole-finetune", phys, args))
    runs.update(run_recipe_table("rl-cartpole-supsup", phys, args))
    runs.update(run_recipe_table("rl-cartpole-po", po, args))
    wall = time.perf_counter() - t0
    streams = {"physics": _stream("rl-cartpole-finetune", phys, args.seed), "po": _stream("rl-cartpole-po", po, args.seed)}

    rows, metrics = [], {}
    for label, (r, agent) in runs.items():
        stream = streams["po" if label in ("dnc", "memoryless") else "physics"]
        raw = _raw_returns(agent, stream)
        diag = [round(float(r.R[i, i]), 4) for i in range(r.R.shape[0])]
        steps = _env_steps(r, {"num_envs": agent.learner.cfg.num_envs, "num_steps": agent.learner.cfg.num_steps}, budget)
        rows.append({"agent": label, "avg_return": r.metrics["avg_acc"], "bwt": r.metrics.get("bwt", float("nan")),
                     "forgetting": r.metrics.get("forgetting", float("nan")), "after_training": diag,
                     "final_returns": [round(v, 2) for v in raw], "train_s": r.timings["train_s"],
                     "sps": steps / r.timings["train_s"]})
    by = {row["agent"]: row for row in rows}
    ft, ss = by["finetune"], by["supsup"]
    solved = [v >= SOLVED for v in ft["after_training"] + ss["after_training"]]
    metrics.update({
        "finetune_avg_return": ft["avg_return"], "finetune_bwt": ft["bwt"], "finetune_forgetting": ft["forgetting"],
        "supsup_avg_return": ss["avg_return"], "supsup_bwt": ss["bwt"],
        "solved_fraction": float(np.mean(solved)),
        "finetune_solved_fraction": float(np.mean([v >= SOLVED for v in ft["after_training"]])),
        "supsup_solved_fraction": float(np.mean([v >= SOLVED for v in ss["after_training"]])),
        "finetune_final_raw_return": float(np.mean(ft["final_returns"])),
        "supsup_final_raw_return": float(np.mean(ss["final_returns"])),
        "memory_return": by["dnc"]["final_returns"][0], "memoryless_return": by["memoryless"]["final_returns"][0],
        "sps": ft["sps"], "supsup_sps": ss["sps"], "memory_sps": by["dnc"]["sps"], "tasks": n_tasks,
        "budget_steps": budget,
    })
    goals = {
        "PPO solves every cartpole-physics task it trains on (>= 475 right after training), >= 5 tasks": goal(
            all(solved) and n_tasks >= 5, f"{sum(solved)} of {len(solved)} solved over {n_tasks} tasks"),
        "fine-tuning forgets (BWT < 0, normalised)": goal(ft["bwt"] < 0, f"BWT {ft['bwt']:+.3f}"),
        "SupSup keeps what it learned (BWT >= -0.02, average >= 0.95 normalised)": goal(
            ss["bwt"] >= -0.02 and ss["avg_return"] >= 0.95, f"BWT {ss['bwt']:+.3f}, average {ss['avg_return']:.3f}"),
        "cartpole-po: the DNC memory reaches >= 2x the memoryless agent's return": goal(
            metrics["memory_return"] >= 2 * metrics["memoryless_return"],
            f"{metrics['memory_return']:.1f} against {metrics['memoryless_return']:.1f}"),
    }
    return BenchResult(metrics, rows, goals, f"wall {wall:.0f} s")
