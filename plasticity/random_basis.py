"""Seeded pseudo-random bases, generated in chunks and regenerated instead of kept (NOLA, PRANC).

A basis of k random vectors of size n is never stored: chunk c (rows
c*chunk .. c*chunk + chunk - 1) is drawn from its own private `torch.Generator`
seeded by `mix(seed, c)`, so any chunk can be rebuilt alone, in any order, in
any process. The global RNG is never touched (the PRANC reference code re-seeds
it; we do not).

`combine(coeffs, seed, n)` returns sum_j coeffs[j] * basis[j] through an
autograd function that saves only `coeffs` for backward and regenerates the
basis there (grad coeffs[j] = <basis[j], grad_out>), as NOLA prescribes:
memory stays O(chunk * n) whatever k is.

Bases are drawn on the CPU (CPU and CUDA generators differ, and a basis must be
the same on every device) and moved to the coefficients' device.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import Tensor

Dist = Literal["normal", "uniform"]


def mix(*parts: int | str) -> int:
    """A 63-bit seed from several integers or strings (stable across processes and platforms)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def basis_chunk(seed: int, chunk_index: int, rows: int, n: int, dist: Dist = "normal") -> Tensor:
    """(rows, n) float32 rows of the basis: N(0, 1) or U(-1, 1), from a private generator."""
    g = torch.Generator(device="cpu")
    g.manual_seed(mix(seed, chunk_index))
    if dist == "normal":
        return torch.randn(rows, n, generator=g)
    return torch.rand(rows, n, generator=g).mul_(2.0).sub_(1.0)


def basis(seed: int, k: int, n: int, *, chunk: int = 32, dist: Dist = "normal") -> Tensor:
    """The whole (k, n) basis (tests and inspection only; training never materialises it)."""
    return torch.cat([basis_chunk(seed, c, min(chunk, k - s), n, dist) for c, s in enumerate(range(0, k, chunk))])


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs: Tensor, seed: int, n: int, chunk: int, dist: str) -> Tensor:  # type: ignore[override]
        k = coeffs.shape[0]
        out = torch.zeros(n, dtype=coeffs.dtype, device=coeffs.device)
        for c, s in enumerate(range(0, k, chunk)):
            b = basis_chunk(seed, c, min(chunk, k - s), n, dist).to(coeffs.device, coeffs.dtype)  # (m, n)
            out.addmv_(b.t(), coeffs[s : s + b.shape[0]])
        ctx.save_for_backward(coeffs)  # only the coefficients: the basis is regenerated below
        ctx.meta = (seed, n, chunk, dist)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (coeffs,) = ctx.saved_tensors
        seed, n, chunk, dist = ctx.meta
        k = coeffs.shape[0]
        grads = []
        for c, s in enumerate(range(0, k, chunk)):
            b = basis_chunk(seed, c, min(chunk, k - s), n, dist).to(grad_out.device, grad_out.dtype)
            grads.append(b @ grad_out)  # (m,)
        return torch.cat(grads), None, None, None, None


def combine(coeffs: Tensor, seed: int, n: int, *, chunk: int = 32, dist: Dist = "normal") -> Tensor:
    """(n,) sum_j coeffs[j] * basis_j for coeffs (k,); differentiable in coeffs, basis regenerated in backward."""
    if coeffs.ndim != 1:
        raise ValueError(f"coeffs must be a vector (k,), got shape {tuple(coeffs.shape)}")
    return _Combine.apply(coeffs, seed, n, chunk, dist)
