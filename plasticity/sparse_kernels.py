"""A sparse layer's product on CSR storage: y = x W^T + b with W's connections only.

SET keeps 5% of a layer's connections (Mocanu et al. 2018); the masked dense product
x (W ⊙ M)^T still costs the dense matrix products, and more (the mask multiply and its
gradient). Here the three products of a training step touch the connections only:

    forward          y^T = W_csr x^T + b                           CSR x dense   (o x i at nnz)
    input gradient   g_x^T = W^T_csr g_y^T                         the transposed pattern, also CSR
    weight gradient  g_W[r, c] = Σ_b g_y[b, r] x[b, c] at (r, c) in the pattern only
                     (a sampled dense-dense product, SDDMM), scattered into a dense gradient

The weight itself stays the base layer's dense parameter (so the optimiser, checkpoints,
rewiring and every reader of `.weight` see what they saw before); each step gathers the
connections' values from it (one index_select of nnz values per product). The gradient is
returned dense with zeros off the pattern, exactly the gradient the masked dense product gives
at every position (free positions get no gradient there either). A per-connection 0/1 factor
`trainable` detaches frozen connections (SET's frozen-and-grow mode).

The pattern (`CSRPattern`) is rebuilt only when the topology changes (a rewiring, a task
switch): O(positions) once per rewiring, nothing per step.

Axes: b = examples, o = output units, i = inputs, nnz = connections.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor



class CSRPattern:
    """Where a layer's connections are: row-major (CSR) and column-major (CSR of W^T) index arrays."""

    def __init__(self, active: Tensor, trainable: Tensor | None = None) -> None:
        """active: bool (o, i); trainable: bool (o, i) subset of active that receives gradients (None = all)."""
        o, i = active.shape
        self.shape = (o, i)
        flat = active.reshape(-1).nonzero().squeeze(1)  # (nnz,) row-major = CSR order
        rows, cols = flat // i, flat % i
        self.flat = flat
        self.crow = _pointers(rows, o)
        self.col = cols
        order = torch.argsort(cols * o + rows)  # column-major: the CSR order of W^T
        self.flat_t = flat[order]
        self.crow_t = _pointers(cols, i)
        self.col_t = rows[order]
        self.nnz = int(flat.numel())
        self.trainable = None if trainable is None else trainable.reshape(-1)[flat]  # (nnz,) bool
        self._shell: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the CSR shell is rebuilt on demand: a sparse tensor cannot be deep-copied or pickled like a dense one
        return {k: v for k, v in self.__dict__.items() if k != "_shell"} | {"_shell": None}

    def csr(self, values: Tensor) -> Tensor:
        return _csr(self.crow, self.col, values, self.shape)

    def csr_t(self, values_t: Tensor) -> Tensor:
        return _csr(self.crow_t, self.col_t, values_t, (self.shape[1], self.shape[0]))

    def shell(self, like: Tensor) -> Tensor:
        """The pattern as a CSR tensor of `like`'s dtype (the sampled product's output layout)."""
        if self._shell is None or self._shell.dtype != like.dtype:
            self._shell = self.csr(like.new_zeros(self.nnz))
        return self._shell


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    # the indices come from nonzero() and bincount, valid by construction: no invariant check per step;
    # the products used here are stable, PyTorch's generic "beta" notice says nothing about them
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _pointers(rows: Tensor, n: int) -> Tensor:
    out = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    out[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return out


class SparseLinear(torch.autograd.Function):
    """y = x W^T + b over the pattern's connections; see the module docstring. x (b, i) -> (b, o)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, pattern: CSRPattern) -> Tensor:
        flat_w = weight.reshape(-1)
        csr = pattern.csr(flat_w.index_select(0, pattern.flat))
        xt = x.t()
        y_t = torch.addmm(bias[:, None], csr, xt) if bias is not None else csr @ xt  # (o, b)
        ctx.save_for_backward(x, weight)
        ctx.pattern = pattern
        return y_t.t()

    @staticmethod
    def backward(ctx: Any, g_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        pattern: CSRPattern = ctx.pattern
        g_x = g_w = g_b = None
        g_yt = g_y.t()  # (o, b)
        if ctx.needs_input_grad[0]:
            w_t = pattern.csr_t(weight.reshape(-1).index_select(0, pattern.flat_t))
            g_x = (w_t @ g_yt.contiguous()).t()  # (b, i)
        if ctx.needs_input_grad[1]:
            sampled = torch.sparse.sampled_addmm(pattern.shell(g_y), g_yt, x, beta=0.0).values()  # (nnz,)
            if pattern.trainable is not None:
                sampled = sampled * pattern.trainable.to(sampled.dtype)
            g_w = weight.new_zeros(weight.shape)
            g_w.view(-1).index_copy_(0, pattern.flat, sampled)
        if ctx.needs_input_grad[2]:
            g_b = g_y.sum(0)
        return g_x, g_w, g_b, None


def sparse_linear(x: Tensor, weight: Tensor, bias: Tensor | None, pattern: CSRPattern) -> Tensor:
    """x (..., i) -> (..., o) through `SparseLinear`, any number of leading axes."""
    lead = x.shape[:-1]
    y = SparseLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, pattern)
    return y.reshape(*lead, y.shape[-1])
