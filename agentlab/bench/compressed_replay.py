"""`compressed-replay`: class-incremental Split MNIST, replay memory of a fixed byte budget, VQ tokens vs 8-bit pixels.

Both arms run the same learner (`token_replay`) with the same MLP, optimiser,
class-balanced buffer and data order; they differ only in how the buffer stores an
example: 44 bytes of bit-packed tokens (decoded by a VQ-VAE trained on the first
task only) or 785 bytes of raw pixels. The headline budget is 50,000 bytes
(63 raw images or 1,136 token images); the rows give both curves over budgets.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.datasets import data_root
from agentlab.registry import BuildEnv

HEADLINE = 50_000


def split_mnist_stream(root: Path, n_per_task: int):
    """Class-incremental Split MNIST (5 tasks of 2 digits) from the streams loader; `n_per_task` caps training examples (0 = all)."""
    from agentlab.scenarios.mnist import split_mnist

    return split_mnist(root, scenario="class", max_per_task=n_per_task)


def run_arm(stream, codec: str, budget: int, epochs: int, seed: int, tokenizer_state=None, tokenizer_steps: int = 1500):
    from agentlab.agent import Agent
    from agentlab.backbones.mlp import MLP
    from agentlab.loop import LoopConfig, run
    from agentlab.learners.token_replay import TokenReplay, TokenReplayConfig

    torch.manual_seed(seed)
    cfg = TokenReplayConfig(budget_bytes=budget, codec=codec, epochs=epochs, lr=1e-3, batch_size=64,
                            tokenizer_steps=tokenizer_steps)
    learner = TokenReplay(cfg, seed)
    if tokenizer_state is not None:
        learner.load_state_dict({"vqvae": tokenizer_state, "tokenizer_fitted": True, "buffer": {}})
    agent = Agent(MLP(784, [400, 400], 10), learner=learner)
    result = run(agent, stream, generator=torch.Generator().manual_seed(seed),
                 cfg=LoopConfig(checkpoint=False, eval_next=False))
    return result.metrics["avg_acc"], learner


@register_bench("compressed-replay")
def bench_compressed_replay(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Token replay vs raw replay at equal byte budgets on class-incremental Split MNIST."""
    root = data_root(args.data_root or env.data_root)
    if args.quick:
        stream, budgets, epochs, tok_steps = split_mnist_stream(root, 2000), [10_000, HEADLINE], 1, 300
    else:
        stream, budgets, epochs, tok_steps = split_mnist_stream(root, 0), [10_000, 25_000, HEADLINE, 100_000, 200_000], 1, 1500
    rows, acc = [], {}
    tokenizer_state = None
    for budget in budgets:
        for codec in ("vq", "raw8"):
            a, learner = run_arm(stream, codec, budget, epochs, args.seed,
                                 tokenizer_state if codec == "vq" else None, tok_steps)
            if codec == "vq" and tokenizer_state is None:
                tokenizer_state = learner.vqvae.state_dict()  # trained on task 0 once, reused at every budget
            acc[(budget, codec)] = a
            rows.append({"budget_bytes": budget, "codec": codec, "bytes_per_ex": learner.bytes_per_example,
                         "examples_held": len(learner.buffer), "avg_acc": a})
    token_acc, raw_acc = acc[(HEADLINE, "vq")], acc[(HEADLINE, "raw8")]
    gain = 100 * (token_acc - raw_acc)
    metrics = {"token_acc": token_acc, "raw_acc": raw_acc, "gain_points": gain}
    for (b, c), a in acc.items():
        metrics[f"{'token' if c == 'vq' else 'raw'}_acc_{b}"] = a
    goals = {"token replay >= raw + 5 points at 50 kB": "met" if gain >= 5 else f"NOT met ({gain:+.1f} points)"}
    n = sum(len(t.train) for t in stream)
    notes = (f"{n} training images over 5 tasks, {epochs} epoch(s) per task, MLP 784-400-400-10, Adam 1e-3; "
             "VQ-VAE trained on task 0 (digits 0, 1) only; avg_acc = mean accuracy over the 5 tasks after the last")
    return BenchResult(metrics, rows, goals, notes)
