"""SupSup's one-shot task inference at uniform α without the superposed forward (Wortsman et al. 2020, Sec. 3.3).

One-shot inference evaluates ∂H/∂α at α_i = 1/k. There the superposed layer is one dense layer,

    y_b = Σ_i α_i (W ⊙ M_i) x_b = a (W ⊙ S) x_b,      S = Σ_i M_i (a count per weight), a = 1/k,

and the gradient it needs from this layer is, for every task i,

    ∂H_b/∂α_{b,i} = g_b^T (W ⊙ M_i) x_b,               g_b = ∂H_b/∂y_b,

while the gradient it passes on to the layers before it is a (W ⊙ S)^T g_b. So the forward is one
product with W ⊙ S, computed once per candidate list and kept across batches (the masks are unpacked
once for all batches, not for every batch), and the backward unpacks each packed mask once per call
(a byte -> 8 floats lookup table, `unpack_rows`) and multiplies it with the whole batch at once:
one (k o, i) x (i, B) product in chunks of tasks. The superposed forward instead multiplies every
W ⊙ M_i with the batch forward and again backward (twice the arithmetic) and unpacks the masks
per chunk of examples.

Axis legend: b = examples, k = tasks, o = outputs, i = inputs, n = o i weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_TABLE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def byte_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(256, 8): the bits of every byte value, most significant first (bitpack's order), as 0/1 floats."""
    key = (dtype, device)
    if key not in _TABLE:
        _TABLE[key] = ((torch.arange(256, dtype=torch.uint8)[:, None] & _BITS) != 0).to(device=device, dtype=dtype)
    return _TABLE[key]


def unpack_rows(packed: Tensor, n: int, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """Packed masks (k, ceil(n / 8)) uint8 -> (k, n) 0/1 values, through the byte table (one gather)."""
    table = byte_table(dtype, packed.device)
    k = packed.shape[0]
    full = torch.index_select(table, 0, packed.reshape(-1).long())  # (k n8, 8)
    full = full.view(k, -1)[:, :n]
    if out is None:
        return full
    return out.copy_(full)


class UniformSuperposition(torch.autograd.Function):
    """y = a x (W ⊙ S)^T + bias at α = a everywhere; backward gives ∂/∂α per example and task (module docstring).

    Inputs: x (b, i), alpha (b, k) (every entry a), the weight W (o, i), the bias or None, W ⊙ S (o, i),
    the k packed masks (a list of (ceil(n / 8),) uint8, read in chunks), and the tasks per chunk of the backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None, w_sum: Tensor,
                packed: list[Tensor], chunk: int) -> Tensor:
        a = alpha[0, 0]
        y = torch.nn.functional.linear(x, w_sum) * a
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, alpha, weight, w_sum)
        ctx.packed, ctx.chunk, ctx.has_bias = packed, chunk, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, g_y: Tensor) -> tuple[Tensor | None, ...]:
        x, alpha, weight, w_sum = ctx.saved_tensors
        packed = ctx.packed
        g_x = g_alpha = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = (g_y @ w_sum) * alpha[0, 0]
        if ctx.needs_input_grad[1]:
            k, (o, i) = len(packed), weight.shape
            g_alpha = alpha.new_empty(alpha.shape)
            kc = min(ctx.chunk, k)
            masks = weight.new_empty(kc, o * i)  # reused for every chunk: no fresh pages per chunk
            for start in range(0, k, kc):
                part = torch.stack(packed[start : start + kc])  # (kc, ceil(n / 8))
                m = unpack_rows(part, o * i, weight.dtype, out=masks[: part.shape[0]])
                m.view(-1, o, i).mul_(weight)  # W ⊙ M_j
                z = x @ m.view(-1, i).t()  # (b, kc o)
                g_alpha[:, start : start + part.shape[0]] = torch.einsum("bko,bo->bk", z.view(x.shape[0], -1, o), g_y)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            g_b = g_y.sum(0)
        return g_x, g_alpha, None, g_b, None, None, None


def weighted_mask_sum(weight: Tensor, packed: list[Tensor], chunk: int = 64) -> Tensor:
    """W ⊙ Σ_i M_i for packed masks, unpacked `chunk` at a time."""
    n = weight.numel()
    total = weight.new_zeros(n)
    for start in range(0, len(packed), chunk):
        total += unpack_rows(torch.stack(packed[start : start + chunk]), n, weight.dtype).sum(0)
    return weight * total.view_as(weight)
