"""Temporal memory linkage (Graves et al. 2016, Methods, "Temporal memory linkage").

    p_t      = (1 - sum_i w_t^w[i]) p_{t-1} + w_t^w                     precedence
    L_t[i,j] = (1 - w_t^w[i] - w_t^w[j]) L_{t-1}[i,j] + w_t^w[i] p_{t-1}[j]
    L_t[i,i] = 0
    f_t^i = L_t w_{t-1}^{r,i},   b_t^i = L_t^T w_{t-1}^{r,i}           forward / backward weights

L[i, j] is how much slot i was written right after slot j. Each write head has
its own link matrix and precedence (deepmind/dnc), so a read head gets one
forward and one backward weighting per write head.

Axis legend: b batch, w write heads, r read heads, i j n memory slots.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LinkageState(NamedTuple):
    """link (b, w, n, n) with a zero diagonal; precedence (b, w, n)."""

    link: Tensor
    precedence: Tensor


def initial_linkage(batch: int, num_writes: int, slots: int, device: torch.device | str = "cpu") -> LinkageState:
    return LinkageState(
        torch.zeros(batch, num_writes, slots, slots, device=device), torch.zeros(batch, num_writes, slots, device=device)
    )


def off_diagonal(n: int, device: torch.device | str = "cpu") -> Tensor:
    """(n, n) ones with a zero diagonal: the mask that keeps L[i, i] = 0."""
    return 1.0 - torch.eye(n, device=device)


def update_linkage(state: LinkageState, write_weights: Tensor, mask: Tensor | None = None) -> LinkageState:
    """L_t and p_t from the previous state and this step's write weights (b, w, n).

    mask: `off_diagonal(n)`, passed in by callers that step many times so it is built once.
    """
    w_i = write_weights[..., :, None]  # (b, w, n, 1)
    w_j = write_weights[..., None, :]  # (b, w, 1, n)
    keep = (1.0 - w_i) - w_j  # (b, w, n, n)
    link = torch.addcmul(keep * state.link, w_i, state.precedence[..., None, :])
    link = link * (off_diagonal(write_weights.shape[-1], link.device) if mask is None else mask)  # L[i, i] = 0
    precedence = torch.addcmul(write_weights, 1.0 - write_weights.sum(-1, keepdim=True), state.precedence)
    return LinkageState(link, precedence)


def directional_weights(link: Tensor, read_weights: Tensor, *, forward: bool) -> Tensor:
    """f = L w_r (forward) or b = L^T w_r (backward). link (b, w, n, n), read_weights (b, r, n) -> (b, r, w, n).

    As one batched product per write head: f[r, i] = sum_j w_r[r, j] L[i, j] is w_r @ L^T; b is w_r @ L.
    """
    mat = link.transpose(-1, -2) if forward else link  # (b, w, n, n)
    return torch.matmul(read_weights[:, None], mat).transpose(1, 2)  # (b, w, r, n) -> (b, r, w, n)
