"""Memory usage and the free gates (Graves et al. 2016, Methods, "Dynamic memory allocation").

    psi_t = prod_i (1 - f_t^i w_{t-1}^{r,i})                          retention vector
    u_t   = (u_{t-1} + w_{t-1}^w - u_{t-1} o w_{t-1}^w) o psi_t         usage

With several write heads the combined write weighting is 1 - prod_w (1 - w^w),
the probability that at least one head wrote the slot (as in deepmind/dnc).
Usage is clamped to [0, 1] so rounding never pushes allocation out of range.

Axis legend: b batch, r read heads, w write heads, n memory slots.
"""

from __future__ import annotations

import torch
from torch import Tensor


def retention(free_gates: Tensor, read_weights: Tensor) -> Tensor:
    """psi: how much of each slot survives the free gates. free_gates (b, r), read_weights (b, r, n) -> (b, n)."""
    return (1.0 - free_gates[:, :, None] * read_weights).prod(dim=1)


def update_usage(usage: Tensor, write_weights: Tensor, free_gates: Tensor, read_weights: Tensor) -> Tensor:
    """u_t from the previous step's usage (b, n), write weights (b, w, n) and read weights (b, r, n).

    free_gates (b, r) are this step's. Returns (b, n) in [0, 1].
    """
    if write_weights.shape[1] == 1:
        written = write_weights[:, 0]  # (b, n): one head, 1 - (1 - w) = w
    else:
        written = 1.0 - (1.0 - write_weights).prod(dim=1)  # (b, n)
    usage = torch.addcmul(written, usage, 1.0 - written)  # u + w - u w
    return (usage * retention(free_gates, read_weights)).clamp(0.0, 1.0)
