"""TensorBoard figures of sparse layers: density, weight-magnitude summaries and histogram images."""

from __future__ import annotations

import torch
from torch import Tensor

from agentlab.plasticity.sparse_layer import SparseLayer, sparse_bytes


def density_scalars(layers: dict[str, SparseLayer]) -> dict[str, float]:
    """density/<layer>, density/total and active_connections over the wrapped layers."""
    out: dict[str, float] = {}
    active = total = 0
    for name, layer in layers.items():
        out[f"density/{name}"] = layer.density()
        active += layer.n_active()
        total += layer.n_connections()
    out["density/total"] = active / max(total, 1)
    out["active_connections"] = float(active)
    out["sparse_bytes"] = float(sum(sparse_bytes(l.n_active(), l.rows()) for l in layers.values()))
    return out


def magnitude_scalars(layers: dict[str, SparseLayer]) -> dict[str, float]:
    """Quartiles of |w| over each layer's active connections: weight_abs_p25|p50|p75/<layer>."""
    out: dict[str, float] = {}
    for name, layer in layers.items():
        w = layer.weight.detach()[layer.owner >= 0].abs().float()
        if w.numel() == 0:
            continue
        q = torch.quantile(w[:1_000_000], torch.tensor([0.25, 0.5, 0.75], device=w.device))
        for tag, v in zip(("p25", "p50", "p75"), q.tolist()):
            out[f"weight_abs_{tag}/{name}"] = v
    return out


def histogram_image(values: Tensor, *, bins: int = 48, height: int = 40) -> Tensor:
    """A bar chart (1, height, bins) in [0, 1] of the histogram of `values` (log-scaled counts)."""
    v = values.detach().flatten().float().cpu()  # images are CPU tensors whatever the layer's device
    img = torch.zeros(1, height, bins)
    if v.numel() == 0:
        return img
    counts = torch.histc(v, bins=bins, min=0.0, max=float(v.max()) or 1.0)
    h = torch.log1p(counts) / torch.log1p(counts.max())
    bars = (h * height).round().long()  # (bins,)
    rows = torch.arange(height).unsqueeze(1)  # (height, 1)
    img[0] = (rows >= height - bars.unsqueeze(0)).float()  # a bar fills from the bottom
    return img


def magnitude_images(layers: dict[str, SparseLayer]) -> dict[str, Tensor]:
    """weight_hist/<layer>: histogram of |w| over the active connections, 0 to max|w| left to right."""
    return {f"weight_hist/{n}": histogram_image(l.weight[l.owner >= 0].abs()) for n, l in layers.items()}


def magnitude_histograms(layers: dict[str, SparseLayer]) -> dict[str, Tensor]:
    """weight_abs/<layer>: |w| over the active connections, for TensorBoard's histogram tab."""
    return {f"weight_abs/{n}": l.weight.detach()[l.owner >= 0].abs() for n, l in layers.items()}
