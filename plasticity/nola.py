"""NOLA: LoRA whose factors are combinations of seeded random matrices (Koohpayegani et al., ICLR 2024).

    A_t = (1 / sqrt(k_a)) sum_i alpha_{t,i} A_i,   B_t = (1 / sqrt(k_b)) sum_j beta_{t,j} B_j
    W_t = W + (scale / r) B_t A_t

The bases A_i (r, in) and B_j (out, r) are uniform on (-1, 1) (A_i scaled by
1 / sqrt(in), matching LoRA's A at initialisation), drawn per layer from
private generators seeded by (seed, layer, factor); they are shared by all
tasks, regenerated chunk by chunk in forward *and* backward
(`agentlab.plasticity.random_basis.combine`), and never kept. A task stores only its
coefficients: k_a + k_b numbers per layer (the seed belongs to the module).
beta starts at zero, so a new task's adapter is an exact no-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.plasticity.adapter import AdapterConfig, AdapterModule
from agentlab.plasticity.random_basis import combine, mix


@dataclass(frozen=True)
class NOLAConfig(AdapterConfig):
    """Per-task NOLA adapters: LoRA factors as coefficients over seeded random bases."""

    rank: int = 4
    """r, the rank of the generated factors"""
    alpha: float = 8.0
    """scale numerator: the delta is (alpha / rank) B A"""
    k_a: int = 30
    """basis matrices for A per layer (coefficients stored per task)"""
    k_b: int = 30
    """basis matrices for B per layer (coefficients stored per task)"""
    chunk: int = 16
    """basis matrices generated at a time (memory O(chunk * r * width))"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, "rank", self.rank, "an integer >= 1")
        check(self.alpha > 0, "alpha", self.alpha, "a number > 0")
        check(self.k_a >= 1, "k_a", self.k_a, "an integer >= 1")
        check(self.k_b >= 1, "k_b", self.k_b, "an integer >= 1")
        check(self.chunk >= 1, "chunk", self.chunk, "an integer >= 1")


class NOLA(AdapterModule):
    method = "nola"

    def __init__(self, cfg: NOLAConfig) -> None:
        super().__init__(cfg)
        self.scale = cfg.alpha / cfg.rank

    def _seed(self, index: int, factor: str) -> int:
        return mix(self.cfg.seed, "nola", index, factor)

    def new_task_state(self, task_id: int) -> nn.ParameterDict:
        g = torch.Generator().manual_seed(mix(self.cfg.seed, "nola-init", task_id))
        state = nn.ParameterDict()
        device = next(self._backbone.parameters()).device
        for i in range(len(self.targets)):
            state[f"a{i}"] = nn.Parameter(torch.randn(self.cfg.k_a, generator=g).to(device))
            state[f"b{i}"] = nn.Parameter(torch.zeros(self.cfg.k_b, device=device))
        return state

    def factors(self, state: nn.ParameterDict, index: int) -> tuple[Tensor, Tensor]:
        """A (r, in) and B (out, r) of target `index`, generated from the coefficients."""
        _, fan_in, fan_out = self.targets[index]
        r, c = self.cfg.rank, self.cfg.chunk
        a = combine(state[f"a{index}"], self._seed(index, "A"), r * fan_in, chunk=c, dist="uniform")
        b = combine(state[f"b{index}"], self._seed(index, "B"), fan_out * r, chunk=c, dist="uniform")
        A = a.view(r, fan_in) / math.sqrt(self.cfg.k_a * fan_in)
        B = b.view(fan_out, r) / math.sqrt(self.cfg.k_b)
        return A, B

    def delta_weight(self, state: nn.ParameterDict, index: int) -> Tensor:
        A, B = self.factors(state, index)
        return self.scale * B @ A

    def layer_delta(self, state: nn.ParameterDict, index: int, x: Tensor) -> Tensor:
        A, B = self.factors(state, index)
        return self.scale * F.linear(F.linear(x, A), B)


@register("plasticity", "nola", NOLAConfig)
def build_nola(cfg: NOLAConfig, env: BuildEnv) -> NOLA:
    """Per-task NOLA adapters: LoRA factors as seeded random bases times stored coefficients."""
    return NOLA(cfg)
