"""Memory attached to any backbone: where it reads, how its read is fused, when its state resets.

A memory passed to `Agent(backbone, memory=[...])` sits at an attachment point of the backbone:

    at = "input"        the backbone's input
    at = "<layer name>" the output of that layer (e.g. "layers.1", "blocks.2")
    at = "head"         the features entering the last layer (the read-out)

At that point the agent hands the features h to the memory, which retrieves what it holds and
fuses it into h with its own parameters (`fuse`):

    residual            y = h + a W r                  (a a learned scalar starting at 0: ReZero,
                                                        Bachlechner et al. 2021, so an attached memory
                                                        starts as the identity and learns to contribute)
    concat              y = [h, r]                     (a width change; only at "head", where the read-out
                                                        is widened at build time, new inputs zero-initialised)
    cross_attention     y = h + a Attn(q = h, kv = r)  (r: the k retrieved items)
    none                y = h                          (a memory that only answers task inference)

Features may be (B, F) examples, (B, T, F) sequences or (B, C, H, W) feature maps (C features per
position); memories see them as (B, T, F) with T = 1, T or H * W.

A memory's recurrent state is explicit data the agent threads through the forward pass and resets at
the boundary the memory declares (`reset`): "example" / "sequence" (every forward call starts fresh),
"episode" (carried across calls until `Agent.reset_memory` marks episodes done, as environments do),
"task" (carried until the next task starts), "never". A store (mini-RAG, episodic, Hopfield store)
keeps its content inside the module; it is written through `MemoryModule.observe` after every training
step with the features, labels and task ids of the examples the step newly saw, and read in the
forward pass.

Axis legend: B batch, T steps or positions, F feature width, R read width, k retrieved items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.config import check
from agentlab.errors import UserError
from agentlab.protocols import MemoryModule

Fuse = Literal["residual", "concat", "cross_attention", "none"]
Reset = Literal["example", "sequence", "episode", "task", "never"]
PER_CALL = ("example", "sequence")


class AttachmentError(UserError):
    """A memory that cannot sit where it was asked to (no such layer, a width change the consumer cannot take)."""


@dataclass(frozen=True)
class AttachConfig:
    """Where an attached memory reads, how its read is fused, when its state resets; every memory takes these."""

    at: str = "head"
    """attachment point: "input", "head" (features entering the last layer) or a layer's name (its output)"""
    fuse: Fuse = "residual"
    """how the read enters the features: residual (gated, starts at 0), concat (widens the read-out; "head" only),
    cross_attention (over the retrieved items), none (task inference only)"""
    reset: Reset = "example"
    """when the recurrent state starts afresh: every example/sequence (each forward call), episode, task, or never"""

    def __post_init__(self) -> None:
        check(isinstance(self.at, str) and self.at != "", "at", self.at, '"input", "head" or a layer name')
        check(self.fuse in ("residual", "concat", "cross_attention", "none"), "fuse", self.fuse,
              "'residual', 'concat', 'cross_attention' or 'none'")
        check(self.reset in ("example", "sequence", "episode", "task", "never"), "reset", self.reset,
              "'example', 'sequence', 'episode', 'task' or 'never'")


# ---------------------------------------------------------------------------- shapes


def as_steps(h: Tensor) -> tuple[Tensor, Any]:
    """Features as (B, T, F) plus what `from_steps` needs to give them back their shape."""
    if h.dim() == 2:
        return h[:, None], ("flat",)
    if h.dim() == 3:
        return h, ("seq",)
    if h.dim() == 4:
        b, c, hh, ww = h.shape
        return rearrange(h, "b c h w -> b (h w) c"), ("map", hh, ww)
    raise AttachmentError(f"a memory reads features of 2, 3 or 4 axes; got shape {tuple(h.shape)}")


def from_steps(y: Tensor, shape: Any) -> Tensor:
    if shape[0] == "flat":
        return y[:, 0]
    if shape[0] == "seq":
        return y
    return rearrange(y, "b (h w) c -> b c h w", h=shape[1], w=shape[2])


# ---------------------------------------------------------------------------- fusion


