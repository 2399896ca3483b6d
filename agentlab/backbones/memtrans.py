"""`memtrans-conv4`: the few-shot backbone of the memory transformer (a Conv-4 image embedding, the
memory transformer's key-value memory, a linear read-out over the episode's N labels).

Axis legend: B episodes, T steps, E image embedding dim, N ways, D model dim, F = 2E + N row width.

The image embedding is the Conv-4 of matching / prototypical networks (Vinyals et al.
2016; Snell et al. 2017): four blocks of 3x3 conv (64), batch norm, ReLU, 2x2 max-pool.
How episodes become rows, and the meta-training over them, is the `memtrans` learner
(`agentlab.learners.memtrans`). Memory starts empty for every episode (`reset = "episode"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from agentlab.config import check
from agentlab.memory.memory_transformer import MemoryTransformer, MemoryTransformerConfig
from agentlab.registry import BuildEnv, register


def conv4(channels: int = 64) -> nn.Sequential:
    """(B, 1, 28, 28) -> (B, 64): 4 x [conv3x3, BN, ReLU, maxpool2], then global average."""
    blocks, c_in = [], 1
    for _ in range(4):
        blocks += [nn.Conv2d(c_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        c_in = channels
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@dataclass(frozen=True)
class MemTransNetConfig:
    """Conv-4 image embedding, memory transformer, linear read-out over the episode's N labels."""

    ways: int = 5
    """labels per episode (the read-out size)"""
    channels: int = 64
    """Conv-4 width = image embedding size"""
    memory: MemoryTransformerConfig = field(default_factory=lambda: MemoryTransformerConfig(in_features=1))
    """the memory transformer (in_features is set from the embedding and ways)"""

    def __post_init__(self) -> None:
        check(self.ways >= 2, "ways", self.ways, "an integer >= 2")
        check(self.channels >= 1, "channels", self.channels, "an integer >= 1")


class MemTransNet(nn.Module):
    def __init__(self, cfg: MemTransNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e, n = cfg.channels, cfg.ways
        mem_cfg = MemoryTransformerConfig(**{**cfg.memory.__dict__, "in_features": 2 * e + n, "address_features": e})
        self.embed = conv4(e)
        self.memory = MemoryTransformer(mem_cfg)
        self.head = nn.Linear(mem_cfg.dim, n)

    def forward(self, x: Tensor) -> Tensor:
        """Image embeddings (B, E) (a classification call has no episode context)."""
        return self.embed(x)

    def run(self, rows: Tensor, write_mask: Tensor | None = None, attend: Tensor | None = None) -> Tensor:
        """rows (B, T, F) -> logits (B, T, N); memory starts empty unless the memory is configured to carry it.

        Reads are addressed by the current image's embedding, writes by the embedding of the
        image whose label the row carries (MANN's content-based addressing).
        """
        e = self.cfg.channels
        y, state = self.memory(rows, self.memory.start_state(rows.shape[0], rows.device), write_mask=write_mask,
                               attend=attend, read_address=rows[..., :e], write_address=rows[..., e : 2 * e])
        self.memory.keep(state)
        return self.head(y)


@register("backbone", "memtrans-conv4", MemTransNetConfig)
def build_memtrans_net(cfg: MemTransNetConfig, env: BuildEnv) -> MemTransNet:
    """Conv-4 embedding + memory transformer (500-slot LRU key-value memory) for few-shot episodes."""
    return MemTransNet(cfg)
