"""An image VQ-VAE (NCS neural compression): 28x28 images <-> a 7x7 grid of code indices.

Axis legend: B batch, N = 49 tokens, D code dim, K codes.

With K = 128 codes (7 bits) and 49 tokens, an image is 343 bits against
784 x 8 = 6,272 bits raw: a compression ratio of 18.3:1, the NCS figure. Codes are
stored bit-packed (`pack_codes`), so a replay buffer holds 43 bytes per image
instead of 784.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.optim import fast_kernels
from agentlab.memory.encoders import ImageDecoder, ImageEncoder
from agentlab.memory.vq import VectorQuantizer


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Bit-pack code indices (B, N) < 2**bits into bytes (B, ceil(N*bits/8)) uint8."""
    b, n = codes.shape
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device)
    bitmat = ((codes.long().unsqueeze(-1) >> shifts) & 1).reshape(b, n * bits)  # (B, N*bits) MSB first
    pad = (-bitmat.shape[1]) % 8
    bitmat = F.pad(bitmat, (0, pad)).reshape(b, -1, 8)
    weights = 2 ** torch.arange(7, -1, -1, device=codes.device)
    return (bitmat * weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: Tensor, n: int, bits: int) -> Tensor:
    """Inverse of `pack_codes`: (B, bytes) uint8 -> (B, n) long."""
    shifts = torch.arange(7, -1, -1, device=packed.device)
    bitmat = ((packed.long().unsqueeze(-1) >> shifts) & 1).reshape(packed.shape[0], -1)[:, : n * bits]
    weights = 2 ** torch.arange(bits - 1, -1, -1, device=packed.device)
    return (bitmat.reshape(packed.shape[0], n, bits) * weights).sum(-1)


def psnr_db(x: Tensor, y: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (mean over the batch's pixels)."""
    mse = F.mse_loss(x, y).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class ImageVQVAE(nn.Module):
    """Encoder -> VQ (K codes) -> decoder for (B, 1, 28, 28) images in [0, 1]."""

    def __init__(self, *, num_codes: int = 128, dim: int = 32, width: int = 64) -> None:
        super().__init__()
        self.config = {"num_codes": num_codes, "dim": dim, "width": width}
        self.encoder = ImageEncoder(dim=dim, width=width)
        self.vq = VectorQuantizer(num_codes=num_codes, dim=dim)
        self.decoder = ImageDecoder(dim=dim, width=width)

    @property
    def tokens_per_image(self) -> int:
        return 49

    def bytes_per_image(self) -> int:
        return math.ceil(self.tokens_per_image * self.vq.bits_per_code / 8)

    def compression_ratio(self) -> float:
        """Bits of a raw 8-bit 28x28 image over bits of its token indices."""
        return 28 * 28 * 8 / (self.tokens_per_image * self.vq.bits_per_code)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.vq(self.encoder(x))
        recon = self.decoder(out.quantized)
        return recon, {"recon": F.mse_loss(recon, x), "commitment": out.commitment, "perplexity": out.perplexity.detach()}

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (B, 49) of images (B, 1, 28, 28)."""
        return self.vq.nearest(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) of codes (B, 49)."""
        return self.decoder(self.vq.lookup(codes))

    def fit(self, x: Tensor, *, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3, generator: torch.Generator | None = None,
            max_steps: int = 0) -> dict[str, float]:
        """Train on images x (N, 1, 28, 28) with Adam; returns the last losses and codebook usage."""
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr, **fast_kernels(params, fused=True))
        self.train()
        self.vq.reset_usage()
        steps, last = 0, {}
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for i in range(0, x.shape[0], batch_size):
                xb = x[order[i : i + batch_size]]
                _, terms = self(xb)
                loss = terms["recon"] + terms["commitment"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                last = {k: float(v.detach()) for k, v in terms.items()}
                if max_steps and steps >= max_steps:
                    break
            if max_steps and steps >= max_steps:
                break
        self.eval()
        last["usage"] = self.vq.usage()
        last["steps"] = steps
        return last
