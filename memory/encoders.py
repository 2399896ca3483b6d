"""Modality encoders in front of the shared codebook, and the image decoder of the VQ-VAE.

Axis legend: B batch, C channels, H W image grid, F frequency bins, T time frames,
L characters, N vectors (tokens) per example, D code dim.

Every encoder maps its input to (B, N, D) vectors that the shared `VectorQuantizer`
turns into tokens of one vocabulary:

* images (B, 1, 28, 28) -> a 7x7 grid of patch vectors, N = 49 (each token sees a 4x4 patch
  and its neighbourhood, as in the NCS / VQ-VAE convolutional encoders);
* audio log-spectrograms (B, 64, T) -> frame vectors every 4 frames, N = T / 4;
* text characters (B, L) -> one vector per character, N = L.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

# Printable ASCII: index 0 is padding, characters ' '..'~' are 1..95.
TEXT_VOCAB = 96


def encode_text(words: list[str], length: int = 16) -> Tensor:
    """Character ids (B, length) of `words`, 0-padded (printable ASCII only)."""
    import torch

    out = torch.zeros(len(words), length, dtype=torch.long)
    for i, w in enumerate(words):
        ids = [min(max(ord(c) - 31, 1), TEXT_VOCAB - 1) for c in w[:length]]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


class ImageEncoder(nn.Module):
    """(B, 1, 28, 28) -> (B, 49, D): two stride-2 convolutions, then a 3x3 mixing layer."""

    def __init__(self, *, dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width // 2, 4, 2, 1), nn.ReLU(),  # (B, w/2, 14, 14)
            nn.Conv2d(width // 2, width, 4, 2, 1), nn.ReLU(),  # (B, w, 7, 7)
            nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(width, dim, 1),  # (B, D, 7, 7)
        )

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.net(x), "b d h w -> b (h w) d")  # (B, 49, D)


class ImageDecoder(nn.Module):
    """(B, 49, D) quantised vectors -> (B, 1, 28, 28) pixels in [0, 1]."""

    def __init__(self, *, dim: int = 64, width: int = 64, grid: int = 7) -> None:
        super().__init__()
        self.grid = grid
        self.net = nn.Sequential(
            nn.Conv2d(dim, width, 3, 1, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(),  # (B, w/2, 14, 14)
            nn.ConvTranspose2d(width // 2, 1, 4, 2, 1),  # (B, 1, 28, 28)
        )

    def forward(self, q: Tensor) -> Tensor:
        q = rearrange(q, "b (h w) d -> b d h w", h=self.grid)
        return self.net(q).sigmoid()


class AudioEncoder(nn.Module):
    """(B, F, T) log-spectrogram -> (B, T/4, D): 1-D convolutions over time, two of stride 2."""

    def __init__(self, *, dim: int = 64, n_freq: int = 64, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_freq, width, 5, 1, 2), nn.ReLU(),
            nn.Conv1d(width, width, 4, 2, 1), nn.ReLU(),  # (B, w, T/2)
            nn.Conv1d(width, width, 4, 2, 1), nn.ReLU(),  # (B, w, T/4)
            nn.Conv1d(width, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.net(x), "b d t -> b t d")  # (B, T/4, D)


class TextEncoder(nn.Module):
    """(B, L) character ids -> (B, L, D): embeddings mixed by two convolutions over characters."""

    def __init__(self, *, dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(TEXT_VOCAB, width, padding_idx=0)
        self.net = nn.Sequential(
            nn.Conv1d(width, width, 3, 1, 1), nn.ReLU(),
            nn.Conv1d(width, width, 3, 1, 1), nn.ReLU(),
            nn.Conv1d(width, dim, 1),
        )

    def forward(self, chars: Tensor) -> Tensor:
        h = rearrange(self.embed(chars), "b l c -> b c l")
        return rearrange(self.net(h), "b d l -> b l d")  # (B, L, D)
