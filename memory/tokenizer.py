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
(Khosla et al. 2020, SupCon, temperature 0.1) and a cross-entropy to one shared
learnable anchor per digit (proxy loss), on the keys of the tokens and of the
continuous encoder outputs, plus the VQ commitment loss; an optional image
decoder adds the VQ-VAE reconstruction term.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.memory.encoders import AudioEncoder, ImageDecoder, ImageEncoder, TextEncoder
from agentlab.memory.vq import VectorQuantizer

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
        self, *, num_codes: int = 256, dim: int = 64, key_dim: int = 64, n_freq: int = 64, decoder: bool = True,
        n_concepts: int = 10,
    ) -> None:
        super().__init__()
        self.config = {"num_codes": num_codes, "dim": dim, "key_dim": key_dim, "n_freq": n_freq, "decoder": decoder,
                       "n_concepts": n_concepts}
        self.encoders = nn.ModuleDict({
            "image": ImageEncoder(dim=dim), "audio": AudioEncoder(dim=dim, n_freq=n_freq), "text": TextEncoder(dim=dim),
        })
        # Per-modality batch normalisation of encoder outputs (no affine): each modality's
        # vectors are centred and scaled before the shared codebook, so no modality sits in a
        # corner of the space (at initialisation all tokens of one modality point one way).
        self.norms = nn.ModuleDict({m: nn.BatchNorm1d(dim, affine=False) for m in MODALITIES})
        self.vq = VectorQuantizer(num_codes=num_codes, dim=dim, normalize=True)
        self.pooler = TokenPooler(dim=dim, key_dim=key_dim)
        self.decoder = ImageDecoder(dim=dim) if decoder else None
        # one learnable anchor per concept (digit), shared by every modality
        self.anchors = nn.Parameter(F.normalize(torch.randn(n_concepts, key_dim), dim=-1))

    def _encode(self, modality: str, x: Tensor) -> Tensor:
        z = self.encoders[modality](x)  # (B, N, D)
        return self.norms[modality](z.reshape(-1, z.shape[-1])).view_as(z)

    def tokenize(self, modality: str, x: Tensor) -> Tokens:
        """Tokens of a batch of one modality (images (B,1,28,28), spectrograms (B,F,T), characters (B,L))."""
        if modality not in self.encoders:
            raise ValueError(f"modality={modality!r} is not one of {MODALITIES}")
        z = self._encode(modality, x)  # (B, N, D)
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
        """SupCon across all modalities of `batches` {modality: (x, labels)}, commitment, image reconstruction.

        All modalities are quantised in one call, so the codebook's EMA statistics and
        dead-code restarts see every modality at each step.
        """
        zs = {m: self._encode(m, x) for m, (x, _) in batches.items()}  # each (B_m, N_m, D)
        flat = torch.cat([z.reshape(-1, z.shape[-1]) for z in zs.values()])  # (sum B_m N_m, D)
        out = self.vq(flat)
        keys, soft_keys, labels, terms, start = [], [], [], {}, 0
        for m, (x, y) in batches.items():
            n = zs[m].shape[0] * zs[m].shape[1]
            q = out.quantized[start : start + n].view_as(zs[m])
            start += n
            mask = (x != 0) if m == "text" else torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
            keys.append(self.pooler(q, mask))
            soft_keys.append(self.pooler(F.normalize(zs[m], dim=-1), mask))
            labels.append(y)
            if m == "image" and self.decoder is not None and recon_weight > 0:
                terms["recon"] = recon_weight * F.mse_loss(self.decoder(q), x)
        labels_all = torch.cat(labels)
        # The key of the tokens is what retrieval uses; the key of the continuous encoder
        # outputs gives the encoders a gradient that a hard bottleneck alone starves
        # (without it every modality collapsed onto a few codes and identical keys).
        anchors = F.normalize(self.anchors, dim=-1)
        hard, soft = torch.cat(keys), torch.cat(soft_keys)
        terms["contrastive"] = supcon_loss(hard, labels_all)
        terms["contrastive_soft"] = supcon_loss(soft, labels_all)
        # Cross-modal SupCon alone first pulls each modality's cloud onto the others' (a
        # collapsed state it escapes slowly); cross-entropy against shared anchors gives every
        # modality a direct target (a proxy loss, Movshovitz-Attias et al. 2017, "No fuss DML").
        terms["anchor"] = F.cross_entropy(hard @ anchors.t() / 0.1, labels_all) + F.cross_entropy(soft @ anchors.t() / 0.1, labels_all)
        terms["commitment"] = out.commitment
        return terms
