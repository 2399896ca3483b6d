"""A Hopfield store of binary masks: ±1 patterns kept as attractors of one d × d matrix.

Storage (Storkey 1997, the incremental rule HopSupSup uses), for a new pattern x ∈ {-1, +1}^d:

    h = W x                         (local fields, the diagonal excluded)
    W += (x xᵀ - x hᵀ - h xᵀ) / d   with the diagonal kept at 0 (the "- I" of the rule)

Recall from a cue (classic asynchronous-free variant): s ← sign(W s) for a few sweeps,
ties kept. Recall from a part (`complete`): the entries known (a task's key) are held fixed,
the others start at the sign of the field the known ones give and follow s ← sign(W s).
Storkey's rule keeps about d / sqrt(2 ln d) random patterns stable (Storkey 1997),
against 0.14 d for the Hebbian rule; `capacity` reports that figure. From cues with 10% of
bits flipped, recall is exact up to about half of it (`reliable_capacity`, measured for
d = 256 to 1000) and reaches about 4-8% bit error at `capacity`.

Recovery by gradient (HopSupSup, Wortsman et al. 2020, Sec. 3.5): a free score vector
s ∈ R^d is moved down an objective annealed from a task objective (SupSup's output
entropy) towards the Hopfield energy

    (1 - λ) task(v) + λ γ (-½ vᵀ W v),   λ: 0 -> 1,   v = tanh(s) or v = sign(s) (straight-through)

so it first finds the region of the right task and then falls into its stored attractor.

The matrix is the only state: memory does not grow with the number of patterns.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


class HopfieldMaskStore(nn.Module):
    """Binary patterns of length `d` stored in one d × d matrix (a buffer, saved in checkpoints)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        if d < 2:
            raise ValueError(f"a Hopfield store needs d >= 2, got {d}")
        self.d = d
        self.register_buffer("W", torch.zeros(d, d))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    # ---------------------------------------------------------------- facts
    @property
    def capacity(self) -> int:
        """Storkey's capacity for random patterns, d / sqrt(2 ln d)."""
        return int(self.d / math.sqrt(2 * math.log(self.d)))

    @property
    def reliable_capacity(self) -> int:
        """Patterns recalled exactly from cues with 10% of bits flipped (measured: d = 256 to 1000): capacity // 2."""
        return self.capacity // 2

    def nbytes(self) -> int:
        return self.W.numel() * self.W.element_size()

    def __len__(self) -> int:
        return int(self.count)

    # ---------------------------------------------------------------- storing and recalling
    @torch.no_grad()
    def write(self, pattern: Tensor) -> None:
        """Store one pattern (d,) of ±1 (a 0/1 mask is mapped to ±1)."""
        x = self._pm1(pattern)
        h = self.W @ x  # (d,) local fields; W has a zero diagonal
        dW = torch.outer(x, x) - torch.outer(x, h) - torch.outer(h, x)
        dW.fill_diagonal_(0.0)
        self.W += dW / self.d
        self.count += 1

    @torch.no_grad()
    def recall(self, cue: Tensor, *, sweeps: int = 20, clamp: Tensor | None = None) -> Tensor:
        """Synchronous sign updates from cue (d,) or (B, d) until a fixed point; returns ±1, same shape.

        `clamp` (d,) bool: entries held at the cue's values (a known part of the pattern)."""
        s = self._pm1(cue)
        for _ in range(sweeps):
            field = s @ self.W  # W is symmetric
            nxt = torch.where(field == 0, s, field.sign())
            if clamp is not None:
                nxt = torch.where(clamp.to(s.device), s, nxt)
            if torch.equal(nxt, s):
                break
            s = nxt
        return s

    @torch.no_grad()
    def complete(self, known: Tensor, where: Tensor, *, sweeps: int = 20) -> Tensor:
        """The stored pattern a part of it recalls: `known` (d,) or (B, d) holds ±1 where `where` (d,) bool is
        true (the rest is ignored); those entries stay fixed, the others start at the sign of the field the known
        ones give (ties +1) and are updated until a fixed point. Returns ±1 (B, d) or (d,)."""
        where = where.to(self.W.device)
        k = torch.where(where, known.to(self.W.dtype).to(self.W.device), torch.zeros((), device=self.W.device))
        field = k @ self.W
        s = torch.where(where, torch.where(k >= 0, 1.0, -1.0), torch.where(field >= 0, 1.0, -1.0)).to(self.W.dtype)
        return self.recall(s, sweeps=sweeps, clamp=where)

    def energy(self, v: Tensor) -> Tensor:
        """E(v) = -½ vᵀ W v / d for v (d,) or (B, d); returns () or (B,)."""
        return -0.5 * ((v @ self.W) * v).sum(-1) / self.d

    def recover(self, task_objective: Callable[[Tensor], Tensor], s0: Tensor, *, steps: int = 30,
                lr: float = 0.5, gamma: float = 1.0, momentum: float = 0.0, straight_through: bool = False,
                sweeps: int = 20, optimizer: str = "sgd") -> Tensor:
        """Gradient steps on free scores s (B, d) from s0; objective (1 - λ) task + λ γ (-½ vᵀWv), λ: 0 -> 1.

        `task_objective(v)` maps v in [-1, 1]^(B, d) to per-example losses (B,): v = tanh(s), or with
        `straight_through` the ±1 sign of s whose gradient passes to s unchanged (the reference code's
        hard masks). `optimizer`: "sgd" (with `momentum`, the reference code's) or "adam", whose steps do not
        depend on the gradient's scale (an output entropy near its maximum has tiny gradients that SGD at a
        fixed rate never turns into a sign flip). Returns the fixed point that sign(s) recalls, ±1 (B, d).
        """
        s = s0.detach().clone().requires_grad_(True)
        if optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam([s], lr=lr)
        elif optimizer == "sgd":
            opt = torch.optim.SGD([s], lr=lr, momentum=momentum)
        else:
            raise ValueError(f"optimizer {optimizer!r}: 'sgd' or 'adam'")
        for step in range(steps):
            lam = step / max(steps - 1, 1)
            with torch.enable_grad():
                v = torch.where(s >= 0, 1.0, -1.0) + s - s.detach() if straight_through else torch.tanh(s)
                loss = ((1 - lam) * task_objective(v) + lam * gamma * self.energy(v) * self.d).sum()
                opt.zero_grad()
                loss.backward()
            opt.step()
        return self.recall(torch.where(s.detach() >= 0, 1.0, -1.0), sweeps=sweeps)

    @torch.no_grad()
    def recall_error(self, patterns: Tensor, *, noise: float = 0.1, generator: torch.Generator | None = None) -> tuple[float, float]:
        """(bit error rate, fraction recalled exactly) for stored `patterns` (N, d) cued with `noise` bits flipped."""
        p = self._pm1(patterns)
        flip = torch.rand(p.shape, generator=generator) < noise
        got = self.recall(torch.where(flip.to(p.device), -p, p))
        wrong = got != p
        return float(wrong.float().mean()), float((~wrong.any(1)).float().mean())

    def _pm1(self, x: Tensor) -> Tensor:
        x = x.to(self.W.dtype).to(self.W.device)
        if x.shape[-1] != self.d:
            raise ValueError(f"pattern length {x.shape[-1]} != store size d = {self.d}")
        if bool(((x == 0) | (x == 1)).all()):
            x = 2 * x - 1
        return torch.where(x >= 0, 1.0, -1.0).to(self.W.dtype)
