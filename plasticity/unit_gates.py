"""Per-task unit gates: the transform HopSupSup puts on every layer it changes.

A gate multiplies each output unit (a Linear's row, a Conv2d's output channel) of a wrapped layer,

    y = g ⊙ (W x + b)   =   (g[:, None] ⊙ W) x + g ⊙ b

so it is a weight transform (`agentlab.wrapping`): code that reads `layer.weight` sees the gated rows.
The gate values are {0, 1} ("binary": a unit switched off, the reference code's mask over BatchNorm
scales) or {-1, +1} ("sign": a unit's sign flipped). While a task trains, its gates come from real
scores, g = [s >= 0] (straight-through gradient to s, as SupSup's GNu rule); afterwards the module
hands the transform the gates it recalled from its store (`GateContext.gates`).

During task inference a gate may differ per example (`GateContext.mode = "examples"`): the
transform then computes the whole output, y_b = g_b ⊙ (W' x_b + b'), where W' and b' are the
weight and bias after the transforms that follow it on the layer (exact for masks and gates after
it; a delta after it is gated with the weight here, not added after).

Axis legend: b = examples, o = output units / channels, i = input units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from agentlab.errors import UserError
from agentlab.wrapping import LayerTransform

GateValues = Literal["binary", "sign"]


@dataclass
class GateContext:
    """What every gate computes now: nothing (the base layer), one task's gates, or one gate per example."""

    mode: Literal["base", "task", "examples"] = "base"
    task: int | None = None
    values: GateValues = "binary"
    gates: dict[str, Tensor] = field(default_factory=dict)  # layer name -> (o,) recalled gates of `task`
    example_gates: dict[str, Tensor] = field(default_factory=dict)  # layer name -> (b, o) in mode "examples"


class _StraightThrough(torch.autograd.Function):
    """Forward the hard gate, backward the gradient to the scores unchanged (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, hard: Tensor) -> Tensor:
        return hard

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def gate_of_scores(scores: Tensor, values: GateValues) -> Tensor:
    """g = [s >= 0] ("binary") or sign(s) with sign(0) = +1 ("sign"); straight-through to the scores."""
    on = scores.detach() >= 0
    hard = on.to(scores.dtype) if values == "binary" else torch.where(on, 1.0, -1.0).to(scores.dtype)
    return _StraightThrough.apply(scores, hard)


def gate_of_bits(bits: Tensor, values: GateValues) -> Tensor:
    """A ±1 pattern as gate values: (bits + 1) / 2 ("binary") or the bits themselves ("sign")."""
    return (bits + 1) / 2 if values == "binary" else bits


class UnitGate(LayerTransform):
    """Gates on the output units of one wrapped Linear / Conv2d; per-task state only while a task trains."""

    base_weight = "fixed"
    base_weight_reason = "its per-task gates select units of fixed random weights"

    def __init__(self, ctx: GateContext, name: str, units: int) -> None:
        super().__init__()
        self.ctx = ctx
        self.key = name
        self.units = units
        self.scores = nn.ParameterDict()  # str(t) -> (o,) while task t trains

    # ---------------------------------------------------------------- per-task training state
    def add_task(self, t: int, generator: torch.Generator) -> None:
        """Scores for task t, uniform in ±0.01: about half the gates start on, and one step can flip any."""
        s = (torch.rand(self.units, generator=generator) * 2 - 1) * 0.01
        self.scores[str(t)] = nn.Parameter(s.to(self.weight.device))

    def drop_task(self, t: int) -> None:
        if str(t) in self.scores:
            del self.scores[str(t)]

    def trained_gate(self, t: int) -> Tensor | None:
        """Task t's gate values (o,) from its scores while it trains, else None."""
        return gate_of_scores(self.scores[str(t)], self.ctx.values) if str(t) in self.scores else None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # A freshly attached gate has no scores: create those the checkpoint names (a task that was training).
        for key, value in state_dict.items():
            if key.startswith(prefix + "scores.") and key.count(".") == prefix.count(".") + 1:
                t = key[len(prefix + "scores."):]
                if t not in self.scores:
                    self.scores[t] = nn.Parameter(torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- computing
    def gate(self) -> Tensor | None:
        """The gates (o,) in force now, or None (the layer unchanged)."""
        c = self.ctx
        if c.mode != "task" or c.task is None:
            return None
        g = self.trained_gate(c.task)
        return g if g is not None else c.gates.get(self.key)

    def transform_weight(self, w: Tensor) -> Tensor:
        g = self.gate()
        return w if g is None else w * g.to(w.dtype).view(-1, *([1] * (w.ndim - 1)))

    def transform_bias(self, b: Tensor | None) -> Tensor | None:
        g = self.gate()
        return b if g is None or b is None else b * g.to(b.dtype)

    def superposed(self, x: Tensor, w: Tensor, b: Tensor | None, after: Any, after_bias: Any) -> Tensor | None:
        """Mode "examples": y_b = g_b ⊙ (W' x_b + b'), one gate vector per example."""
        if self.ctx.mode != "examples":
            return None
        g = self.ctx.example_gates[self.key]  # (b, o)
        y = self.layer._product(x, after(w), after_bias(b))
        if y.shape[0] != g.shape[0]:
            raise UserError(f"hopsupsup: layer {self.layer.layer_name!r} sees {y.shape[0]} rows for {g.shape[0]} examples, "
                            "so gates cannot differ per example on this backbone; use infer = \"entropy\"")
        if isinstance(self.base_layer, nn.Conv2d):
            return y * g.to(y.dtype)[:, :, None, None]  # (b, o, h, w)
        return y * g.to(y.dtype).view(g.shape[0], *([1] * (y.ndim - 2)), g.shape[1])  # (b, ..., o)
