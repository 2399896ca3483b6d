"""`split-domain-plain` / `split-task-plain`: the reference's Split MNIST protocol in a plain PyTorch loop, to check
`baselines`.

van de Ven & Tolias 2019's protocol written out with none of the library's loop, learners, plugins or Avalanche:
an MLP 784-400-400 with PyTorch's default initialisation (their layers draw the same uniform +-1/sqrt(fan_in)),
one Adam (lr 0.001, betas 0.9 / 0.999) for the whole stream, batches of 128 reshuffled at every pass with the last
partial batch dropped (their loader), 2,000 iterations per task, the full test sets. Domain-IL has 2 output units
shared by all tasks; task-IL has 10, and task k trains and is read on its own two (units 2k, 2k + 1: their
multi-head "active classes"). It shares with `baselines` only the MNIST files and `class_order`, so the two
disagreeing would point at the library, and both disagreeing with the paper at the protocol or the seeds. Methods
(`--only` parts), with the scenario's strengths in their scale:

* `finetune`: their "None".
* `si`: Synaptic Intelligence as their code: W += -g * (theta_t+1 - theta_t) with g the gradient of the whole loss,
  Omega += W / (Delta^2 + 0.1) at the end of each task, loss + c * sum Omega (theta - theta*)^2.
* `ewc`: offline EWC as their code: per task a Fisher of the model's predicted label (among the task's units in
  task-IL), one example at a time over the task's training set (summed squares divided by N - 1, as their loop
  divides by the last index), loss + lambda / 2 * sum over tasks F (theta - theta_task)^2.

Seeds: the full mode runs the paper's 20 repetitions, seeds 1-20 (their `_compare.py` starts at 1; `--seed N` starts
at N instead), each with the digit pairs their code draws for it (`class_order`); quick: seeds 1-2 at 100 iterations.
Metrics: `<method>_acc_mean` (a fraction, over the seeds), `_sd`, `_se`, `_seeds`; one row per seed and method.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor, nn

from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.bench.baselines import EWC_LAMBDA, PAPER, SI_C, class_order
from agentlab.datasets import data_root
from agentlab.registry import BuildEnv

METHODS = ("finetune", "ewc", "si")
SI_EPS = 0.1  # their epsilon (Zenke et al.'s xi)


def pair_tasks(x: Tensor, y: Tensor, order: list[int]) -> list[tuple[Tensor, Tensor]]:
    """(inputs (N, 784) in [0, 1], labels 0 / 1) per task: task k holds digits order[2k] (label 0), order[2k+1]."""
    out = []
    for k in range(5):
        first, second = order[2 * k], order[2 * k + 1]
        keep = (y == first) | (y == second)
        out.append((x[keep].flatten(1).float() / 255.0, (y[keep] == second).long()))
    return out


def fisher(model: nn.Sequential, x: Tensor, units: slice = slice(None)) -> dict[str, Tensor]:
    """EWC's diagonal Fisher as their code: squared gradients of -log p(predicted label | x) over the output `units`
    (the task's head in task-IL), one example at a time.

    A linear layer's gradient for example i is the outer product delta_i a_i^T of the gradient at its output and its
    input, so the sum over examples of its square is (delta^2)^T (a^2): one batched backward of the summed loss (each
    term depends on its own example only) gives every per-example square exactly (Goodfellow 2015)."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for chunk in x.split(1024):
        inputs, outputs, h = {}, {}, chunk
        for i, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                inputs[i] = h
            h = layer(h)
            if isinstance(layer, nn.Linear):
                outputs[i] = h
        logits = h[:, units]
        nll = F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum")
        deltas = torch.autograd.grad(nll, list(outputs.values()))
        for (i, a), d in zip(inputs.items(), deltas):
            total[f"{i}.weight"] += einsum(d.pow(2), a.detach().pow(2), "b o, b i -> o i")
            total[f"{i}.bias"] += d.pow(2).sum(0)
    return {n: t / (len(x) - 1) for n, t in total.items()}


def run_seed(method: str, seed: int, train: list[tuple[Tensor, Tensor]], test: list[tuple[Tensor, Tensor]],
             iters: int, strength: float, multi_head: bool = False) -> list[float]:
    """Accuracy on each task's test set after the last task, for one method and seed; `multi_head`: task-IL."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                          nn.Linear(400, 2 * len(train) if multi_head else 2))
    head = [slice(2 * k, 2 * k + 2) if multi_head else slice(None) for k in range(len(train))]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    params = dict(model.named_parameters())
    anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # EWC: (theta_task, F_task) per task
    si_start = {n: p.detach().clone() for n, p in params.items()}
    omega = {n: torch.zeros_like(p) for n, p in params.items()}
    for k, (x, y) in enumerate(train):
        w = {n: torch.zeros_like(p) for n, p in params.items()}
        batches: list[Tensor] = []
        for _ in range(iters):
            if not batches:  # a new pass: reshuffle, drop the last partial batch
                batches = list(torch.randperm(len(x)).split(128))[: len(x) // 128][::-1]
            b = batches.pop()
            loss = F.cross_entropy(model(x[b])[:, head[k]], y[b])
            if method == "ewc" and anchors:
                loss = loss + strength / 2 * sum((f[n] * (p - mu[n]).pow(2)).sum() for mu, f in anchors for n, p in params.items())
            if method == "si" and k > 0:
                loss = loss + strength * sum((omega[n] * (p - si_start[n]).pow(2)).sum() for n, p in params.items())
            before = {n: p.detach().clone() for n, p in params.items()} if method == "si" else {}
            opt.zero_grad()
            loss.backward()
            opt.step()
            if method == "si":  # the path integral of this step
                for n, p in params.items():
                    w[n] -= p.grad * (p.detach() - before[n])
        if method == "ewc":
            anchors.append(({n: p.detach().clone() for n, p in params.items()}, fisher(model, x, head[k])))
        if method == "si":
            for n, p in params.items():
                omega[n] += w[n] / ((p.detach() - si_start[n]).pow(2) + SI_EPS)
                si_start[n] = p.detach().clone()
    with torch.no_grad():
        return [float((model(xt)[:, head[k]].argmax(1) == yt).float().mean()) for k, (xt, yt) in enumerate(test)]


@register_bench("split-domain-plain", parts=True, resumable=False)
def bench_split_domain_plain(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Split MNIST domain-IL fine-tuning, EWC, SI in a plain PyTorch loop over the paper's 20 seeds (checks `baselines`)."""
    return plain_bench(args, env, "split_domain")


@register_bench("split-task-plain", parts=True, resumable=False)
def bench_split_task_plain(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Split MNIST task-IL (multi-head) fine-tuning, EWC, SI in a plain PyTorch loop over the paper's 20 seeds."""
    return plain_bench(args, env, "split_task")


def plain_bench(args: BenchArgs, env: BuildEnv, scenario: str) -> BenchResult:
    """The plain loop over the seeds for `scenario` (`split_domain` or `split_task`)."""
    from agentlab.scenarios.vision_data import load_tensors

    torch.set_num_threads(1)  # as baselines: one process per core
    methods = list(args.only) or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"split-{scenario[6:]}-plain has no part {unknown[0]!r}: parts are {METHODS}")
    first = args.seed or 1
    seeds = list(range(first, first + (2 if args.quick else 20)))
    iters = 100 if args.quick else 2000
    root = data_root(args.data_root or env.data_root)
    xtr, ytr = load_tensors("mnist", root, train=True)
    xte, yte = load_tensors("mnist", root, train=False)
    strength = {"finetune": 0.0, "ewc": EWC_LAMBDA[scenario], "si": SI_C[scenario]}
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    goals: dict[str, str] = {}
    for method in methods:
        accs = []
        for seed in seeds:
            order = class_order(seed)
            t0 = time.perf_counter()
            per_task = run_seed(method, seed, pair_tasks(xtr, ytr, order), pair_tasks(xte, yte, order), iters, strength[method],
                               multi_head=scenario == "split_task")
            accs.append(float(np.mean(per_task)))
            rows.append({"method": method, "seed": seed, "acc_pct": 100 * accs[-1],
                         "per_task_pct": " ".join(f"{100 * a:.1f}" for a in per_task), "s": time.perf_counter() - t0})
        mean, sd = float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
        metrics |= {f"{method}_acc_mean": mean, f"{method}_acc_sd": sd, f"{method}_acc_se": sd / len(accs) ** 0.5,
                    f"{method}_acc_seeds": float(len(accs))}
        paper = PAPER[(method, scenario)]
        gap = 100 * mean - paper
        goals[f"{method} mean within 3 points of {paper}"] = f"{'met' if abs(gap) <= 3 else 'NOT met'} ({100 * mean:.2f}, {gap:+.2f})"
    notes = f"seeds {seeds[0]}-{seeds[-1]}, {iters} iterations per task; accuracies are fractions, paper figures in %"
    return BenchResult(metrics, rows, goals, notes)
