"""A digit classifier that sees only VQ tokens (NCS: classification in the compressed domain).

Axis legend: B batch, N = 49 tokens on a 7x7 grid, D code dim, K codes.

Input: code indices (B, 49) of `ImageVQVAE`; never pixels. Each index is embedded by
a table initialised from the VQ codebook itself (so token i starts at the vector the
decoder reads for it, and neighbouring codes start close), then a small CNN on the
7x7 grid: two 3x3 convolutions (batch norm, ReLU), a stride-2 3x3 convolution to
4x4, dropout, a linear read-out.

Augmentation (`shifted_codes`): the images are moved by up to `max_shift` pixels and
*re-encoded*, so the classifier sees the token grids a slightly moved digit really
produces (quantisation changes with sub-stride position); a token-grid shift would
move by 4 pixels at once.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agentlab.optim import cosine_factor, fast_kernels


class TokenClassifier(nn.Module):
    """Codes (B, 49) -> logits (B, classes)."""

    def __init__(self, num_codes: int = 128, dim: int = 32, width: int = 64, classes: int = 10,
                 codebook: Tensor | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_codes, dim)
        if codebook is not None:
            if codebook.shape != (num_codes, dim):
                raise ValueError(f"codebook {tuple(codebook.shape)} must be (num_codes, dim) = ({num_codes}, {dim})")
            with torch.no_grad():
                self.embed.weight.copy_(codebook / codebook.std().clamp_min(1e-8))  # unit scale for the convolutions

        def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.net = nn.Sequential(
            *block(dim, width), *block(width, width), *block(width, 2 * width, 2),  # (B, 2w, 4, 4)
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 16, classes),
        )

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(rearrange(self.embed(codes), "b (h w) d -> b d h w", h=7))


def shift_images(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Each image (B, C, H, W) moved by its own random (dy, dx) in [-max_shift, max_shift]^2, zero fill."""
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy, dx = (torch.randint(0, 2 * p + 1, (b,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * p).to(x.device)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w).to(x.device)
    return out.gather(3, cols)


@torch.no_grad()
def encode_all(vqvae: nn.Module, x: Tensor, batch: int = 1000, transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Codes (M, 49) of images (M, 1, 28, 28), in chunks, each chunk passed through `transform` first if given."""
    prep = transform or (lambda c: c)
    return torch.cat([vqvae.encode(prep(x[i : i + batch])) for i in range(0, len(x), batch)])


def shifted_codes(vqvae: nn.Module, x: Tensor, max_shift: int, g: torch.Generator, batch: int = 1000) -> Tensor:
    """Codes (M, 49) of the images moved by up to `max_shift` pixels each, then re-encoded."""
    return encode_all(vqvae, x, batch, lambda c: shift_images(c, max_shift, g))


def train_on_codes(model: nn.Module, code_sets: list[Tensor], y: Tensor, *, epochs: int, g: torch.Generator,
                   lr: float = 2e-3, batch_size: int = 128, weight_decay: float = 1e-4) -> float:
    """AdamW with a cosine learning rate over `epochs`; epoch e trains on `code_sets[e % len(code_sets)]`
    (the original codes and re-encoded shifted copies, same labels `y`). Returns the training time in seconds."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fast_kernels(params, fused=True))
    n = y.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s / steps))
    model.train()
    t0 = time.perf_counter()
    for e in range(epochs):
        codes = code_sets[e % len(code_sets)]
        order = torch.randperm(n, generator=g).to(y.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(codes[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0
