"""SENSE mini-RAG: retrieve stored tokenized episodes and fuse them into the agent by cross-attention.

Axis legend: B batch, N query tokens, k retrieved episodes, M tokens per episode, D model dim, E key dim.

    x (B, N, D), query key (B, E)
        -> store.retrieve(key, k)                     tokens (B, k, M), labels (B, k), scores (B, k)
        -> memory = token_embed(tokens) + label_embed(labels) + rank_embed   (B, k*M, D)
        -> y = x + CrossAttention(q = x, kv = memory)  (B, N, D)

The store (`agentlab.memory.store.EpisodeStore`) holds content *inside* the module, so
`reset()` empties it; the recurrent state passed in and out is only the query key
and what was retrieved (`RAGState`). Token embeddings may be tied to a tokenizer's
codebook (`tie_embeddings`), so retrieved tokens live in the same space the
tokenizer maps every modality into.

Figures (`memory/mini_rag/...`): size, capacity, occupancy, hit_rate, retrieval_latency_ms, bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.config import check
from agentlab.protocols import MemoryModule
from agentlab.registry import BuildEnv, register
from agentlab.memory.store import EpisodeStore


@dataclass(frozen=True)
class MiniRAGConfig:
    """A bounded store of tokenized episodes read by cross-attention."""

    capacity: int = 10000
    """episodes the store holds at most"""
    key_dim: int = 64
    """dimension of the retrieval keys"""
    max_tokens: int = 49
    """tokens per stored episode (shorter sequences are padded)"""
    num_codes: int = 256
    """vocabulary size of the stored tokens"""
    num_labels: int = 10
    """labels an episode may carry (one more id means 'no label')"""
    dim: int = 64
    """model dimension of the tokens fused into the agent"""
    k: int = 4
    """episodes retrieved per query"""
    heads: int = 4
    """cross-attention heads"""
    eviction: Literal["lru", "fifo"] = "lru"
    """which entry leaves a full store first (see memory/store.py)"""
    hit_threshold: float = 0.5
    """a retrieval is a hit when its best cosine similarity reaches this"""
    index: Literal["exact", "ivf"] = "exact"
    """exact top-k, or a FAISS IVF index once the store holds ann_min_size entries"""
    ann_min_size: int = 20000
    """store size from which the IVF index is used"""
    nprobe: int = 8
    """IVF cells scanned per query"""

    def __post_init__(self) -> None:
        for key in ("capacity", "key_dim", "max_tokens", "num_codes", "num_labels", "dim", "k", "heads"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        check(self.dim % self.heads == 0, "heads", self.heads, f"a divisor of dim={self.dim}")
        check(-1 <= self.hit_threshold <= 1, "hit_threshold", self.hit_threshold, "in [-1, 1]")


class RAGState(NamedTuple):
    query_key: Tensor | None  # (B, E) the key to retrieve with; None = mean of x projected
    retrieved_slots: Tensor | None  # (B, k) what the last forward read


class MiniRAG(MemoryModule):
    """An `EpisodeStore` plus the cross-attention that fuses retrieved tokens into hidden states."""

    name = "mini_rag"

    def __init__(self, cfg: MiniRAGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.store = EpisodeStore(capacity=cfg.capacity, key_dim=cfg.key_dim, max_tokens=cfg.max_tokens,
                                  eviction=cfg.eviction, hit_threshold=cfg.hit_threshold, index=cfg.index,
                                  ann_min_size=cfg.ann_min_size, nprobe=cfg.nprobe)
        self.token_embed = nn.Embedding(cfg.num_codes + 1, cfg.dim)  # last id = padding
        self.label_embed = nn.Embedding(cfg.num_labels + 1, cfg.dim)  # last id = no label
        self.rank_embed = nn.Embedding(cfg.k, cfg.dim)
        self.query_proj = nn.Linear(cfg.dim, cfg.key_dim)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)
        self.pending: tuple[Tensor, Tensor] | None = None  # (keys, tokens) of the last training batch, set by the owner

    def tie_embeddings(self, codebook: Tensor) -> None:
        """Use a tokenizer's codebook (K, D) as the token embedding (copied; kept fixed)."""
        with torch.no_grad():
            self.token_embed.weight[: codebook.shape[0]] = codebook
        self.token_embed.weight.requires_grad_(False)

    # ------------------------------------------------------------------ store access
    def write(self, keys: Tensor, tokens: Tensor, labels: Tensor, meta: Any = None) -> list[int]:
        return self.store.write(keys, tokens, labels, meta)

    def retrieve(self, query: Tensor, k: int | None = None):
        return self.store.retrieve(query, k or self.cfg.k)

    def reset(self) -> None:
        self.store.reset()

    # ------------------------------------------------------------------ the memory-module protocol
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> RAGState:
        return RAGState(None, None)

    def forward(self, x: Tensor, state: RAGState) -> tuple[Tensor, RAGState]:
        """x (B, N, D) -> (B, N, D) with retrieved episodes attended to; an empty store passes x through."""
        if len(self.store) == 0:
            return x, RAGState(state.query_key, None)
        key = state.query_key if state.query_key is not None else self.query_proj(x.mean(1))  # (B, E)
        r = self.store.retrieve(key, self.cfg.k)
        k = r.tokens.shape[1]
        tokens = r.tokens.long().to(x.device)
        tokens = torch.where(tokens < 0, torch.full_like(tokens, self.cfg.num_codes), tokens)  # (B, k, M)
        labels = r.labels.to(x.device)
        labels = torch.where(labels < 0, torch.full_like(labels, self.cfg.num_labels), labels)  # (B, k)
        ranks = torch.arange(k, device=x.device)
        mem = self.token_embed(tokens) + (self.label_embed(labels) + self.rank_embed(ranks))[:, :, None]  # (B, k, M, D)
        pad = rearrange(tokens == self.cfg.num_codes, "b k m -> b (k m)")
        mem = rearrange(mem, "b k m d -> b (k m) d")
        fused, _ = self.attn(self.norm(x), mem, mem, key_padding_mask=pad)  # (B, N, D)
        return x + fused, RAGState(state.query_key, r.slots)

    def extra_loss(self, batch: Any, output: Tensor) -> dict[str, Tensor]:
        """Write the last training batch (keys, tokens left as `pending` by the owning backbone) with its labels."""
        if self.pending is not None and self.pending[0].shape[0] == batch.y.shape[0] and batch.y.dim() == 1:
            keys, tokens = self.pending
            self.store.write(keys, tokens, batch.y)
        self.pending = None
        return {}

    def state_bytes(self) -> int:
        return self.store.nbytes()

    def scalars(self) -> dict[str, float]:
        return self.store.stats()

    # checkpoints: the store travels as tensors beside the parameters
    def get_extra_state(self) -> dict[str, Any]:
        return self.store.state()  # counters too: hit rate and latency continue across a resume

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.store.load_state(state)


@register("memory", "mini_rag", MiniRAGConfig)
def build_mini_rag(cfg: MiniRAGConfig, env: BuildEnv) -> MiniRAG:
    """SENSE mini-RAG: a bounded store of tokenized episodes fused by cross-attention."""
    return MiniRAG(cfg)
