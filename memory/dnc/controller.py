"""The DNC's controller: an LSTM (the paper's choice) or a feed-forward layer.

Input at step t: the external input x_t concatenated with the previous step's
read words r_{t-1} (Graves et al. 2016, Methods, "Controller network").

Axis legend: b batch, i controller input width, h hidden width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ControllerState(NamedTuple):
    """h (b, h), c (b, h); the feed-forward controller carries zeros it never reads."""

    h: Tensor
    c: Tensor


class LSTMController(nn.Module):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ControllerState:
        z = torch.zeros(batch, self.hidden_size, device=device)
        return ControllerState(z, z)

    def forward(self, x: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState]:
        """x (b, i) -> output (b, h) and the new state."""
        h, c = self.cell(x, (state.h, state.c))
        return h, ControllerState(h, c)


class FeedForwardController(nn.Module):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layer = nn.Linear(input_size, hidden_size)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ControllerState:
        z = torch.zeros(batch, self.hidden_size, device=device)
        return ControllerState(z, z)

    def forward(self, x: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState]:
        """x (b, i) -> tanh(W x + b) (b, h); the state passes through unchanged."""
        return torch.tanh(self.layer(x)), state


def make_controller(kind: str, input_size: int, hidden_size: int) -> nn.Module:
    if kind == "lstm":
        return LSTMController(input_size, hidden_size)
    if kind == "feedforward":
        return FeedForwardController(input_size, hidden_size)
    raise ValueError(f"controller={kind!r} is not one of 'lstm', 'feedforward'")
