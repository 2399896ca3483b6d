"""PRANC: the whole adapter delta as a combination of seeded random basis vectors (Nooralinejad et al., ICCV 2023).

    theta_t = theta + sum_j alpha_{t,j} theta_j,   j = 1..k

over the weights of every targeted layer: basis vector theta_j is the
concatenation of one random matrix per layer with entries uniform on
(-1, 1) times sqrt(3 / (k in)) (variance 1 / (k in): the sum over k directions
with unit coefficients has the scale of a freshly initialised layer), generated chunk by
chunk from private generators seeded by (seed, layer) and regenerated in
backward rather than kept (`agentlab.plasticity.random_basis.combine`). A task stores k
coefficients (the seed belongs to the module); they start at zero, so a new
task's delta is exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.plasticity.adapter import AdapterConfig, AdapterModule
from agentlab.plasticity.random_basis import combine, mix


@dataclass(frozen=True)
class PRANCConfig(AdapterConfig):
    """Per-task PRANC adapters: k coefficients over seeded random directions in weight space."""

    k: int = 240
    """basis vectors (coefficients stored per task: 4 k bytes)"""
    chunk: int = 32
    """basis vectors generated at a time (memory O(chunk * weights))"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.k >= 1, "k", self.k, "an integer >= 1")
        check(self.chunk >= 1, "chunk", self.chunk, "an integer >= 1")


class PRANC(AdapterModule):
    method = "pranc"

    def new_task_state(self, task_id: int) -> nn.ParameterDict:
        device = next(self._backbone.parameters()).device
        return nn.ParameterDict({"alpha": nn.Parameter(torch.zeros(self.cfg.k, device=device))})

    def delta_weight(self, state: nn.ParameterDict, index: int) -> Tensor:
        _, fan_in, fan_out = self.targets[index]
        flat = combine(state["alpha"], mix(self.cfg.seed, "pranc", index), fan_out * fan_in, chunk=self.cfg.chunk, dist="uniform")
        return flat.view(fan_out, fan_in) * math.sqrt(3.0 / (self.cfg.k * fan_in))


@register("plasticity", "pranc", PRANCConfig)
def build_pranc(cfg: PRANCConfig, env: BuildEnv) -> PRANC:
    """Per-task PRANC adapters: the weight delta as k coefficients over seeded random directions."""
    return PRANC(cfg)
