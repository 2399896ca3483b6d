"""A vector-quantisation codebook: the discrete bottleneck of a VQ-VAE (van den Oord et al. 2017).

Axis legend: B batch, N vectors per example (patches, frames, characters), D code dim, K codes.

Forward maps encoder outputs z (..., D) to their nearest code e_k and returns
`z + sg(e_k - z)`: the straight-through estimator (van den Oord 2017, eq. 3), so
the decoder's gradient reaches the encoder unchanged. The loss is the commitment
term beta * ||z - sg(e)||^2 (eq. 3, beta = 0.25 as in the paper).

The codebook itself is not learnt by gradient but by exponential moving averages
(van den Oord 2017, appendix A.1; Razavi et al. 2019): with n_k the number of
vectors assigned to code k in a batch and s_k their sum,

    N_k <- g N_k + (1 - g) n_k          m_k <- g m_k + (1 - g) s_k          e_k = m_k / N~_k

where N~ is N with Laplace smoothing. Codes whose averaged count N_k falls under
`dead_threshold` are restarted on random encoder outputs of the batch (as in
Jukebox, Dhariwal et al. 2020, and SoundStream, Zeghidour et al. 2021) so that
codebook usage stays high. `usage()` and `perplexity` say how many codes are live.

With `normalize=True` inputs and codes live on the unit sphere and the nearest
code is the most cosine-similar one (the l2-normalised codebook of ViT-VQGAN,
Yu et al. 2021): encoders of different modalities, whose raw output scales
differ, then share codes instead of each collapsing onto one far-away code.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class VQOutput(NamedTuple):
    quantized: Tensor  # (..., D) straight-through: value of the codes, gradient of the inputs
    codes: Tensor  # (...) long, index of the nearest code
    commitment: Tensor  # () beta * ||z - sg(e)||^2
    perplexity: Tensor  # () exp(entropy of the batch's code histogram)


class VectorQuantizer(nn.Module):
    """K codes of dimension D, updated by EMA with dead-code restarts."""

    def __init__(
        self, *, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5,
        dead_threshold: float = 0.03, normalize: bool = False,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.decay, self.eps = num_codes, dim, beta, decay, eps
        self.dead_threshold, self.normalize = dead_threshold, normalize
        embed = torch.randn(num_codes, dim) / math.sqrt(dim)
        if normalize:
            embed = F.normalize(embed, dim=-1)
        self.register_buffer("embed", embed)  # (K, D) the codebook
        self.register_buffer("ema_count", torch.ones(num_codes))  # (K,) N_k
        self.register_buffer("ema_sum", embed.clone())  # (K, D) m_k
        self.register_buffer("hits", torch.zeros(num_codes))  # (K,) assignments since the last `reset_usage`
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def bits_per_code(self) -> int:
        """Bits needed to store one index: ceil(log2 K)."""
        return max(1, math.ceil(math.log2(self.num_codes)))

    def nearest(self, z: Tensor) -> Tensor:
        """Index (...) of the nearest code to each vector of z (..., D), by squared Euclidean distance."""
        flat = rearrange(z, "... d -> (...) d")
        if self.normalize:
            return (F.normalize(flat, dim=-1) @ self.embed.t()).argmax(1).view(z.shape[:-1])
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]  # (M, K)
        return dist.argmin(1).view(z.shape[:-1])

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors (..., D) of indices (...)."""
        return F.embedding(codes, self.embed)

    def forward(self, z: Tensor) -> VQOutput:
        """Quantise z (..., D); in training mode also update the codebook by EMA."""
        if self.normalize:
            z = F.normalize(z, dim=-1)
        if self.training and not bool(self.initialised):
            self._init_from(z.detach())
        codes = self.nearest(z.detach())
        e = self.lookup(codes)  # (..., D)
        commitment = self.beta * F.mse_loss(z, e.detach())
        onehot = F.one_hot(codes.reshape(-1), self.num_codes).to(z.dtype)  # (M, K)
        counts = onehot.sum(0)  # (K,)
        probs = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        if self.training:
            self.hits += counts.detach()
            self._ema_update(z.detach().reshape(-1, self.dim), onehot, counts)
        quantized = z + (e - z).detach()  # straight-through estimator
        return VQOutput(quantized, codes, commitment, perplexity)

    @torch.no_grad()
    def _init_from(self, z: Tensor) -> None:
        """Start the codes on random encoder outputs (k-means++-free data init; avoids a cold codebook)."""
        flat = z.reshape(-1, self.dim)
        idx = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        self.embed.copy_(flat[idx])
        self.ema_sum.copy_(flat[idx])
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, onehot: Tensor, counts: Tensor) -> None:
        g = self.decay
        self.ema_count.mul_(g).add_(counts, alpha=1 - g)
        self.ema_sum.mul_(g).add_(onehot.t() @ flat, alpha=1 - g)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        embed = self.ema_sum / smoothed[:, None]
        self.embed.copy_(F.normalize(embed, dim=-1) if self.normalize else embed)
        dead = self.ema_count < self.dead_threshold
        if dead.any():
            n_dead = int(dead.sum())
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            fresh = flat[pick] + 1e-3 * torch.randn_like(flat[pick])
            self.embed[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0

    def usage(self) -> float:
        """Fraction of codes used at least once since the last `reset_usage`."""
        return float((self.hits > 0).float().mean())

    def reset_usage(self) -> None:
        self.hits.zero_()
