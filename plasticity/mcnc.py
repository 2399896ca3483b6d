"""MCNC: a small code mapped by a frozen sine generator onto a direction in weight space (MCNC, 2024).

    theta_t = theta + beta_t * ||theta|| * phi(alpha_t) / ||phi(alpha_t)||
    phi(a) = W2 sin(omega W1 a),   W1 (h, k), W2 (D, h) frozen and random

The amplitude beta_t is relative to the norm of the adapted weights (`amplitude = "relative"`,
the default): a unit direction spreads over all D weights, so with an absolute amplitude each
weight moves by beta / sqrt(D), and beta must grow to the order of ||theta|| (tens for an MLP of
a few ten thousand weights) before the delta matters; an optimiser moving beta by about its
learning rate per step never gets there within a task (an MLP's adapters stayed at chance). With
the relative amplitude a step of the learning rate moves the weights by that fraction of their
scale, whatever D is. `amplitude = "absolute"` keeps the unscaled form.

D is the number of weights in all targeted layers. The generator's weights
are drawn once from a private generator seeded by `seed` and kept as
non-persistent buffers (they are rebuilt from the seed, never saved; counted
in `shared_bytes` because they are held in memory). A task stores its code
alpha (k, random start) and the amplitude beta (starts at 0, so a new task's
delta is exactly zero): the delta lives on a k-dimensional manifold of the
sphere of directions, its length learned separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from agentlab.config import check
from agentlab.protocols import tensor_bytes
from agentlab.registry import BuildEnv, register
from agentlab.plasticity.adapter import AdapterConfig, AdapterModule
from agentlab.plasticity.random_basis import mix


@dataclass(frozen=True)
class MCNCConfig(AdapterConfig):
    """Per-task MCNC adapters: a k-dimensional code through a frozen sine generator network."""

    k: int = 239
    """code size (stored per task with the amplitude: 4 (k + 1) bytes)"""
    hidden: int = 32
    """generator width h"""
    omega: float = 3.0
    """frequency of the sine activation (higher = a more curved manifold)"""
    amplitude: Literal["relative", "absolute"] = "relative"
    """beta scales the unit direction by the norm of the adapted weights (relative) or is the delta's norm itself"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.k >= 1, "k", self.k, "an integer >= 1")
        check(self.hidden >= 1, "hidden", self.hidden, "an integer >= 1")
        check(self.omega > 0, "omega", self.omega, "a number > 0")


class MCNC(AdapterModule):
    method = "mcnc"

    def on_attached(self) -> None:
        g = torch.Generator().manual_seed(mix(self.cfg.seed, "mcnc"))
        sizes = [fi * fo for _, fi, fo in self.targets]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        device = next(self._backbone.parameters()).device
        w1 = torch.randn(self.cfg.hidden, self.cfg.k, generator=g) / math.sqrt(self.cfg.k)
        w2 = torch.randn(self.offsets[-1], self.cfg.hidden, generator=g) / math.sqrt(self.cfg.hidden)
        self.register_buffer("w1", w1.to(device), persistent=False)
        self.register_buffer("w2", w2.to(device), persistent=False)
        self._scale: Tensor | None = None  # ||theta|| of the adapted weights (frozen once adapters train), computed on use

    def new_task_state(self, task_id: int) -> nn.ParameterDict:
        g = torch.Generator().manual_seed(mix(self.cfg.seed, "mcnc-init", task_id))
        device = self.w1.device
        return nn.ParameterDict({
            "code": nn.Parameter(torch.randn(self.cfg.k, generator=g).to(device)),
            "beta": nn.Parameter(torch.zeros(1, device=device)),
        })

    def direction(self, state: nn.ParameterDict) -> Tensor:
        """(D,) unit direction phi(code) / ||phi(code)||."""
        u = self.w2 @ torch.sin(self.cfg.omega * (self.w1 @ state["code"]))
        return u / u.norm().clamp(min=1e-12)

    def scale(self) -> Tensor:
        """||theta|| over the adapted layers' base weights (1 with the absolute amplitude). The backbone is frozen
        while adapters train, so it is computed once (and again from the restored weights after a resume)."""
        if self.cfg.amplitude == "absolute":
            return torch.ones(())
        if self._scale is None:
            self._scale = torch.sqrt(sum(t.weight.detach().float().pow(2).sum() for t in self.wrapped()))
        return self._scale

    def delta_weight(self, state: nn.ParameterDict, index: int) -> Tensor:
        _, fan_in, fan_out = self.targets[index]
        u = self.direction(state)[self.offsets[index] : self.offsets[index + 1]]
        return (state["beta"] * self.scale().to(u) * u).view(fan_out, fan_in)

    def shared_bytes(self) -> int:
        return tensor_bytes([self.w1, self.w2])


@register("plasticity", "mcnc", MCNCConfig)
def build_mcnc(cfg: MCNCConfig, env: BuildEnv) -> MCNC:
    """Per-task MCNC adapters: a small code through a frozen sine generator onto weight directions."""
    return MCNC(cfg)
