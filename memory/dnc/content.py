"""Content-based addressing (Graves et al. 2016, Methods, "Content-based addressing").

    C(M, k, beta)[i] = exp(beta * D(k, M[i])) / sum_j exp(beta * D(k, M[j]))
    D(u, v) = u . v / (|u| |v|)                                  (cosine similarity)

Axis legend: b batch, h heads (read or write), n memory slots, d word width.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

EPS = 1e-6


def safe_norm(x: Tensor, eps: float = EPS) -> Tensor:
    """Euclidean norm over the last axis with eps inside the root: finite gradients at x = 0."""
    return torch.sqrt((x * x).sum(-1) + eps)


def cosine_similarity(memory: Tensor, keys: Tensor, eps: float = EPS) -> Tensor:
    """D(k_h, M[n]) for every head and slot.

    memory (b, n, d), keys (b, h, d) -> (b, h, n). An all-zero memory row gives 0, not NaN.
    """
    dot = einsum(keys, memory, "b h d, b n d -> b h n")
    norms = safe_norm(keys, eps)[:, :, None] * safe_norm(memory, eps)[:, None, :]  # (b, h, n)
    return dot / norms


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """The content weighting C(M, k, beta): a softmax over slots of strength-scaled similarity.

    memory (b, n, d), keys (b, h, d), strengths (b, h) with beta >= 1 (oneplus) -> (b, h, n).
    """
    return torch.softmax(strengths[:, :, None] * cosine_similarity(memory, keys), dim=-1)


def oneplus(x: Tensor) -> Tensor:
    """oneplus(x) = 1 + log(1 + e^x): the paper's map onto [1, inf) for key strengths."""
    return 1.0 + torch.nn.functional.softplus(x)
