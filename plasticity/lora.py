"""LoRA: a per-task low-rank weight delta (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation").

    W_t = W + (alpha / r) B_t A_t,   A_t (r, in), B_t (out, r)

A_t starts Kaiming-uniform (bound 1/sqrt(in), as PEFT does) from a private
generator seeded by (seed, task id), and B_t starts at zero, so a new task's
adapter is an exact no-op until it trains. The product is applied as
x -> x A^T B^T (r-wide), never as a dense (out, in) matrix, except to merge.

Why not the PEFT library: it installs (`peft` 0.21) but pulls in
`transformers`, `accelerate` and `huggingface_hub`, and keeps each adapter's
parameters inside the wrapped layer, where our ledger would count them as the
backbone's; NOLA, PRANC and MCNC would need a second wrapping mechanism beside
it. One small wrapper (`agentlab.plasticity.adapter`) serves all four methods and
follows PEFT's conventions: `base_layer`, merge / unmerge / disable, B = 0.
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
from agentlab.plasticity.random_basis import mix


@dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """Per-task low-rank adapters (LoRA) on the targeted linear layers."""

    rank: int = 4
    """r, the rank of each delta"""
    alpha: float = 8.0
    """scale numerator: the delta is (alpha / rank) B A"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, "rank", self.rank, "an integer >= 1")
        check(self.alpha > 0, "alpha", self.alpha, "a number > 0")


class LoRA(AdapterModule):
    method = "lora"

    def __init__(self, cfg: LoRAConfig) -> None:
        super().__init__(cfg)
        self.scale = cfg.alpha / cfg.rank

    def new_task_state(self, task_id: int) -> nn.ParameterDict:
        g = torch.Generator().manual_seed(mix(self.cfg.seed, "lora", task_id))
        state = nn.ParameterDict()
        for i, (_, fan_in, fan_out) in enumerate(self.targets):
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)), PEFT's default for A
            state[f"A{i}"] = nn.Parameter((torch.rand(self.cfg.rank, fan_in, generator=g) * 2 - 1) * bound)
            state[f"B{i}"] = nn.Parameter(torch.zeros(fan_out, self.cfg.rank))
        return state.to(self.targets_device())

    def targets_device(self) -> torch.device:
        return next(self._backbone.parameters()).device

    def delta_weight(self, state: nn.ParameterDict, index: int) -> Tensor:
        return self.scale * state[f"B{index}"] @ state[f"A{index}"]  # (out, in)

    def layer_delta(self, state: nn.ParameterDict, index: int, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.linear(x, state[f"A{index}"]), state[f"B{index}"])  # (..., out)


@register("plasticity", "lora", LoRAConfig)
def build_lora(cfg: LoRAConfig, env: BuildEnv) -> LoRA:
    """Per-task LoRA adapters (W + alpha/r B A, B = 0 at start) on linear layers chosen by name."""
    return LoRA(cfg)
