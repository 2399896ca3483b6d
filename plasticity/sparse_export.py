"""Export trained sparse layers as real sparse tensors (CSR) and run inference from them.

`export_layer(layer, task)` turns one `SparseLayer` into a `SparseInference`
module holding only the active connections of task `task`'s sub-network (all
connections when None) as a `torch.sparse_csr_tensor`; `export_sparse(backbone)`
returns a copy of a backbone with every wrapped layer replaced that way.

Axes: b = batch, o = outputs, k = inputs of one output (in_features, or
in_channels * kh * kw for a convolution), l = output positions (h' * w').
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agentlab.layers import replace_layer
from agentlab.plasticity.sparse_layer import SparseLayer, iter_sparse, sparse_bytes


class SparseInference(nn.Module):
    """y = W_csr x + b for a Linear, or the same over unfolded patches for a Conv2d (groups = 1)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, conv: dict | None = None, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = weight  # sparse CSR (o, k)
        self.bias = bias
        self.conv = conv  # kernel_size, stride, padding, dilation for a convolution; None for a Linear
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            y = torch.sparse.mm(self.weight, rearrange(x, "b k -> k b"))  # (o, b)
            y = rearrange(y, "o b -> b o")
            return y + self.bias if self.bias is not None else y
        c = self.conv
        cols = F.unfold(x, c["kernel_size"], dilation=c["dilation"], padding=c["padding"], stride=c["stride"])  # (b, k, l)
        h = (x.shape[2] + 2 * c["padding"][0] - c["dilation"][0] * (c["kernel_size"][0] - 1) - 1) // c["stride"][0] + 1
        w = (x.shape[3] + 2 * c["padding"][1] - c["dilation"][1] * (c["kernel_size"][1] - 1) - 1) // c["stride"][1] + 1
        y = torch.sparse.mm(self.weight, rearrange(cols, "b k l -> k (b l)"))  # (o, b*l)
        y = rearrange(y, "o (b h w) -> b o h w", b=x.shape[0], h=h, w=w)
        return y + self.bias.view(1, -1, 1, 1) if self.bias is not None else y

    def nbytes(self) -> int:
        """Bytes of the CSR weight as sparse_bytes counts them (float32 values, int32 indices)."""
        return sparse_bytes(int(self.weight.values().numel()), self.shape[0])


def export_layer(layer: SparseLayer, task: int | None = None) -> SparseInference:
    """The connections of `layer` active for `task` (all when None) as a CSR inference module."""
    base = layer.base_layer
    keep = layer.active(task)
    w = (layer.weight.detach() * keep).reshape(layer.owner.shape[0], -1)  # (o, k)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = w.to_sparse_csr()
    # to_sparse_csr drops exact zeros; a trained connection at exactly 0 contributes nothing, so outputs agree
    bias = base.bias.detach().clone() if base.bias is not None else None
    conv = None
    if isinstance(base, nn.Conv2d):
        conv = {k: tuple(getattr(base, k)) for k in ("kernel_size", "stride", "padding", "dilation")}
        if isinstance(base.padding, str):
            raise ValueError("export of a Conv2d with string padding is not supported; give padding as integers")
    return SparseInference(csr, bias, conv=conv, shape=tuple(layer.owner.shape))


def export_sparse(backbone: nn.Module, task: int | None = None) -> nn.Module:
    """A copy of `backbone` whose SparseLayers are replaced by CSR inference modules for `task`."""
    out = copy.deepcopy(backbone)
    for name, layer in list(iter_sparse(out)):
        replace_layer(out, name, export_layer(layer, task))
    return out.eval()
