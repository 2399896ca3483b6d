"""The DNC's settings and the DNC as a memory attached to any backbone (`dnc`).

Attached (`agentlab.attachment`), the DNC reads the features at its point step by step
((B, F) examples are one-step sequences), its controller input sized to them, and its
output (by default as wide as the features) is fused into them; its recurrent state
(memory matrix, link matrix, usage, controller) is threaded by the agent and starts
afresh every sequence by default (`reset`). The sequence backbones built on it (`dnc`,
`lstm-seq`) live with the other backbones (`agentlab.backbones.sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from agentlab.attachment import AttachConfig, AttachedMemory, Reset
from agentlab.config import check
from agentlab.memory.dnc.core import DNC
from agentlab.registry import BuildEnv, register


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
    fused: bool = True
    """one write head: unroll through the fused time loop (backward written out); false = autograd through every step"""

    def __post_init__(self) -> None:
        for k in ("input_size", "output_size"):
            check(getattr(self, k) >= 0, k, getattr(self, k), "an integer >= 0")
        for k in ("memory_size", "word_size", "num_reads", "num_writes", "hidden_size"):
            check(getattr(self, k) >= 1, k, getattr(self, k), "an integer >= 1")
        check(self.clip_value >= 0, "clip_value", self.clip_value, "a number >= 0")


def make_dnc(cfg: DNCConfig, i: int, o: int) -> DNC:
    return DNC(input_size=i, output_size=o, memory_size=cfg.memory_size, word_size=cfg.word_size,
               num_reads=cfg.num_reads, num_writes=cfg.num_writes, hidden_size=cfg.hidden_size,
               controller=cfg.controller, clip_value=cfg.clip_value, fused=cfg.fused)


@dataclass(frozen=True)
class DNCMemoryConfig(DNCConfig, AttachConfig):
    """A DNC attached to a backbone: its input is the features at `at`, its output fused into them."""

    input_size: int = 0
    """input width; 0 = the width of the features at the attachment point"""
    output_size: int = 0
    """width of what the DNC reads out into the features; 0 = the features' width"""
    reset: Reset = "sequence"
    """when the memory starts empty: every sequence (forward call), episode, task or never"""

    def __post_init__(self) -> None:
        DNCConfig.__post_init__(self)
        AttachConfig.__post_init__(self)


class DNCMemory(AttachedMemory):
    """The DNC at an attachment point (see the module docstring)."""

    name = "dnc"

    def __init__(self, cfg: DNCMemoryConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.core: DNC | None = None

    def build(self, width: int) -> int:
        if self.cfg.input_size and self.cfg.input_size != width:
            from agentlab.attachment import AttachmentError

            raise AttachmentError(f"memory 'dnc': input_size={self.cfg.input_size} but the features at {self.at!r} "
                                  f"are {width} wide; set input_size = 0 (the default) to take their width")
        self.core = make_dnc(self.cfg, width, self.cfg.output_size or width)
        return self.core.config["output_size"]

    def initial_state(self, batch_size: int, device: Any = "cpu") -> Any:
        assert self.core is not None
        return self.core.initial_state(batch_size, device)

    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        assert self.core is not None
        return self.core(x, state)  # (B, T, O): one read per step

    def scalars(self) -> dict[str, float]:
        return self.core.scalars() if self.core is not None else {}

    def images(self) -> dict[str, Tensor]:
        return self.core.images() if self.core is not None else {}

    def histograms(self) -> dict[str, Tensor]:
        return self.core.histograms() if self.core is not None else {}


@register("memory", "dnc", DNCMemoryConfig)
def build_dnc_memory(cfg: DNCMemoryConfig, env: BuildEnv) -> DNCMemory:
    """Differentiable Neural Computer attached to a backbone (state threaded by the agent, reset per sequence)."""
    return DNCMemory(cfg)