class Fusion(nn.Module):
    """The memory's own parameters that put a read r into the features h (see the module docstring)."""

    def __init__(self, kind: Fuse, width: int, read_width: int, *, heads: int = 1) -> None:
        super().__init__()
        self.kind, self.width, self.read_width = kind, width, read_width
        if kind in ("residual", "cross_attention"):
            self.gate = nn.Parameter(torch.zeros(()))  # ReZero: the memory starts as the identity
        if kind == "residual":
            self.proj = nn.Linear(read_width, width)
        elif kind == "cross_attention":
            heads = heads if width % heads == 0 else 1
            self.norm = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, kdim=read_width, vdim=read_width, batch_first=True)

    @property
    def out_width(self) -> int:
        return self.width + self.read_width if self.kind == "concat" else self.width

    def forward(self, h: Tensor, r: Tensor | None) -> Tensor:
        """h (B, T, F); r (B, T, R) one read per step, or (B, T, k, R) k retrieved items per step."""
        if self.kind == "none" or r is None:
            return h
        if self.kind == "cross_attention":
            items = r if r.dim() == 4 else r[:, :, None]  # (B, T, k, R)
            b, t = items.shape[:2]
            q = rearrange(self.norm(h), "b t f -> (b t) 1 f")
            kv = rearrange(items, "b t k r -> (b t) k r")
            out, _ = self.attn(q, kv, kv)
            return h + self.gate * rearrange(out, "(b t) 1 f -> b t f", b=b, t=t)
        read = r.mean(2) if r.dim() == 4 else r  # (B, T, R)
        if self.kind == "concat":
            return torch.cat([h, read], dim=-1)
        return h + self.gate * self.proj(read)


# ---------------------------------------------------------------------------- attached memories


class AttachedMemory(MemoryModule):
    """Base of the memories an agent attaches to a backbone. A subclass builds its width-dependent parts in
    `build(width) -> read width` and reads in `retrieve(x (B, T, F), state) -> (r, state)`; stores also
    implement `observe` (writing) and may answer `infer_task`."""

    writes = False
    """whether `observe` stores what training shows it (the agent then hands it features after each step)"""
    infers_task = False
    """whether `infer_task` may answer (the agent asks such memories before its plasticity modules)"""
    per_example = False
    """whether the memory sees each example as one vector (B, F), whatever the features' shape at its point
    (an episodic memory keys whole examples; a recurrent one reads steps)"""

    def __init__(self, attach: AttachConfig, *, heads: int = 1) -> None:
        super().__init__()
        self.at, self.fuse_kind, self.reset_on = attach.at, attach.fuse, attach.reset
        self.heads = heads
        self.width = 0
        self.fusion: Fusion | None = None

    # ---------------------------------------------------------------- building
    def build(self, width: int) -> int:
        """Create the parts that depend on the feature width; return the width of one read."""
        raise NotImplementedError

    def bind(self, width: int) -> int:
        """Size the memory for features of `width` at its point; returns the width after fusion."""
        if self.fuse_kind == "concat" and self.at != "head":
            raise AttachmentError(
                f"memory {self.name!r}: fuse = 'concat' widens the features, which only the read-out can take; "
                f"attach it at 'head', or use fuse = 'residual' or 'cross_attention' at {self.at!r}"
            )
        self.width = width
        read_width = self.build(width)
        self.fusion = Fusion(self.fuse_kind, width, read_width, heads=self.heads)
        return self.fusion.out_width

    @property
    def bound(self) -> bool:
        return self.fusion is not None

    # ---------------------------------------------------------------- reading
    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor | None, Any]:
        """x (B, T, F) -> (read (B, T, R) or (B, T, k, R), or None when there is nothing to read; the new state)."""
        raise NotImplementedError

    def read(self, h: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Fused features of h's shape (the last axis possibly widened by concat) and the new state."""
        assert self.fusion is not None, "the agent binds an attached memory before it reads"
        x, shape = as_steps(h)
        r, state = self.retrieve(x, state)
        if r is None and self.fuse_kind == "concat":  # an empty store reads zeros so the read-out keeps its width
            r = x.new_zeros(*x.shape[:2], self.fusion.read_width)
        return from_steps(self.fusion(x, r), shape), state

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self.read(x, state)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> Any:
        return None

    # ---------------------------------------------------------------- stores
    def observe(self, features: Tensor, labels: Tensor, task_ids: Tensor) -> None:
        """After a training step: the features at the memory's point (B, ...), labels (B,) and task ids (B,) of the
        examples the step newly saw. Stores write them; other memories ignore them."""

    def infer_task(self, features: Tensor) -> Tensor | None:
        """Task ids (B,) for features at the memory's point, or None if this memory cannot tell."""
        return None
