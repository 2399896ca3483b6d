"""The Differentiable Neural Computer core: controller + memory access + output layer.

    (h_t, s_t) = controller([x_t ; r_{t-1}], s_{t-1})
    r_t, access_t = MemoryAccess(h_t, access_{t-1})
    y_t = W_y [h_t ; r_t]                           (Graves et al. 2016: v_t + W_r [r_t^1..r_t^R])

`forward(x, state)` takes one step for x (b, i) or unrolls for x (b, t, i); only
the time loop is Python, batch and heads are vectorised. An unroll applies the
controller's input weights and the output layer to all steps at once, outside the
loop. With one write head an unroll runs through `fused.FusedUnroll` (the same
equations with the backward written out: no autograd graph per step); `fused=False`,
several write heads, or a compiled step take the autograd path through the
per-mechanism functions. Output values are clipped to +-clip_value as in deepmind/dnc (numerical
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

from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.protocols import MemoryModule, tensor_bytes
from agentlab.memory.dnc.access import AccessState, MemoryAccess
from agentlab.memory.dnc.controller import ControllerState, LSTMController, make_controller
from agentlab.memory.dnc.fused import FusedUnroll, Sizes
from agentlab.memory.dnc.linkage import LinkageState


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


def _map_state(state: Any, fn: Any) -> Any:
    """The nested state tuple with `fn` applied to every tensor."""
    if isinstance(state, tuple):
        return type(state)(*(_map_state(v, fn) for v in state))
    return fn(state)


def _as_grad_leaves(state: Any) -> Any:
    """The state with every tensor that does not require grad replaced by a detached leaf that does."""
    return _map_state(state, lambda t: t if t.requires_grad else t.detach().requires_grad_())


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
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.config = dict(
            input_size=input_size, output_size=output_size, memory_size=memory_size, word_size=word_size,
            num_reads=num_reads, num_writes=num_writes, hidden_size=hidden_size, controller=controller, clip_value=clip_value,
            fused=fused,
        )
        self.controller = make_controller(controller, input_size, num_reads * word_size, hidden_size)
        self.access = MemoryAccess(input_size=hidden_size, memory_size=memory_size, word_size=word_size,
                                   num_reads=num_reads, num_writes=num_writes)
        self.output = nn.Linear(hidden_size + num_reads * word_size, output_size)
        self.clip_value = clip_value
        self.fused = fused  # an unroll through FusedUnroll where it applies (see the module docstring)
        self._compiled = False
        self._last: dict[str, Tensor] = {}

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> DNCState:
        """All zeros, in the parameters' dtype."""
        c = self.config
        state = DNCState(
            access=self.access.initial_state(batch_size, device),
            controller=self.controller.initial_state(batch_size, device),
            read_words=torch.zeros(batch_size, c["num_reads"], c["word_size"], device=device),
        )
        dtype = self.output.weight.dtype
        return state if dtype == torch.float32 else _map_state(state, lambda t: t.to(dtype))

    def _clip(self, x: Tensor) -> Tensor:
        return x.clamp(-self.clip_value, self.clip_value) if self.clip_value > 0 else x

    def _advance(self, xp: Tensor, state: DNCState) -> tuple[Tensor, DNCState, Tensor]:
        """One step from the projected input xp (b, g) -> controller output (b, h), the new state, allocation (b, w, n)."""
        h, ctrl = self.controller.step(xp, rearrange(state.read_words, "b r d -> b (r d)"), state.controller)
        words, access, alloc = self.access(h, state.access)  # (b, r, d)
        return h, DNCState(access, ctrl, words), alloc

    def compile_step(self, **options: Any) -> "DNC":
        """torch.compile the per-step function (controller + memory access), shapes static.

        The unroll is a Python loop of ~100 small operations per step, so on a GPU it is
        bound by kernel launches; compiled, each step runs as a few fused kernels. One graph
        per batch size and grad mode, whatever the sequence length: each step gets a
        contiguous (b, g) slice of the projected input (a slice of (b, t, g) would carry a
        stride that changes with t), and under grad a fresh state's tensors enter as leaves
        that require grad, as the state every later step carries does (otherwise the first
        step guards on requires_grad = False and compiles a second graph). `options` go to
        `torch.compile` (tests pass a counting backend). An unroll of a compiled core takes
        the autograd path, not `FusedUnroll`.
        """
        options.setdefault("dynamic", False)
        self._advance = torch.compile(self._advance, **options)  # type: ignore[method-assign]
        self._compiled = True
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
        if self.fused and not self._compiled and self.config["num_writes"] == 1:
            return self._fused_unroll(x, state)
        record = not self.training
        xp = self.controller.project(x).transpose(0, 1).contiguous()  # (t, b, g), every step's input weights at once
        if self._compiled and torch.is_grad_enabled():
            state = _as_grad_leaves(state)
        hs, words = [], []
        trace: dict[str, list[Tensor]] = {"allocation": [], "write_weights": [], "read_weights": []}
        for t in range(x.shape[1]):
            h, state, alloc = self._advance(xp[t], state)
            hs.append(h)
            words.append(state.read_words)
            if record:
                trace["allocation"].append(alloc[0, 0].detach())  # (n,)
                trace["write_weights"].append(state.access.write_weights[0, 0].detach())
                trace["read_weights"].append(rearrange(state.access.read_weights[0].detach(), "r n -> (r n)"))
        self._remember(state, {k: torch.stack(v, dim=1) for k, v in trace.items()} if record else None)
        return self._readout(torch.stack(hs, dim=1), torch.stack(words, dim=1)), state  # (b, t, o)

    def _fused_unroll(self, x: Tensor, state: DNCState) -> tuple[Tensor, DNCState]:
        """The unroll through `FusedUnroll` (one write head): same outputs and state as the autograd path."""
        c, acc = self.config, state.access
        lstm = isinstance(self.controller, LSTMController)
        sz = Sizes(c["hidden_size"], c["num_reads"], c["word_size"], c["memory_size"], lstm,
                   tuple(self.access.sizes))  # type: ignore[arg-type]
        record = not self.training
        xp = self.controller.project(x).transpose(0, 1)  # (t, b, g)
        hs, reads, cell, memory, rw, ww, link, prec, usage, *trace = FusedUnroll.apply(
            sz, record, xp, self.controller.recurrent.weight, self.access.interface.weight, self.access.interface.bias,
            self.access.off_diagonal, state.controller.h, state.controller.c, state.read_words, acc.memory,
            acc.read_weights, acc.write_weights[:, 0], acc.linkage.link[:, 0], acc.linkage.precedence[:, 0], acc.usage)
        hs, reads = hs.transpose(0, 1), reads.transpose(0, 1)  # (b, t, h), (b, t, r, d)
        ctrl = ControllerState(hs[:, -1], cell) if lstm else state.controller
        access = AccessState(memory, rw, ww[:, None], LinkageState(link[:, None], prec[:, None]), usage)
        state = DNCState(access, ctrl, reads[:, -1])
        traced = None
        if record:
            alloc, write, read = trace
            traced = {"allocation": alloc.t(), "write_weights": write.t(), "read_weights": rearrange(read, "t r n -> (r n) t")}
        self._remember(state, traced)
        return self._readout(hs, reads), state

    def _remember(self, state: DNCState, trace: dict[str, Tensor] | None) -> None:
        """Keep the last unroll's usage and, in eval mode, its trace for TensorBoard."""
        self._last = {"usage": state.access.usage.detach()}
        if trace is not None:
            self._last.update(trace)  # (n or r*n, t)
            self._last["link"] = state.access.linkage.link[0, 0].detach()  # (n, n)

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
