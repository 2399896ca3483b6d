"""Registry entries: the DNC as a memory module (`dnc`), as a sequence backbone (`dnc`),
and the LSTM baseline backbone it is compared with (`lstm-seq`).

Sequence backbones map x (b, t, i) -> logits (b, t, o) and start every batch from a
fresh initial state (each sequence is an episode). Sizes of 0 come from the
stream: input width = stream.input_shape[-1], output width = stream.n_classes.

Axis legend: b batch, t time, i input width, o output width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from agentlab.config import ConfigError, check
from agentlab.registry import BuildEnv, register
from memory.dnc.core import DNC


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


def _dims(env: BuildEnv, i: int, o: int, where: str) -> tuple[int, int]:
    stream = env.stream
    if not i:
        shape = getattr(stream, "input_shape", None)
        if not shape:
            raise ConfigError(f"{where}.input_size=0 but the stream does not say its input shape; set {where}.input_size")
        i = int(shape[-1])
    if not o:
        o = int(getattr(stream, "n_classes", 0) or 0)
        if not o:
            raise ConfigError(f"{where}.output_size=0 but the stream does not say its output width; set {where}.output_size")
    return i, o


def make_dnc(cfg: DNCConfig, i: int, o: int) -> DNC:
    return DNC(input_size=i, output_size=o, memory_size=cfg.memory_size, word_size=cfg.word_size,
               num_reads=cfg.num_reads, num_writes=cfg.num_writes, hidden_size=cfg.hidden_size,
               controller=cfg.controller, clip_value=cfg.clip_value)


@register("memory", "dnc", DNCConfig)
def build_dnc_memory(cfg: DNCConfig, env: BuildEnv) -> DNC:
    """Differentiable Neural Computer as a memory module (explicit state in and out)."""
    i, o = _dims(env, cfg.input_size, cfg.output_size, "memory")
    return make_dnc(cfg, i, o)


class DNCSequenceModel(nn.Module):
    """A DNC as an agent's recurrent core: x (b, t, i) -> logits (b, t, o), fresh state per batch."""

    def __init__(self, core: DNC) -> None:
        super().__init__()
        self.core = core
        self.config = dict(core.config)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.core(x, self.core.initial_state(x.shape[0], x.device))
        return y


@register("backbone", "dnc", DNCConfig)
def build_dnc_backbone(cfg: DNCConfig, env: BuildEnv) -> DNCSequenceModel:
    """Differentiable Neural Computer as a sequence backbone (b, t, i) -> (b, t, o)."""
    i, o = _dims(env, cfg.input_size, cfg.output_size, "backbone")
    return DNCSequenceModel(make_dnc(cfg, i, o))


@dataclass(frozen=True)
class LSTMSeqConfig:
    """A stacked LSTM with a linear read-out at every step (the DNC paper's baseline)."""

    input_size: int = 0
    """input width; 0 = from the stream"""
    output_size: int = 0
    """output width; 0 = the stream's n_classes"""
    hidden_size: int = 256
    """LSTM width"""
    num_layers: int = 1
    """stacked LSTM layers"""

    def __post_init__(self) -> None:
        check(self.input_size >= 0, "input_size", self.input_size, "an integer >= 0")
        check(self.output_size >= 0, "output_size", self.output_size, "an integer >= 0")
        check(self.hidden_size >= 1, "hidden_size", self.hidden_size, "an integer >= 1")
        check(self.num_layers >= 1, "num_layers", self.num_layers, "an integer >= 1")


class LSTMSequenceModel(nn.Module):
    """x (b, t, i) -> logits (b, t, o) through nn.LSTM (batch_first) and a linear layer."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 256, num_layers: int = 1) -> None:
        super().__init__()
        self.config = dict(input_size=input_size, output_size=output_size, hidden_size=hidden_size, num_layers=num_layers)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x)  # (b, t, hidden)
        return self.out(h)


@register("backbone", "lstm-seq", LSTMSeqConfig)
def build_lstm_seq(cfg: LSTMSeqConfig, env: BuildEnv) -> LSTMSequenceModel:
    """LSTM sequence model (b, t, i) -> (b, t, o), the DNC's baseline."""
    i, o = _dims(env, cfg.input_size, cfg.output_size, "backbone")
    return LSTMSequenceModel(i, o, cfg.hidden_size, cfg.num_layers)
