"""The Differentiable Neural Computer core: controller + memory access + output layer.

    (h_t, s_t) = controller([x_t ; r_{t-1}], s_{t-1})
    r_t, access_t = MemoryAccess(h_t, access_{t-1})
    y_t = W_y [h_t ; r_t]                           (Graves et al. 2016: v_t + W_r [r_t^1..r_t^R])

`forward(x, state)` takes one step for x (b, i) or unrolls for x (b, t, i); only
the time loop is Python, batch and heads are vectorised. An unroll applies the
controller's input weights and the output layer to all steps at once, outside the
loop. Output values are clipped to +-clip_value as in deepmind/dnc (numerical
safety); the controller's output needs no clip here (LSTM h = o tanh(c) and the
feed-forward tanh are bounded by 1).
In eval mode the core keeps, for batch element 0 of its last unroll, the
allocation, write and read weights over time and the final link matrix, so
TensorBoard can show them (`images()`); usage and occupancy come from the last
state (`scalars()`).

Axis legend: b batch, t time, i input width, o output width, n memory slots,
d word width, r read heads, w write heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.protocols import MemoryModule, tensor_bytes
from agentlab.memory.dnc.access import AccessState, MemoryAccess
from agentlab.memory.dnc.controller import ControllerState, make_controller


class DNCState(NamedTuple):
    """access: the memory's state; controller: (h, c); read_words (b, r, d) from the last step."""

    access: AccessState
    controller: ControllerState
    read_words: Tensor


def _flatten(state: tuple) -> list[Tensor]:
    out: list[Tensor] = []
    for v in state:
        out.extend(_flatten(v) if isinstance(v, tuple) else [v])
    return out


def _image(x: Tensor) -> Tensor:
    """A (rows, cols) tensor scaled to [0, 1] as a (1, rows, cols) image."""
    x = x.detach().float().cpu()
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo + 1e-12))[None]


class DNC(MemoryModule):
    """A DNC with any number of read and write heads and an LSTM or feed-forward controller."""

    name = "dnc"

    def __init__(
        self,
        *,
        input_size: int,
        output_size: int,
        memory_size: int = 64,
        word_size: int = 32,
        num_reads: int = 4,
        num_writes: int = 1,
        hidden_size: int = 128,
        controller: str = "lstm",
        clip_value: float = 20.0,
    ) -> None:
        super().__init__()
        self.config = dict(
            input_size=input_size, output_size=output_size, memory_size=memory_size, word_size=word_size,
            num_reads=num_reads, num_writes=num_writes, hidden_size=hidden_size, controller=controller, clip_value=clip_value,
        )
        self.controller = make_controller(controller, input_size, num_reads * word_size, hidden_size)
        self.access = MemoryAccess(input_size=hidden_size, memory_size=memory_size, word_size=word_size,
                                   num_reads=num_reads, num_writes=num_writes)
        self.output = nn.Linear(hidden_size + num_reads * word_size, output_size)
        self.clip_value = clip_value
        self._last: dict[str, Tensor] = {}

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> DNCState:
        c = self.config
        return DNCState(
            access=self.access.initial_state(batch_size, device),
            controller=self.controller.initial_state(batch_size, device),
            read_words=torch.zeros(batch_size, c["num_reads"], c["word_size"], device=device),
        )

    def _clip(self, x: Tensor) -> Tensor:
        return x.clamp(-self.clip_value, self.clip_value) if self.clip_value > 0 else x

    def _advance(self, xp: Tensor, state: DNCState) -> tuple[Tensor, DNCState, Tensor]:
        """One step from the projected input xp (b, g) -> controller output (b, h), the new state, allocation (b, w, n)."""
        h, ctrl = self.controller.step(xp, rearrange(state.read_words, "b r d -> b (r d)"), state.controller)
        words, access, alloc = self.access(h, state.access)  # (b, r, d)
        return h, DNCState(access, ctrl, words), alloc

    def compile_step(self) -> "DNC":
        """torch.compile the per-step function (controller + memory access), shapes static.

        The unroll is a Python loop of ~100 small operations per step, so on a GPU it is
        bound by kernel launches; compiled, each step runs as a few fused kernels. The
        first call of each shape (batch size, train / eval) compiles (tens of seconds).
        """
        self._advance = torch.compile(self._advance, dynamic=False)  # type: ignore[method-assign]
        return self

    def _readout(self, h: Tensor, words: Tensor) -> Tensor:
        """y = clip(W_y [h; r]). h (..., h), words (..., r, d) -> (..., o)."""
        return self._clip(self.output(torch.cat([h, words.flatten(-2)], dim=-1)))

    def step(self, x: Tensor, state: DNCState) -> tuple[Tensor, DNCState, Tensor]:
        """One time step. x (b, i) -> y (b, o), the new state, allocation weights (b, w, n)."""
        h, state, alloc = self._advance(self.controller.project(x), state)
        return self._readout(h, state.read_words), state, alloc

    def forward(self, x: Tensor, state: DNCState) -> tuple[Tensor, DNCState]:
        """x (b, i) -> y (b, o), one step; or x (b, t, i) -> y (b, t, o), unrolled over t."""
        if x.dim() == 2:
            y, state, _ = self.step(x, state)
            return y, state
        record = not self.training
        xp = self.controller.project(x)  # (b, t, g), every step's input weights at once
        hs, words = [], []
        trace: dict[str, list[Tensor]] = {"allocation": [], "write_weights": [], "read_weights": []}
        for t in range(x.shape[1]):
            h, state, alloc = self._advance(xp[:, t], state)
            hs.append(h)
            words.append(state.read_words)
            if record:
                trace["allocation"].append(alloc[0, 0].detach())  # (n,)
                trace["write_weights"].append(state.access.write_weights[0, 0].detach())
                trace["read_weights"].append(rearrange(state.access.read_weights[0].detach(), "r n -> (r n)"))
        usage = state.access.usage.detach()
        self._last = {"usage": usage}
        if record:
            self._last.update({k: torch.stack(v, dim=1) for k, v in trace.items()})  # (n or r*n, t)
            self._last["link"] = state.access.linkage.link[0, 0].detach()  # (n, n)
        return self._readout(torch.stack(hs, dim=1), torch.stack(words, dim=1)), state  # (b, t, o)

    def state_bytes(self) -> int:
        """Bytes of one sequence's recurrent state (memory, weights, links, usage, controller)."""
        return tensor_bytes(_flatten(self.initial_state(1)))

    def scalars(self) -> dict[str, float]:
        """usage: mean slot usage at the end of the last sequence; occupancy: share of slots with usage > 0.5."""
        if "usage" not in self._last:
            return {}
        u = self._last["usage"]
        return {"usage": float(u.mean()), "occupancy": float((u > 0.5).float().mean())}

    def images(self) -> dict[str, Tensor]:
        """Allocation, write and read weights over time (slots x time) and the link matrix, batch element 0."""
        return {k: _image(v) for k, v in self._last.items() if k != "usage"}

    def histograms(self) -> dict[str, Tensor]:
        """Usage of every slot of every sequence at the end of the last unroll (`memory/dnc/usage_hist`)."""
        return {"usage_hist": self._last["usage"].flatten()} if "usage" in self._last else {}
