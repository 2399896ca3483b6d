"""Sequence backbones: the DNC as an agent's recurrent core (`dnc`) and the LSTM baseline it is compared with
(`lstm-seq`), as in the DNC paper (Graves et al. 2016).

Both map x (b, t, i) -> logits (b, t, o) and start every batch from a fresh initial state (each
sequence is an episode). Sizes of 0 come from the stream: input width = stream.input_shape[-1],
output width = stream.n_classes.

Axis legend: b batch, t time, i input width, o output width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from agentlab.config import check
from agentlab.memory.dnc.core import DNC
from agentlab.memory.dnc.modules import DNCConfig, make_dnc
from agentlab.registry import BuildEnv, register


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
    i, o = env.stream_sizes(cfg.input_size, cfg.output_size, where="backbone", keys=("input_size", "output_size"), flatten=False)
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
    i, o = env.stream_sizes(cfg.input_size, cfg.output_size, where="backbone", keys=("input_size", "output_size"), flatten=False)
    return LSTMSequenceModel(i, o, cfg.hidden_size, cfg.num_layers)
