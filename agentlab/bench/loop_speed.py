"""`loop-speed`: one epoch of Permuted MNIST, our loop against Avalanche's Naive template, in one process.

Same model (MLP 784-512-10, same initial weights), same optimizer (SGD, lr
0.01, built by `make_optimizer` for both, so both get the same multi-tensor
kernel), same batch size (128), same examples, one epoch each; only training is
timed (data loading and benchmark construction are not):

* ours: `agentlab.loop.run` with the fine-tuning learner on `permuted-mnist`
  (tensor slicing, the permutation applied per batch);
* avalanche: `avalanche.training.Naive` on Avalanche's own
  `PermutedMNIST` benchmark (the data path an Avalanche user gets), with an
  evaluator that computes and logs nothing, so no metric overhead is counted;
* avalanche-tensors (a row, for insight): the same Naive template on our
  permuted task converted to an Avalanche tensor dataset, which separates the
  cost of Avalanche's loop from that of its per-image PIL transforms.

Quick mode: 10,000 examples instead of 60,000. Goal: ours at least 3x faster.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch

from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.registry import BuildEnv

BATCH, LR, HIDDEN = 128, 0.01, 512


def _time_ours(model: torch.nn.Module, stream, seed: int) -> float:
    from agentlab.agent import Agent
    from agentlab.learners.finetune import FineTune
    from agentlab.loop import LoopConfig, run

    agent = Agent(model, learner=FineTune(_sgd()), label="ours")
    result = run(agent, stream, generator=torch.Generator().manual_seed(seed), cfg=LoopConfig(eval_next=False, checkpoint=False))
    return float(result.timings["train_s"])


def _sgd():
    from agentlab.learners.sgd import SGDConfig

    return SGDConfig(epochs=1, lr=LR, batch_size=BATCH, optimizer="sgd")


def _time_avalanche(model: torch.nn.Module, experience) -> float:
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from agentlab.optim import make_optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = Naive(
            model=model, optimizer=make_optimizer(model.parameters(), _sgd()), criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=BATCH, train_epochs=1, eval_mb_size=1000, evaluator=EvaluationPlugin(loggers=[]),
        )
        t0 = time.perf_counter()
        strategy.train(experience, eval_streams=[])
    return time.perf_counter() - t0


@register_bench("loop-speed")
def bench_loop_speed(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """One epoch of Permuted MNIST: our loop against Avalanche's Naive template (goal: >= 3x faster)."""
    from avalanche.benchmarks.classic import PermutedMNIST
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    from agentlab.avalanche_bridge.streams import experience_of
    from agentlab.backbones.mlp import MLP
    from agentlab.scenarios.mnist import permuted_mnist

    root = env.data_root
    # One thread for both loops: on a shared 2-core machine, OpenMP threads that wait for a busy core
    # slow every step by orders of magnitude and make the comparison measure the neighbours.
    torch.set_num_threads(1)
    n = 10_000 if args.quick else 60_000
    torch.manual_seed(args.seed)
    model = MLP(784, [HIDDEN], 10)
    ours_stream = permuted_mnist(root, n_tasks=1, seed=args.seed, max_per_task=n, max_eval_per_task=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = PermutedMNIST(n_experiences=1, seed=args.seed, dataset_root=str(root))
    av_data = bm.train_stream[0].dataset
    if n < len(av_data):
        av_data = av_data.subset(range(n))
    av_exp = benchmark_from_datasets(train=[av_data]).train_stream[0]
    tensor_exp = experience_of(ours_stream[0], "train")

    ours_s = _time_ours(copy.deepcopy(model), ours_stream, args.seed)
    avalanche_s = _time_avalanche(copy.deepcopy(model), av_exp)
    tensors_s = _time_avalanche(copy.deepcopy(model), tensor_exp)
    speedup = avalanche_s / ours_s
    rows = [
        {"loop": "ours", "examples": n, "seconds": ours_s, "examples_per_s": n / ours_s},
        {"loop": "avalanche Naive (PermutedMNIST)", "examples": n, "seconds": avalanche_s, "examples_per_s": n / avalanche_s},
        {"loop": "avalanche Naive (tensors)", "examples": n, "seconds": tensors_s, "examples_per_s": n / tensors_s},
    ]
    metrics = {"speedup": speedup, "ours_s": ours_s, "avalanche_s": avalanche_s, "avalanche_tensors_s": tensors_s}
    goal = "met" if speedup >= 3 else f"NOT met ({speedup:.2f}x)"
    notes = f"threads={torch.get_num_threads()}; MLP 784-{HIDDEN}-10, SGD lr {LR}, batch {BATCH}, one epoch of {n} examples"
    return BenchResult(metrics, rows, {"ours at least 3x faster than Avalanche's Naive": goal}, notes)
