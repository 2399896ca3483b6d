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
tokenizer maps every modality into. A backbone that holds a `MiniRAG` (the `sense-rag`
classifier) hands it the keys and tokens of its last training batch (`remember`); the
agent writes them with their labels through the `observe` hook after the training step.

Registered as the memory `mini_rag`, the store attaches to any backbone (`AttachedMiniRAG`):
features at its point are keyed by a fixed random projection, written after every training
step with their labels, and each example retrieves its k most similar stored episodes,
(stored key, one-hot label), fused by cross-attention.

Figures (`memory/mini_rag/...`): size, capacity, occupancy, hit_rate, retrieval_latency_ms, bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.attachment import AttachConfig, AttachedMemory, Fuse
from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.protocols import MemoryModule
from agentlab.registry import BuildEnv, register
from agentlab.memory.store import EpisodeStore


@dataclass(frozen=True)
class MiniRAGConfig(AttachConfig):
    """A bounded store of tokenized episodes read by cross-attention."""

    fuse: Fuse = "cross_attention"
    """how retrieved episodes enter the features (attached): cross_attention over the k episodes, residual, concat"""

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
        super().__post_init__()
        for key in ("capacity", "key_dim", "max_tokens", "num_codes", "num_labels", "dim", "k", "heads"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        check(self.dim % self.heads == 0, "heads", self.heads, f"a divisor of dim={self.dim}")
        check(-1 <= self.hit_threshold <= 1, "hit_threshold", self.hit_threshold, "in [-1, 1]")


class RAGState(NamedTuple):
    query_key: Tensor | None  # (B, E) the key to retrieve with; None = mean of x projected
    retrieved_slots: Tensor | None  # (B, k) what the last forward read


class StoreHolder:
    """What a memory holding an `EpisodeStore` as `self.store` reports and checkpoints: its bytes, its figures
    (`memory/<name>/...`: size, capacity, occupancy, hit_rate, retrieval_latency_ms, bytes) and its content, which
    travels as tensors beside the parameters (counters too, so hit rate and latency continue across a resume;
    a loaded state is checked as a store file is)."""

    store: EpisodeStore

    def reset(self) -> None:
        self.store.reset()

    def state_bytes(self) -> int:
        return self.store.nbytes()

    def scalars(self) -> dict[str, float]:
        return self.store.stats()

    def get_extra_state(self) -> dict[str, Any]:
        return self.store.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.store.load_state(state)

    def forget_task(self, task_id: int) -> int:
        if len(self.store) == 0:
            return 0
        raise CannotForget(f"memory {getattr(self, 'name', 'mini_rag')!r}: its entries (key, tokens, label) carry no "
                           "task id, and its fusion layers trained with every task reading them")


class MiniRAG(StoreHolder, MemoryModule):
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

    def remember(self, keys: Tensor, tokens: Tensor) -> None:
        """The owning backbone's keys (B, E) and tokens (B, N) of its last training batch, to be written by `observe`."""
        self.pending = (keys.detach(), tokens.detach())

    def observe(self, features: Any, labels: Tensor, task_ids: Tensor) -> None:
        """After a training step: write the remembered batch with its labels (the rows the step newly saw: a batch
        with replayed rows beyond them is written in its first rows only)."""
        if self.pending is not None and labels.dim() == 1 and self.pending[0].shape[0] >= labels.shape[0]:
            keys, tokens = self.pending
            n = labels.shape[0]
            self.store.write(keys[:n], tokens[:n], labels)
        self.pending = None



class AttachedMiniRAG(StoreHolder, AttachedMemory):
    """The mini-RAG store at an attachment point of any backbone (see the module docstring).

    key(h) = normalise(h R), R (F, key_dim) fixed by `seed`; an episode is (key, label); a read is the k
    nearest episodes as [stored key, one-hot label] (B, T, k, key_dim + num_labels + 1).
    """

    name = "mini_rag"
    writes = True

    def __init__(self, cfg: MiniRAGConfig, seed: int = 0) -> None:
        super().__init__(cfg, heads=cfg.heads)
        self.cfg, self.seed = cfg, seed
        self.store = EpisodeStore(capacity=cfg.capacity, key_dim=cfg.key_dim, max_tokens=1, eviction=cfg.eviction,
                                  hit_threshold=cfg.hit_threshold, index=cfg.index, ann_min_size=cfg.ann_min_size,
                                  nprobe=cfg.nprobe)

    def build(self, width: int) -> int:
        g = torch.Generator().manual_seed(self.seed)
        proj = torch.randn(width, self.cfg.key_dim, generator=g) / self.cfg.key_dim**0.5
        self.register_buffer("projection", proj, persistent=False)  # rebuilt from the seed, never saved
        return self.cfg.key_dim + self.cfg.num_labels + 1

    def key(self, x: Tensor) -> Tensor:
        return x.float() @ self.projection.to(x.device)

    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor | None, Any]:
        if len(self.store) == 0:
            return None, state
        b, t, f = x.shape
        r = self.store.retrieve(self.key(x.reshape(b * t, f)), self.cfg.k)
        keys = self.store.keys[r.slots]  # (B*T, k, E), unit
        labels = r.labels.clamp(min=-1)
        onehot = torch.nn.functional.one_hot(torch.where(labels < 0, self.cfg.num_labels, labels), self.cfg.num_labels + 1)
        items = torch.cat([keys, onehot.float()], dim=-1).to(x.device, x.dtype)
        return rearrange(items, "(b t) k r -> b t k r", b=b, t=t), state

    @torch.no_grad()
    def observe(self, features: Tensor, labels: Tensor, task_ids: Tensor) -> None:
        x = features.reshape(features.shape[0], -1) if features.dim() == 2 else features.reshape(-1, features.shape[-1])
        if x.shape[0] != labels.shape[0] or labels.dim() != 1:
            labels = torch.full((x.shape[0],), -1, dtype=torch.long)  # step features of sequences: no label each
        labels = labels.clamp(max=self.cfg.num_labels - 1)
        self.store.write(self.key(x), torch.full((x.shape[0], 1), -1, dtype=torch.int32), labels.cpu())


@register("memory", "mini_rag", MiniRAGConfig)
def build_mini_rag(cfg: MiniRAGConfig, env: BuildEnv) -> AttachedMiniRAG:
    """SENSE mini-RAG store attached to a backbone: labelled episodes retrieved and fused by cross-attention."""
    return AttachedMiniRAG(cfg, seed=env.seed)
