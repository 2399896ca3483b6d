"""`sense-rag`: an image classifier that reads its own episodic memory (mini-RAG) through cross-attention.

Axis legend: B batch, N = 49 tokens, D token dim, E key dim, C classes.

    x (B,1,28,28) -> SharedTokenizer (image path) -> token vectors (B, N, D), key (B, E)
                  -> MiniRAG: retrieve k stored episodes by key, cross-attend     (B, N, D)
                  -> mean over tokens -> linear                                   (B, C)

During training the forward pass hands each batch's keys and tokens to the store
(`MiniRAG.remember`), and after the step the agent writes them with their labels
(`MiniRAG.observe`), so later tasks can retrieve episodes of earlier ones. The store is bounded (`capacity`) and evicts by LRU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from einops import reduce
from torch import Tensor, nn

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.memory.mini_rag import MiniRAG, MiniRAGConfig, RAGState
from agentlab.memory.tokenizer import SharedTokenizer


@dataclass(frozen=True)
class RAGClassifierConfig:
    """Image tokens + a mini-RAG store read by cross-attention + a linear read-out."""

    num_codes: int = 128
    """shared codebook size"""
    dim: int = 64
    """token dimension"""
    key_dim: int = 64
    """retrieval key dimension"""
    capacity: int = 2000
    """episodes the store holds"""
    k: int = 4
    """episodes retrieved per example"""
    eviction: Literal["lru", "fifo"] = "lru"
    """store eviction policy"""
    out_features: int = 0
    """classes; 0 = the stream's"""

    def __post_init__(self) -> None:
        for key in ("num_codes", "dim", "key_dim", "capacity", "k"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")


class RAGClassifier(nn.Module):
    def __init__(self, cfg: RAGClassifierConfig, n_classes: int) -> None:
        super().__init__()
        self.tokenizer = SharedTokenizer(num_codes=cfg.num_codes, dim=cfg.dim, key_dim=cfg.key_dim, decoder=False)
        self.rag = MiniRAG(MiniRAGConfig(capacity=cfg.capacity, key_dim=cfg.key_dim, max_tokens=49, num_codes=cfg.num_codes,
                                         num_labels=n_classes, dim=cfg.dim, k=cfg.k, heads=4, eviction=cfg.eviction))
        self.head = nn.Linear(cfg.dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokenizer.tokenize("image", x)
        key = self.tokenizer.pooler(t.quantized, t.mask)  # (B, E)
        fused, _ = self.rag(t.quantized, RAGState(key.detach(), None))  # (B, N, D)
        if self.training:
            self.rag.remember(key, t.codes)  # written with their labels by the agent after the step (`observe`)
        return self.head(reduce(fused, "b n d -> b d", "mean"))  # (B, C); the codebook itself learns by EMA


@register("backbone", "sense-rag", RAGClassifierConfig)
def build_rag_classifier(cfg: RAGClassifierConfig, env: BuildEnv) -> RAGClassifier:
    """Image classifier over SENSE tokens that retrieves stored episodes (mini-RAG) by cross-attention."""
    _, n = env.stream_sizes(784, cfg.out_features, where="backbone")
    return RAGClassifier(cfg, n)
