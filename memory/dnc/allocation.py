"""Sort-based dynamic allocation (Graves et al. 2016, Methods, "Dynamic memory allocation").

    phi_t = indices of slots sorted by ascending usage (the free list)
    a_t[phi_t[j]] = (1 - u_t[phi_t[j]]) prod_{i<j} u_t[phi_t[i]]

The least-used slot gets most of the weight. Usage is first mapped to
eps + (1 - eps) u so that the product never multiplies exact zeros (deepmind/dnc
does the same). With several write heads, each head allocates in turn from the
usage left after the heads before it (written with its write gate): a
sequential dependency, so the only Python loop here runs over write heads.

Axis legend: b batch, w write heads, n memory slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def exclusive_cumprod(x: Tensor) -> Tensor:
    """[1, x0, x0 x1, ...] along the last axis. x (..., n) -> (..., n)."""
    return F.pad(torch.cumprod(x[..., :-1], dim=-1), (1, 0), value=1.0)


def allocation_weights(usage: Tensor, eps: float = EPS) -> Tensor:
    """a_t from usage (b, n) -> (b, n); sums to at most 1."""
    usage = eps + (1.0 - eps) * usage
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)  # (b, n) ascending
    sorted_alloc = (1.0 - sorted_usage) * exclusive_cumprod(sorted_usage)  # (b, n)
    return sorted_alloc.new_zeros(sorted_alloc.shape).scatter(-1, order, sorted_alloc)  # back to slot order


def write_allocation_weights(usage: Tensor, write_gates: Tensor) -> Tensor:
    """Allocation for each write head. usage (b, n), write_gates (b, w) in [0, 1] -> (b, w, n).

    Head i sees the usage as if heads 0..i-1 had written their allocation with their gate.
    """
    if write_gates.shape[1] == 1:
        return allocation_weights(usage)[:, None]
    out = []
    for i in range(write_gates.shape[1]):
        a = allocation_weights(usage)  # (b, n)
        out.append(a)
        usage = usage + (1.0 - usage) * write_gates[:, i : i + 1] * a
    return torch.stack(out, dim=1)
