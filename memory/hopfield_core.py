"""The modern Hopfield update (Ramsauer et al., ICLR 2021, "Hopfield Networks is All You Need").

    xi_new = Y^T softmax(beta Y xi)                       (eq. 3; Y = stored patterns, rows)
    E(xi)  = -lse(beta, Y xi) + 1/2 xi^T xi + const       (the energy each update lowers)

In attention form, with state (query) patterns R, stored (key) patterns Y and
pattern projections (values) V, one update gives softmax(beta R Y^T) V. Iterated
retrieval replaces the state by its retrieval in the stored patterns' space,
R <- softmax(beta R Y^T) Y, and stops per head when `update_steps_max` updates
were made (None: no limit) or the association matrix moved by at most
`update_steps_eps` (Frobenius norm over query x stored, largest over the batch),
the `hopfield-layers` package's stopping rule. The final read-out uses
`torch.nn.functional.scaled_dot_product_attention` when no association matrix
is asked for and no dropout applies.

Axis legend: b batch, h heads, l state (query) patterns, s stored patterns,
d Hopfield-space width (head_dim), p pattern width (pattern_dim).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor


class Retrieval(NamedTuple):
    """output (b, h, l, p); association (b, h, l, s) or None; steps: updates made (int)."""

    output: Tensor
    association: Tensor | None
    steps: int


def _per_head(x: float | int | Tensor | None, heads: int, like: Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        if x.dim() != 1 or x.shape[0] != heads:
            raise ValueError(f"a per-head tensor needs shape ({heads},), got {tuple(x.shape)}")
        return x.to(device=like.device, dtype=dtype)
    return torch.full((heads,), float(x), device=like.device, dtype=dtype)


def association_logits(q: Tensor, k: Tensor, beta: Tensor, mask: Tensor | None) -> Tensor:
    """beta R Y^T plus the additive mask. q (b, h, l, d), k (b, h, s, d), beta (h,), mask broadcastable to (b, h, l, s)."""
    logits = einsum(q, k, "b h l d, b h s d -> b h l s") * beta[None, :, None, None]
    return logits if mask is None else logits + mask


def additive_mask(padding: Tensor | None, association: Tensor | None, b: int, h: int, dtype: torch.dtype) -> Tensor | None:
    """One additive mask from a stored-pattern padding mask (b, s; True = ignore) and an association
    mask ((l, s) or (b*h, l, s); bool True = forbidden, or float added). -> (b or 1, h or 1, l or 1, s) or None."""
    out = None
    if padding is not None:
        out = torch.zeros(padding.shape, dtype=dtype, device=padding.device).masked_fill(padding.bool(), float("-inf"))[:, None, None, :]
    if association is not None:
        m = association
        if m.dtype == torch.bool or m.dtype == torch.uint8:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m.bool(), float("-inf"))
        m = m.to(dtype)
        m = m[None, None] if m.dim() == 2 else m.reshape(b, h, *m.shape[1:])
        out = m if out is None else out + m
    return out


def hopfield_retrieve(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scaling: float | Tensor,
    update_steps_max: int | Tensor | None = 0,
    update_steps_eps: float | Tensor = 1e-4,
    mask: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    need_association: bool = False,
) -> Retrieval:
    """Iterated modern-Hopfield retrieval.

    q (b, h, l, d) state patterns, k (b, h, s, d) stored patterns, v (b, h, s, p) pattern
    projections, all already in Hopfield space; scaling beta (float or (h,)); mask additive,
    broadcastable to (b, h, l, s). update_steps_max: 0 = one update (plain attention),
    n = up to n extra state updates, None = until converged (per head, int or (h,) tensor).
    """
    h = q.shape[1]
    beta = _per_head(scaling, h, q, q.dtype)
    if update_steps_max is None:
        max_steps = torch.full((h,), -1, dtype=torch.long, device=q.device)
    else:
        max_steps = _per_head(update_steps_max, h, q, torch.long)
    eps = _per_head(update_steps_eps, h, q, q.dtype)
    if bool((eps <= 0).any()):
        raise ValueError("update_steps_eps must be > 0")
    xi = torch.softmax(association_logits(q, k, beta, mask), dim=-1)  # (b, h, l, s)
    step = 0
    active = (max_steps > 0) | (max_steps < 0)  # (h,)
    while bool(active.any()):
        new_q = einsum(xi, k, "b h l s, b h s d -> b h l d")  # R <- softmax(beta R Y^T) Y
        q = torch.where(active[None, :, None, None], new_q, q)
        new_xi = torch.softmax(association_logits(q, k, beta, mask), dim=-1)
        with torch.no_grad():
            moved = (new_xi - xi).flatten(2).norm(dim=-1).amax(dim=0)  # (h,) largest over the batch
        xi = torch.where(active[None, :, None, None], new_xi, xi)
        step += 1
        active = active & ((step < max_steps) | (max_steps < 0)) & (moved > eps)
    if need_association or (dropout > 0 and training):
        weights = F.dropout(xi, p=dropout, training=training)
        return Retrieval(einsum(weights, v, "b h l s, b h s p -> b h l p"), xi, step)
    # the same read-out through the fused kernel: softmax(beta q k^T + mask) v
    q_scaled = q * beta[None, :, None, None]
    out = F.scaled_dot_product_attention(q_scaled, k, v, attn_mask=mask, scale=1.0)
    return Retrieval(out, None, step)
