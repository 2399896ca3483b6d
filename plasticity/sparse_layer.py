"""A connectivity mask on `Linear` and `Conv2d` layers, shared by SET and lottery tickets.

`SparseLayer` is the transform SET and a lottery ticket register on a wrapped layer
(`agentlab.wrapping.WrappedLayer`, the original kept as `base_layer`). It holds one buffer,
`owner` (same shape as the weight, int16): -1 marks a free position, t >= 0 a
connection that task t owns. The effective weight is the incoming one times a 0/1 mask:

    single sub-network:   mask = owner >= 0
    frozen-and-grow:      mask = (owner >= 0) & (owner <= view)       (task `view` sees tasks 0..view)

and, while task t trains in frozen-and-grow mode, the gradient reaches only
positions with owner == t (the earlier tasks' part of the weight is detached):
earlier tasks' connections are frozen, so their outputs cannot change
(PackNet-style isolation, Mallya & Lazebnik 2018, grown sparsely as in SET).
Free positions get no gradient through the mask.

Sparse kernels (`sparse_kernels`, SET's default): on the CPU, a `Linear` layer on which this
transform is the only one in force computes its output on CSR storage
(`agentlab.plasticity.sparse_kernels`: forward, input gradient and a weight gradient sampled at
the connections), the same function and gradients as the masked dense product, for about the
connections' share of its arithmetic. The dense weight stays the parameter and `.weight` still
returns the masked weight, so readers, the optimiser, checkpoints and rewiring are unchanged.
The masked dense product is used instead when another transform is stacked on the layer (a
SupSup supermask, a LoRA delta: they change the weight densely), for `Conv2d`, on a GPU, and
while RigL's regrowth needs the dense gradient at empty positions (`keep_grad`).

Axes: o = output units / channels, i = inputs (in_features or in_channels*kh*kw).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from agentlab.plasticity.sparse_kernels import CSRPattern, sparse_linear
from agentlab.wrapping import LayerTransform, WrappedLayer

FREE = -1
VALUE_BYTES = 4  # float32 value of a stored connection
INDEX_BYTES = 4  # int32 column index (CSR) of a stored connection


def erdos_renyi_density(shape: torch.Size | tuple[int, ...], epsilon: float) -> float:
    """SET's Erdos-Renyi connection probability (Mocanu et al. 2018, eq. 1), clipped to 1.

    Linear (o, i): p = eps (i + o) / (i * o); Conv2d (o, c, kh, kw): the ERK form of
    RigL (Evci et al. 2020), p = eps (o + c + kh + kw) / (o * c * kh * kw).
    """
    return min(1.0, epsilon * sum(shape) / math.prod(shape))


def put_flat_(t: Tensor, positions: Tensor, values: Tensor | float) -> None:
    """t[positions] = values for flat positions in row-major order, whatever t's memory layout (a channels-last
    convolution kernel has no flat view)."""
    t[torch.unravel_index(positions.to(t.device), t.shape)] = values


def random_positions(candidates: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """Flat indices of `n` positions drawn uniformly without replacement where `candidates` (bool) is True."""
    idx = candidates.flatten().nonzero().squeeze(1)
    n = min(n, idx.numel())
    if n <= 0:
        return idx[:0]
    # drawn where the generator lives (a private CPU generator keeps rewiring reproducible on any device)
    where = generator.device if generator is not None else idx.device
    pick = torch.randperm(idx.numel(), generator=generator, device=where)[:n].to(idx.device)
    return idx[pick]


class SparseLayer(LayerTransform):
    """Task-owned connections of one Linear or Conv2d; see the module docstring."""

    def __init__(self, base_layer: nn.Module, *, freeze_per_task: bool = False, rewires: bool = True,
                 sparse_kernels: bool = False) -> None:
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"SparseLayer works on nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1:
            raise ValueError("SparseLayer supports Conv2d with groups=1 only")
        self.freeze_per_task = freeze_per_task
        # SET's rewiring and per-task growth, and IMP's rewinding, change the base weight itself
        self.base_weight = "trained" if rewires or freeze_per_task else "any"
        self.base_weight_reason = ("it grows and trains connections per task" if freeze_per_task else
                                   "it prunes and regrows connections by weight magnitude")
        self.register_buffer("owner", torch.full(base_layer.weight.shape, FREE, dtype=torch.int16))
        self.view: int | None = None  # task whose sub-network the forward uses (None = every connection)
        self.train_task: int | None = None  # task whose connections receive gradients (frozen-and-grow)
        self._mask_key: tuple | None = None
        self._mask: tuple[Tensor, Tensor | None] | None = None
        self._version = 0
        self.keep_grad = False  # RigL regrowth needs dL/dw at empty positions
        self.dense_grad: Tensor | None = None
        self.sparse_kernels = sparse_kernels and isinstance(base_layer, nn.Linear)
        self._pattern_key: tuple | None = None
        self._pattern: CSRPattern | None = None

    # ------------------------------------------------------------------ masks
    def changed(self) -> None:
        """Call after editing `owner` so the cached mask is rebuilt."""
        self._version += 1

    def active(self, view: int | None = None) -> Tensor:
        """Bool mask (o, i...) of the connections the forward pass uses for task `view`."""
        own = self.owner
        if self.freeze_per_task and view is not None:
            return (own >= 0) & (own <= view)
        return own >= 0

    def mask(self) -> tuple[Tensor, Tensor | None]:
        """Float masks (trainable part, frozen part or None), cached until `owner`, view or task change."""
        key = (self._version, self.view, self.train_task, self.owner.device, self.weight.dtype)
        if self._mask is None or self._mask_key != key:
            act = self.active(self.view)
            if self.freeze_per_task and self.train_task is not None:
                mine = act & (self.owner == self.train_task)
                self._mask = (mine.to(self.weight.dtype), (act & ~mine).to(self.weight.dtype))
            else:
                self._mask = (act.to(self.weight.dtype), None)
            self._mask_key = key
        return self._mask

    def pattern(self) -> CSRPattern:
        """The CSR index structure of the connections in use, rebuilt when `owner`, view or task change."""
        key = (self._version, self.view, self.train_task, self.owner.device)
        if self._pattern is None or self._pattern_key != key:
            act = self.active(self.view)
            frozen_parts = self.freeze_per_task and self.train_task is not None
            self._pattern = CSRPattern(act, (act & (self.owner == self.train_task)) if frozen_parts else None)
            self._pattern_key = key
        return self._pattern

    def uses_sparse_kernels(self, x: Tensor) -> bool:
        """Whether this forward runs on CSR storage (see the module docstring)."""
        return (self.sparse_kernels and not self.keep_grad and x.device.type == "cpu" and x.dim() >= 2
                and x.dtype in (torch.float32, torch.float64) and self.layer.active() == [self])

    def trainable(self) -> Tensor:
        """Bool mask of connections that may change now (the training task's own connections)."""
        if self.freeze_per_task and self.train_task is not None:
            return self.owner == self.train_task
        return self.owner >= 0

    def masked_weight(self, w: Tensor | None = None) -> Tensor:
        """The weight `w` (default: the base weight) with this mask; frozen connections enter detached."""
        w = self.weight if w is None else w
        mine, frozen = self.mask()
        out = w * mine
        if frozen is not None:
            out = out + (w * frozen).detach()
        return out

    def _store_grad(self, grad: Tensor) -> None:
        self.dense_grad = grad.detach()  # the last step's gradient w.r.t. the effective weight (dense)

    # ------------------------------------------------------------------ the transform
    def transform_weight(self, w: Tensor) -> Tensor:
        out = self.masked_weight(w)
        if self.keep_grad and out.requires_grad and torch.is_grad_enabled():
            out.register_hook(self._store_grad)
        return out

    def superposed(self, x: Tensor, w: Tensor, b: Tensor | None, after: Any, after_bias: Any) -> Tensor | None:
        """The whole product on CSR storage when this transform is alone on a Linear layer on the CPU;
        None (the masked dense product) otherwise."""
        if not self.uses_sparse_kernels(x):
            return None
        return sparse_linear(x, w, b, self.pattern())

    # ------------------------------------------------------------------ counts
    def n_connections(self) -> int:
        return self.owner.numel()

    def n_active(self, task: int | None = None) -> int:
        """Active connections: all of them, or those owned by `task`."""
        if task is None:
            return int((self.owner >= 0).sum())
        return int((self.owner == task).sum())

    def density(self) -> float:
        return self.n_active() / self.n_connections()

    def rows(self) -> int:
        return self.owner.shape[0]

    def extra_repr(self) -> str:
        return f"density={self.density():.4f}, freeze_per_task={self.freeze_per_task}"


def iter_sparse(backbone: nn.Module, owner: str | None = None) -> Iterator[tuple[str, SparseLayer]]:
    """(wrapped layer name, SparseLayer) of every sparse transform in `backbone` (of one module when `owner`)."""
    for n, m in backbone.named_modules():
        if isinstance(m, WrappedLayer):
            for name, t in m.transforms.items():
                if isinstance(t, SparseLayer) and (owner is None or name == owner):
                    yield n, t


def sparse_bytes(nnz: int, rows: int) -> int:
    """Bytes of a CSR matrix with `nnz` float32 values, int32 column indices and `rows + 1` int32 row pointers."""
    return nnz * (VALUE_BYTES + INDEX_BYTES) + (rows + 1) * INDEX_BYTES if nnz else 0
