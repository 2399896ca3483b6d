"""SupSup task inference: which stored supermask does an input belong to?

The network is run with all k masks in superposition, W ⊙ Σ_i α_i M_i, from
α_i = 1/k. The right mask makes the output confident, so the output entropy H
falls fastest along it (Wortsman et al. 2020, Sec. 3.3):

    one-shot        task = argmin_i ∂H/∂α_i  at α = 1/k                       (one forward + backward)
    binary search   keep the half of the candidates with the lowest ∂H/∂α_i,
                    set α uniform over them, repeat until one is left       (ceil(log2 k) rounds)
    entropy         task = argmin_i H(f(x; W ⊙ M_i))   (k forwards: the exhaustive search the
                    gradient approximates; more reliable when tasks differ in output scale)

The objective H is the output entropy, or SupSup's G objective ("superfluous
neurons"): with more output units than classes, training pushes the unused units' logits
down, so the log-sum-exp over the logits, with the real classes' logits held constant,
falls fastest along the right mask: G_b = log Σ_c exp(z_bc), z_bc detached for c < real.

Coefficients are per example (α is (B, k)), so the gradient of example b's entropy
is exact for that example alone ("from a single image"). With `group` > 1,
consecutive groups of examples share one decision (the gradient of their mean
entropy is the sum of their per-example gradients); `group` = 0 decides once per batch.

Axis legend: b = examples, k = candidate tasks.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

from agentlab.plasticity.supermask_layers import MaskContext

Method = Literal["oneshot", "binary", "entropy"]
Objective = Callable[[Tensor], Tensor]


def output_entropy(logits: Tensor) -> Tensor:
    """H_b = -Σ_c p_bc log p_bc over the last axis; (B, ..., C) -> (B,), averaged over any middle axes."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h.reshape(h.shape[0], -1).mean(1)


def g_objective(real: int) -> Objective:
    """SupSup's G: logits (B, C) -> (B,) log-sum-exp whose gradient flows only through units c >= `real`."""

    def g(logits: Tensor) -> Tensor:
        z = logits.float()
        keep = torch.arange(z.shape[-1], device=z.device) < real  # (C,) the real classes, held constant
        z = torch.where(keep, z.detach(), z)
        return torch.logsumexp(z, dim=-1).reshape(z.shape[0], -1).mean(1)

    return g


def alpha_gradient(forward: Callable[[Tensor], Tensor], x: Tensor, ctx: MaskContext, tasks: list[int],
                   alpha: Tensor, *, chunk: int = 256, objective: Objective = output_entropy) -> Tensor:
    """∂H_b/∂α_{b,i} for every example b and task i, at the given α (B, k); returns (B, k)."""
    grads = []
    saved = (ctx.mode, ctx.task, ctx.tasks, ctx.alpha)
    try:
        for start in range(0, x.shape[0], chunk):
            a = alpha[start : start + chunk].detach().clone().requires_grad_(True)
            ctx.mode, ctx.tasks, ctx.alpha = "superpose", list(tasks), a
            with torch.enable_grad():
                h = objective(forward(x[start : start + chunk]))
                (g,) = torch.autograd.grad(h.sum(), a)
            grads.append(g)
    finally:
        ctx.mode, ctx.task, ctx.tasks, ctx.alpha = saved
    return torch.cat(grads)


@torch.no_grad()
def task_entropies(forward: Callable[[Tensor], Tensor], x: Tensor, ctx: MaskContext, tasks: list[int],
                   objective: Objective = output_entropy) -> Tensor:
    """H_b of each task's own sub-network; returns (B, k)."""
    saved = (ctx.mode, ctx.task)
    try:
        cols = []
        for t in tasks:
            ctx.mode, ctx.task = "task", t
            cols.append(objective(forward(x)))
    finally:
        ctx.mode, ctx.task = saved
    return torch.stack(cols, 1)


def group_sum(g: Tensor, group: int) -> Tensor:
    """Sum per-example gradients (B, k) within consecutive groups, broadcast back to (B, k)."""
    B = g.shape[0]
    if group == 1:
        return g
    size = B if group == 0 else group
    ids = torch.arange(B, device=g.device) // size  # (B,)
    sums = torch.zeros(int(ids.max()) + 1, g.shape[1], dtype=g.dtype, device=g.device).index_add_(0, ids, g)
    return sums[ids]


def infer_tasks(forward: Callable[[Tensor], Tensor], x: Tensor, ctx: MaskContext, tasks: list[int], *,
                method: Method = "oneshot", group: int = 1, chunk: int = 256,
                objective: Objective = output_entropy) -> Tensor:
    """Predicted task ids (B,) among `tasks` for inputs x (B, ...)."""
    k = len(tasks)
    ids = torch.tensor(tasks, dtype=torch.long, device=x.device)
    if k == 1:
        return ids.expand(x.shape[0]).clone()
    if method == "entropy":
        return ids[group_sum(task_entropies(forward, x, ctx, tasks, objective), group).argmin(1)]
    alive = torch.ones(x.shape[0], k, dtype=torch.bool, device=x.device)  # (B, k) candidates left
    rounds = 1 if method == "oneshot" else math.ceil(math.log2(k))
    for _ in range(rounds):
        alpha = alive.float() / alive.sum(1, keepdim=True)  # uniform over the candidates
        g = group_sum(alpha_gradient(forward, x, ctx, tasks, alpha, chunk=chunk, objective=objective), group)
        g = g.masked_fill(~alive, float("inf"))
        if method == "oneshot":
            return ids[g.argmin(1)]
        n_keep = max(1, math.ceil(int(alive[0].sum()) / 2))
        keep = g.topk(n_keep, dim=1, largest=False).indices  # (B, n_keep)
        alive = torch.zeros_like(alive).scatter_(1, keep, True)
        if n_keep == 1:
            break
    return ids[alive.float().argmax(1)]
