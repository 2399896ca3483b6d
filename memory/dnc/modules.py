"""The DNC's settings and its registry entry as a memory module (`dnc`).

Sizes of 0 come from the stream: input width = stream.input_shape[-1], output
width = stream.n_classes. The sequence backbones built on it (`dnc`, `lstm-seq`)
live with the other backbones (`agentlab.backbones.sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.memory.dnc.core import DNC


@dataclass(frozen=True)
class DNCConfig:
    """A Differentiable Neural Computer (Graves et al. 2016)."""

    input_size: int = 0
    """input width; 0 = from the stream (as a backbone)"""
    output_size: int = 0
    """output width; 0 = the stream's n_classes (as a backbone)"""
    memory_size: int = 64
    """memory slots N"""
    word_size: int = 32
    """slot width W"""
    num_reads: int = 4
    """read heads R"""
    num_writes: int = 1
    """write heads"""
    hidden_size: int = 128
    """controller width"""
    controller: Literal["lstm", "feedforward"] = "lstm"
    """controller network"""
    clip_value: float = 20.0
    """clip controller and output values to +-this (deepmind/dnc); 0 = off"""

    def __post_init__(self) -> None:
        for k in ("input_size", "output_size"):
            check(getattr(self, k) >= 0, k, getattr(self, k), "an integer >= 0")
        for k in ("memory_size", "word_size", "num_reads", "num_writes", "hidden_size"):
            check(getattr(self, k) >= 1, k, getattr(self, k), "an integer >= 1")
        check(self.clip_value >= 0, "clip_value", self.clip_value, "a number >= 0")


def make_dnc(cfg: DNCConfig, i: int, o: int) -> DNC:
    return DNC(input_size=i, output_size=o, memory_size=cfg.memory_size, word_size=cfg.word_size,
               num_reads=cfg.num_reads, num_writes=cfg.num_writes, hidden_size=cfg.hidden_size,
               controller=cfg.controller, clip_value=cfg.clip_value)


@register("memory", "dnc", DNCConfig)
def build_dnc_memory(cfg: DNCConfig, env: BuildEnv) -> DNC:
    """Differentiable Neural Computer as a memory module (explicit state in and out)."""
    i, o = env.stream_sizes(cfg.input_size, cfg.output_size, where="memory", keys=("input_size", "output_size"), flatten=False)
    return make_dnc(cfg, i, o)
