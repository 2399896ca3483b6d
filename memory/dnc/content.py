"""Content-based addressing (Graves et al. 2016, Methods, "Content-based addressing").

    C(M, k, beta)[i] = exp(beta * D(k, M[i])) / sum_j exp(beta * D(k, M[j]))
    D(u, v) = u . v / (|u| |v|)                                  (cosine similarity)

D is computed as one batched product of unit vectors, k / |k| against M / |M|
(eps inside every root, so an all-zero key or memory row gives 0 and finite gradients).

Axis legend: b batch, h heads (read or write), n memory slots, d word width.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6


def unit(x: Tensor, eps: float = EPS) -> Tensor:
    """x / sqrt(|x|^2 + eps) over the last axis. x (..., d) -> (..., d)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def cosine_similarity(memory: Tensor, keys: Tensor, eps: float = EPS) -> Tensor:
    """D(k_h, M[n]) for every head and slot.

    memory (b, n, d), keys (b, h, d) -> (b, h, n). An all-zero memory row gives 0, not NaN.
    """
    return torch.matmul(unit(keys, eps), unit(memory, eps).transpose(1, 2))  # (b, h, d) @ (b, d, n)


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """The content weighting C(M, k, beta): a softmax over slots of strength-scaled similarity.

    memory (b, n, d), keys (b, h, d), strengths (b, h) with beta >= 1 (oneplus) -> (b, h, n).
    """
    return torch.softmax(strengths[:, :, None] * cosine_similarity(memory, keys), dim=-1)


def oneplus(x: Tensor) -> Tensor:
    """oneplus(x) = 1 + log(1 + e^x): the paper's map onto [1, inf) for key strengths."""
    return 1.0 + torch.nn.functional.softplus(x)
