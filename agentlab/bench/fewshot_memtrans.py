"""`fewshot-memtrans`: the memory transformer on Omniglot, N-way K-shot episodes and the MANN sequential protocol.

Meta-training on the standard split's 1,200 training characters (x4 rotations as
new classes), mixing 5-way 1- and 5-shot episodes with 5-way sequential episodes of
10 instances per class; testing on episodes of the 423 test characters (fixed,
seeded `EpisodeSet`s of the `fewshot` scenarios). Training is capped by a CPU time
budget on this shared 2-core machine; the figures say how many episodes it reached.
"""

from __future__ import annotations


import torch

from agentlab.bench import BenchArgs, BenchResult, bench_data_root, register_bench
from agentlab.registry import BuildEnv


@register_bench("fewshot-memtrans")
def bench_fewshot_memtrans(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Omniglot 5-way 1/5-shot and sequential accuracy of the memory transformer."""
    from agentlab.agent import Agent
    from agentlab.context import FitContext
    from agentlab.task import Task
    from memory.memory_transformer import MemoryTransformerConfig
    from memory.memtrans_fewshot import MemTransLearner, MemTransLearnerConfig, MemTransNet, MemTransNetConfig
    from scenarios.episode_eval import evaluate_episodes
    from scenarios.episodes import ClassPool, EpisodeSampler, EpisodeSet
    from scenarios.omniglot import omniglot_split

    torch.manual_seed(args.seed)
    root = bench_data_root(args, env)
    split = omniglot_split(root, "standard")
    train_pool = ClassPool(split.train_x, split.train_y, rotations=(0, 1, 2, 3))
    test_pool = ClassPool(split.test_x, split.test_y)
    budget_s, n_test = (30.0, 50) if args.quick else (1800.0, 1000)
    net = MemTransNet(MemTransNetConfig(ways=5, memory=MemoryTransformerConfig(in_features=1, dim=128, layers=2, slots=500)))
    learner = MemTransLearner(MemTransLearnerConfig(episodes=10**7, batch=8, time_budget_s=budget_s))
    agent = Agent(net, learner=learner)
    task = Task(id=0, name="omniglot-meta-train", kind="episode", train=EpisodeSampler(train_pool, 5, 1, 5), eval=None)
    learner.fit(agent, task, FitContext(generator=torch.Generator().manual_seed(args.seed), task_index=0, n_tasks=1))

    seed = 10_000 + args.seed  # test episodes apart from any training seed
    r1 = evaluate_episodes(agent, EpisodeSet(test_pool, n_test, seed, ways=5, shots=1, queries=15))
    r5 = evaluate_episodes(agent, EpisodeSet(test_pool, n_test, seed + 1, ways=5, shots=5, queries=15))
    rs = evaluate_episodes(agent, EpisodeSet(test_pool, n_test, seed + 2, ways=5, protocol="sequential", per_class=10))
    by = rs.by_sighting()
    metrics = {"acc_5w1s": r1.mean, "acc_5w5s": r5.mean, "acc_2nd_sighting": by[1], "acc_10th_sighting": by[9],
               "acc_1st_sighting": by[0], "ci95_5w1s": r1.ci95, "ci95_5w5s": r5.ci95,
               "train_episodes": float(learner.episodes_done), "train_s": learner.train_s}
    goals = {}
    for key, goal, t in (("acc_5w1s", "5-way 1-shot >= 95%", 0.95), ("acc_5w5s", "5-way 5-shot >= 98%", 0.98),
                         ("acc_2nd_sighting", "sequential 2nd sighting >= 85%", 0.85),
                         ("acc_10th_sighting", "sequential 10th sighting >= 97%", 0.97)):
        goals[goal] = "met" if metrics[key] >= t else f"NOT met ({100 * metrics[key]:.1f}%)"
    rows = [{"protocol": "5-way 1-shot", "episodes": n_test, "acc": r1.mean, "ci95": r1.ci95},
            {"protocol": "5-way 5-shot", "episodes": n_test, "acc": r5.mean, "ci95": r5.ci95}]
    rows += [{"protocol": f"sequential, sighting {i + 1}", "episodes": n_test, "acc": a, "ci95": float("nan")} for i, a in enumerate(by)]
    notes = (f"meta-training stopped by its {budget_s:.0f} s CPU budget after {learner.episodes_done} episodes "
             f"({learner.train_s:.0f} s, 1 thread, shared machine); MANN reference 36.4/82.8/.../98.1% (1st/2nd/10th)")
    return BenchResult(metrics, rows, goals, notes)
