"""Helpers shared by the sparse benchmarks (set-mnist, set-stream, lottery): data, one-task training, logs.

MNIST and Fashion-MNIST come from the streams' loader (`agentlab.scenarios.vision_data`);
no second loader lives here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from agentlab.context import FitContext
from agentlab.data import Split
from agentlab.evaluate import evaluate
from agentlab.task import Task


def one_thread() -> None:
    """Use one intra-op thread: on a loaded 2-core machine two OpenMP threads spin against each other
    (measured here: LeNet 300-100 steps took 15x the CPU time and 11x the wall time with 2 threads)."""
    torch.set_num_threads(1)


def first(split: Split, n: int, seed: int = 0) -> Split:
    """A fixed random subset of `n` examples (all when n = 0 or n >= len)."""
    if not n or n >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    return split.subset(torch.randperm(len(split), generator=g)[:n])


def vision_task(dataset: str, root: Path, *, train_n: int = 0, test_n: int = 0) -> Task:
    """MNIST or Fashion-MNIST as one 10-class task (train / test), optionally subsampled."""
    from agentlab.scenarios import vision_data

    load = {"mnist": vision_data.load_mnist, "fashion": vision_data.load_fashion_mnist}[dataset]
    train, test = first(load(root, train=True), train_n, 0), first(load(root, train=False), test_n, 1)
    return Task(id=0, name=dataset, kind="classification", train=train, eval=test, classes=tuple(range(10)))


def fit_one_task(agent: Any, task: Task, *, seed: int, log: Any = None, device: str = "cpu") -> tuple[float, float]:
    """Train `agent` (with its learner) on `task` on `device`; returns (test accuracy, training seconds)."""
    ctx = FitContext(generator=torch.Generator().manual_seed(seed), task_index=0, n_tasks=1, device=device,
                     log_scalar=(lambda t, v, s: log.scalar(t, v, s)) if log is not None else (lambda t, v, s: None))
    agent.to(device)
    t0 = time.perf_counter()
    agent.start_task(task)
    agent.learner.fit(agent, task, ctx)
    agent.end_task(task)
    sync(device)
    train_s = time.perf_counter() - t0
    return evaluate(agent, task, device=device).acc, train_s


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def say(msg: str) -> None:
    """Progress on stderr, so a long run that is stopped still tells how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tb_dir(bench: str, quick: bool) -> Path:
    """runs/bench/<bench>[-quick]-tb; the benchmark's entry points empty it first so it shows the latest run only."""
    return Path("runs") / "bench" / f"{bench}{'-quick' if quick else ''}-tb"


def fresh_tb_dir(bench: str, quick: bool) -> Path:
    import shutil

    d = tb_dir(bench, quick)
    shutil.rmtree(d, ignore_errors=True)
    return d


