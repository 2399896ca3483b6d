"""A connectivity-masked wrapper for `Linear` and `Conv2d` layers, shared by SET and lottery tickets.

The wrapper keeps the original layer as `base_layer` (PEFT style) and one buffer,
`owner` (same shape as the weight, int16): -1 marks a free position, t >= 0 a
connection that task t owns. The forward pass uses the weight times a 0/1 mask:

    single sub-network:   mask = owner >= 0
    frozen-and-grow:      mask = (owner >= 0) & (owner <= view)       (task `view` sees tasks 0..view)

and, while task t trains in frozen-and-grow mode, the gradient reaches only
positions with owner == t (the earlier tasks' part of the weight is detached):
earlier tasks' connections are frozen, so their outputs cannot change
(PackNet-style isolation, Mallya & Lazebnik 2018, grown sparsely as in SET).
Free positions get no gradient through the mask.

Axes: o = output units / channels, i = inputs (in_features or in_channels*kh*kw).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.layers import replace_layer

FREE = -1
VALUE_BYTES = 4  # float32 value of a stored connection
INDEX_BYTES = 4  # int32 column index (CSR) of a stored connection


def erdos_renyi_density(shape: torch.Size | tuple[int, ...], epsilon: float) -> float:
    """SET's Erdos-Renyi connection probability (Mocanu et al. 2018, eq. 1), clipped to 1.

    Linear (o, i): p = eps (i + o) / (i * o); Conv2d (o, c, kh, kw): the ERK form of
    RigL (Evci et al. 2020), p = eps (o + c + kh + kw) / (o * c * kh * kw).
    """
    return min(1.0, epsilon * sum(shape) / math.prod(shape))


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


class SparseLayer(nn.Module):
    """A Linear or Conv2d whose connections are owned by tasks; see the module docstring."""

    def __init__(self, base_layer: nn.Module, *, freeze_per_task: bool = False) -> None:
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"SparseLayer wraps nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1:
            raise ValueError("SparseLayer supports Conv2d with groups=1 only")
        self.base_layer = base_layer
        self.freeze_per_task = freeze_per_task
        self.register_buffer("owner", torch.full(base_layer.weight.shape, FREE, dtype=torch.int16))
        self.view: int | None = None  # task whose sub-network the forward uses (None = every connection)
        self.train_task: int | None = None  # task whose connections receive gradients (frozen-and-grow)
        self._mask_key: tuple | None = None
        self._mask: tuple[Tensor, Tensor | None] | None = None
        self._version = 0
        self.keep_grad = False  # RigL regrowth needs dL/dw at empty positions
        self.dense_grad: Tensor | None = None

    # ------------------------------------------------------------------ masks
    @property
    def weight(self) -> nn.Parameter:
        return self.base_layer.weight

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

    def trainable(self) -> Tensor:
        """Bool mask of connections that may change now (the training task's own connections)."""
        if self.freeze_per_task and self.train_task is not None:
            return self.owner == self.train_task
        return self.owner >= 0

    def masked_weight(self) -> Tensor:
        """The weight the forward uses; frozen connections enter detached (no gradient)."""
        mine, frozen = self.mask()
        w = self.weight * mine
        if frozen is not None:
            w = w + (self.weight * frozen).detach()
        return w

    def _store_grad(self, grad: Tensor) -> None:
        self.dense_grad = grad.detach()  # the last step's gradient w.r.t. the effective weight (dense)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        w = self.masked_weight()
        if self.keep_grad and w.requires_grad:
            w.register_hook(self._store_grad)
        layer = self.base_layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, layer.bias)  # (B, o)
        return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

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


def find_layers(backbone: nn.Module, patterns: list[str], *, exclude: list[str] = ()) -> list[str]:
    """Names of Linear/Conv2d modules in `backbone` matching any glob in `patterns` and none in `exclude`."""
    names = [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    keep = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return [n for n in keep if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


def wrap_layers(
    backbone: nn.Module, patterns: list[str], *, exclude: list[str] = (), make: Callable[[nn.Module], SparseLayer]
) -> dict[str, SparseLayer]:
    """Replace every matching layer of `backbone` by `make(layer)`; returns {name: wrapper} in module order."""
    names = find_layers(backbone, patterns, exclude=exclude)
    if not names:
        found = [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
        raise ValueError(f"no Linear/Conv2d layer matches {patterns} (excluding {list(exclude)}); layers: {found}")
    out = {}
    for n in names:
        w = make(backbone.get_submodule(n))
        replace_layer(backbone, n, w)
        out[n] = w
    return out


def iter_sparse(backbone: nn.Module) -> Iterator[tuple[str, SparseLayer]]:
    for n, m in backbone.named_modules():
        if isinstance(m, SparseLayer):
            yield n, m


def sparse_bytes(nnz: int, rows: int) -> int:
    """Bytes of a CSR matrix with `nnz` float32 values, int32 column indices and `rows + 1` int32 row pointers."""
    return nnz * (VALUE_BYTES + INDEX_BYTES) + (rows + 1) * INDEX_BYTES if nnz else 0
