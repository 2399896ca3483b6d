"""The DNC's controller: an LSTM (the paper's choice) or a feed-forward layer.

Input at step t: the external input x_t concatenated with the previous step's
read words r_{t-1} (Graves et al. 2016, Methods, "Controller network"). The
weights on x_t are applied to the whole sequence at once (`project`, one matrix
product before the time loop); each step adds only the weights on [r_{t-1}; h_{t-1}]
(`step`), the same function as a cell fed [x_t; r_{t-1}] with fewer operations per step.

LSTM gates are laid out [input, forget, output | candidate] so one sigmoid covers
the first three; the forget-gate bias starts at 1 (Gers et al. 2000; the forget_bias
of the Sonnet LSTM deepmind/dnc uses), which keeps early gradients flowing through time.

Axis legend: b batch, t time, i external input width, r read words width (heads x word),
h hidden width, g gate width (4h for the LSTM, h for feed-forward).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class ControllerState(NamedTuple):
    """h (b, h), c (b, h); the feed-forward controller carries zeros it never reads."""

    h: Tensor
    c: Tensor


def _uniform_(w: Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(w, -bound, bound)


class LSTMController(nn.Module):
    def __init__(self, input_size: int, read_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input = nn.Linear(input_size, 4 * hidden_size)  # W_x [x_t] + bias
        self.recurrent = nn.Linear(read_size + hidden_size, 4 * hidden_size, bias=False)  # W_r [r_{t-1}; h_{t-1}]
        fan_in = input_size + read_size + hidden_size  # as one cell over the concatenated input
        for w in (self.input.weight, self.recurrent.weight, self.input.bias):
            _uniform_(w, fan_in)
        with torch.no_grad():
            self.input.bias[hidden_size : 2 * hidden_size] += 1.0  # forget-gate bias 1

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ControllerState:
        # two tensors, not one twice: a compiled step guards on aliasing, and later states never alias
        return ControllerState(*(torch.zeros(batch, self.hidden_size, device=device) for _ in range(2)))

    def project(self, x: Tensor) -> Tensor:
        """W_x x + b for every step at once. x (..., i) -> (..., 4h)."""
        return self.input(x)

    def step(self, xp: Tensor, reads: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState]:
        """xp (b, 4h) from `project`, reads (b, r) -> output h (b, h) and the new state."""
        hs = self.hidden_size
        gates = torch.addmm(xp, torch.cat([reads, state.h], dim=-1), self.recurrent.weight.t())  # (b, 4h)
        ifo = torch.sigmoid(gates[:, : 3 * hs])
        cand = torch.tanh(gates[:, 3 * hs :])
        c = torch.addcmul(ifo[:, hs : 2 * hs] * state.c, ifo[:, :hs], cand)  # f c + i g
        h = ifo[:, 2 * hs :] * torch.tanh(c)
        return h, ControllerState(h, c)


class FeedForwardController(nn.Module):
    def __init__(self, input_size: int, read_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(read_size, hidden_size, bias=False)  # weights on r_{t-1} only
        for w in (self.input.weight, self.recurrent.weight, self.input.bias):
            _uniform_(w, input_size + read_size)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ControllerState:
        # two tensors, not one twice: a compiled step guards on aliasing, and later states never alias
        return ControllerState(*(torch.zeros(batch, self.hidden_size, device=device) for _ in range(2)))

    def project(self, x: Tensor) -> Tensor:
        """W_x x + b. x (..., i) -> (..., h)."""
        return self.input(x)

    def step(self, xp: Tensor, reads: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState]:
        """tanh(W_x x + W_r r + b) (b, h); the state passes through unchanged."""
        return torch.tanh(torch.addmm(xp, reads, self.recurrent.weight.t())), state


def make_controller(kind: str, input_size: int, read_size: int, hidden_size: int) -> nn.Module:
    if kind == "lstm":
        return LSTMController(input_size, read_size, hidden_size)
    if kind == "feedforward":
        return FeedForwardController(input_size, read_size, hidden_size)
    raise ValueError(f"controller={kind!r} is not one of 'lstm', 'feedforward'")
