"""The two halves of a sparse-topology update: which connections to drop, where to grow new ones.

Pure functions over tensors so each rule can be tested alone:

* `prune_nearest_zero`   SET's removal (Mocanu et al. 2018, Alg. 1): the fraction zeta of the
                         smallest positive weights and, apart, of the largest negative weights;
* `regrow_random`        SET's regrowth at uniformly random empty positions;
* `regrow_gradient`      RigL's regrowth (Evci et al. 2020): empty positions with the largest |dL/dw|;
* `cosine_zeta`          RigL's drop fraction zeta_t = zeta/2 (1 + cos(pi t / T_end)), 0 after T_end.
"""

from __future__ import annotations


import torch
from torch import Tensor

from agentlab.optim import cosine_factor
from agentlab.plasticity.sparse_layer import random_positions


def _smallest(values: Tensor, index: Tensor, k: int) -> Tensor:
    """The entries of `index` whose `values` are the k smallest."""
    if k <= 0:
        return index[:0]
    order = torch.topk(values, k, largest=False, sorted=False).indices
    return index[order]


def prune_nearest_zero(weight: Tensor, candidates: Tensor, zeta: float) -> Tensor:
    """Bool mask (same shape as `weight`) of the connections to remove.

    Among the `candidates` (bool), weights >= 0 and weights < 0 are ranked apart
    and floor(zeta * n) of each sign nearest zero are removed, as SET does so that
    neither sign is wiped out when the two distributions differ.
    """
    w = weight.detach().flatten()
    cand = candidates.flatten()
    out = torch.zeros_like(cand)
    pos = (cand & (w >= 0)).nonzero().squeeze(1)
    neg = (cand & (w < 0)).nonzero().squeeze(1)
    drop_pos = _smallest(w[pos], pos, int(zeta * pos.numel()))
    drop_neg = _smallest(-w[neg], neg, int(zeta * neg.numel()))  # largest negative = smallest -w
    out[drop_pos] = True
    out[drop_neg] = True
    return out.view_as(candidates)


def regrow_random(free: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Flat indices of `n` uniformly random positions where `free` is True (fewer if not enough are free)."""
    return random_positions(free, n, generator)


def regrow_gradient(free: Tensor, grad: Tensor, n: int) -> Tensor:
    """Flat indices of the `n` free positions with the largest gradient magnitude (RigL)."""
    idx = free.flatten().nonzero().squeeze(1)
    n = min(n, idx.numel())
    if n <= 0:
        return idx[:0]
    score = grad.detach().flatten()[idx].abs()
    return idx[torch.topk(score, n, sorted=False).indices]


def cosine_zeta(zeta: float, t: int, t_end: int) -> float:
    """RigL's cosine-annealed drop fraction after `t` updates of `t_end` (Evci et al. 2020, eq. 1)."""
    return zeta * cosine_factor(t / t_end)
