"""`fewshot-omniglot`: prototypical networks on Omniglot, 5-way and 20-way 1-shot, trained on CPU within 30 minutes.

One conv-4 protonet is trained on 1-shot episodes of the 1,200 training
characters (with rotations) and tested on 1,000 fixed 5-way and 1,000 fixed
20-way 1-shot episodes (15 queries per class) of the 423 test characters.
Paper (Snell et al. 2017): 98.8% and 96.0%. The full mode stops training when
its 30-minute CPU budget runs out (`learner.time_budget_s`) and reports how
many training episodes that allowed. Quick mode: the same code with a few
dozen training episodes and 100 / 50 test episodes (accuracy far below the paper's).
"""

from __future__ import annotations

import time
from pathlib import Path

from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.registry import BuildEnv

FULL = {"episodes": 20000, "train_ways": 60, "time_budget_s": 1780.0, "test": 1000, "test_20": 1000}
QUICK = {"episodes": 40, "train_ways": 20, "time_budget_s": 45.0, "test": 100, "test_20": 50}


@register_bench("fewshot-omniglot")
def bench_fewshot_omniglot(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Protonet on Omniglot 5-way / 20-way 1-shot (goal 97% / 92%; paper 98.8 / 96.0)."""
    from agentlab import recipe as recipes
    from agentlab.fewshot import run_fewshot
    from scenarios.episode_eval import evaluate_episodes
    from scenarios.episodes import EpisodeSet

    b = QUICK if args.quick else FULL
    name, table = recipes.read_recipe("protonet-omniglot")
    overrides = [
        f"seed={args.seed}", "stream.ways=5", "stream.shots=1", "stream.queries=15", f"stream.eval_episodes={b['test']}",
        f"learner.episodes={b['episodes']}", f"learner.train_ways={b['train_ways']}",
        f"learner.time_budget_s={b['time_budget_s']}",
    ]
    resolved = recipes.resolve(name, recipes.apply_overrides(table, overrides))
    root = Path(args.data_root) if args.data_root else env.data_root
    # run_fewshot trains and evaluates 5-way; keep the agent to evaluate 20-way on the same test pool.
    kept = {}
    stream, (r5,) = run_fewshot(resolved, root, keep=kept)
    agent, task = kept["agent"], kept["task"]
    five = task.eval
    twenty = EpisodeSet(five.pool, b["test_20"], five.seed, ways=20, shots=1, queries=15)
    t0 = time.perf_counter()
    rep20 = evaluate_episodes(agent, twenty)
    eval20_s = time.perf_counter() - t0
    metrics = {"acc_5w1s": r5.mean, "acc_20w1s": rep20.mean, "ci95_5w1s": r5.ci95, "ci95_20w1s": rep20.ci95,
               "train_s": r5.train_s, "train_episodes": float(r5.train_episodes),
               "eval_s": r5.eval_s + eval20_s}
    rows = [
        {"test": "5-way 1-shot", "acc": r5.mean, "ci95": r5.ci95, "episodes": r5.episodes, "paper": 0.988},
        {"test": "20-way 1-shot", "acc": rep20.mean, "ci95": rep20.ci95, "episodes": len(rep20.accs), "paper": 0.960},
    ]
    goals = {
        "5-way 1-shot >= 97%": "met" if r5.mean >= 0.97 else f"NOT met ({100 * r5.mean:.2f}%)",
        "20-way 1-shot >= 92%": "met" if rep20.mean >= 0.92 else f"NOT met ({100 * rep20.mean:.2f}%)",
        "trained within 30 minutes": "met" if r5.train_s <= 1800 else f"NOT met ({r5.train_s:.0f} s)",
    }
    notes = (f"trained {r5.train_episodes} episodes of {b['train_ways']}-way 1-shot 5-query in {r5.train_s:.0f} s "
             f"(budget {b['time_budget_s']:.0f} s, CPU threads shared with other jobs)")
    return BenchResult(metrics, rows, goals, notes)
