"""SENSE shared tokenizer: images, audio and text into tokens of one vocabulary and one embedding space.

Axis legend: B batch, N tokens per example, D code dim, E key dim, M modality.

    image (B,1,28,28) --ImageEncoder--\
    audio (B,64,T)    --AudioEncoder---+--> z (B,N,D) --shared VQ--> codes (B,N) in [0,K)
    text  (B,L)       --TextEncoder---/                                  |
                                       shared codebook vectors + modality-free pooler
                                                                         v
                                                               key (B,E), unit norm

Everything after the codes is shared: the token embedding *is* the codebook (one
embedding space), and the pooler (one transformer layer plus masked mean) does
not know the modality. So a stored episode needs only its token sequence; its
retrieval key can always be recomputed from the tokens. Training pulls keys of the
same digit together across modalities with a supervised contrastive loss
(Khosla et al. 2020, SupCon, temperature 0.1) plus the VQ commitment loss; an
optional image decoder adds the VQ-VAE reconstruction term.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.encoders import AudioEncoder, ImageDecoder, ImageEncoder, TextEncoder
from memory.vq import VectorQuantizer

MODALITIES = ("image", "audio", "text")


class Tokens(NamedTuple):
    codes: Tensor  # (B, N) long
    mask: Tensor  # (B, N) bool, True where the token is real (text padding is False)
    quantized: Tensor  # (B, N, D) straight-through vectors
    commitment: Tensor  # ()


def supcon_loss(keys: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2) over unit keys (B, E) with labels (B,)."""
    sim = keys @ keys.t() / temperature  # (B, B)
    self_mask = torch.eye(len(keys), dtype=torch.bool, device=keys.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1).clamp_min(1)
    return -(log_prob.masked_fill(~pos, 0).sum(1) / n_pos).mean()


class TokenPooler(nn.Module):
    """Modality-free: (B, N, D) token vectors + mask -> (B, E) unit key."""

    def __init__(self, *, dim: int, key_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, key_dim))

    def forward(self, q: Tensor, mask: Tensor) -> Tensor:
        h = self.layer(q, src_key_padding_mask=~mask)  # (B, N, D)
        w = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1)  # (B, D) masked mean
        return F.normalize(self.out(pooled), dim=-1)  # (B, E)


class SharedTokenizer(nn.Module):
    """Modality encoders, one shared codebook of `num_codes` tokens, one pooler to retrieval keys."""

    def __init__(
        self, *, num_codes: int = 256, dim: int = 64, key_dim: int = 64, n_freq: int = 64, decoder: bool = True
    ) -> None:
        super().__init__()
        self.config = {"num_codes": num_codes, "dim": dim, "key_dim": key_dim, "n_freq": n_freq, "decoder": decoder}
        self.encoders = nn.ModuleDict({
            "image": ImageEncoder(dim=dim), "audio": AudioEncoder(dim=dim, n_freq=n_freq), "text": TextEncoder(dim=dim),
        })
        self.vq = VectorQuantizer(num_codes=num_codes, dim=dim)
        self.pooler = TokenPooler(dim=dim, key_dim=key_dim)
        self.decoder = ImageDecoder(dim=dim) if decoder else None

    def tokenize(self, modality: str, x: Tensor) -> Tokens:
        """Tokens of a batch of one modality (images (B,1,28,28), spectrograms (B,F,T), characters (B,L))."""
        if modality not in self.encoders:
            raise ValueError(f"modality={modality!r} is not one of {MODALITIES}")
        z = self.encoders[modality](x)  # (B, N, D)
        out = self.vq(z)
        mask = (x != 0) if modality == "text" else torch.ones(out.codes.shape, dtype=torch.bool, device=x.device)
        return Tokens(out.codes, mask, out.quantized, out.commitment)

    def embed(self, codes: Tensor) -> Tensor:
        """Shared token embeddings (B, N, D) of codes (B, N): the codebook vectors."""
        return self.vq.lookup(codes)

    def key(self, codes: Tensor, mask: Tensor | None = None) -> Tensor:
        """Retrieval key (B, E) of token sequences alone (what a store keeps)."""
        mask = torch.ones_like(codes, dtype=torch.bool) if mask is None else mask
        return self.pooler(self.embed(codes), mask)

    def keys_of(self, modality: str, x: Tensor) -> tuple[Tensor, Tokens]:
        """Keys (B, E) with gradients through the straight-through codes, and the tokens."""
        t = self.tokenize(modality, x)
        return self.pooler(t.quantized, t.mask), t

    def loss(self, batches: dict[str, tuple[Tensor, Tensor]], *, recon_weight: float = 1.0) -> dict[str, Tensor]:
        """SupCon across all modalities of `batches` {modality: (x, labels)}, commitment, image reconstruction."""
        keys, labels, terms = [], [], {}
        commit = 0.0
        for m, (x, y) in batches.items():
            k, t = self.keys_of(m, x)
            keys.append(k)
            labels.append(y)
            commit = commit + t.commitment
            if m == "image" and self.decoder is not None and recon_weight > 0:
                terms["recon"] = recon_weight * F.mse_loss(self.decoder(t.quantized), x)
        terms["contrastive"] = supcon_loss(torch.cat(keys), torch.cat(labels))
        terms["commitment"] = commit
        return terms
