"""The modern Hopfield layers (`Hopfield`, `HopfieldLayer`, `HopfieldPooling`) as memories attached to any backbone.

Registered as memories `hopfield`, `hopfield_layer` and `hopfield_pooling` (Ramsauer et al., ICLR 2021;
the hopfield-layers API is in `agentlab.memory.hopfield`). At its point each reads the features as
state patterns, (B, T, F) with T = 1 for single examples:

    hopfield           self-association among the T steps / positions: each retrieves from all of them
    hopfield_layer     lookup in `quantity` learned stored patterns (a learned associative memory)
    hopfield_pooling   `quantity` learned queries pool the T steps into one read, the same for every step

and the association's output is fused into the features (a gated residual by default, so an attached
layer starts as the identity). Nothing is kept between calls: the stored patterns are the layer's
parameters (or the current features), so these memories have no state and reset nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from einops import repeat
from torch import Tensor

from agentlab.attachment import AttachConfig, AttachedMemory
from agentlab.config import check
from agentlab.memory.hopfield import Hopfield, HopfieldLayer, HopfieldPooling
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class HopfieldMemoryConfig(AttachConfig):
    """A modern Hopfield layer at an attachment point; keys of the hopfield-layers API where they apply."""

    hidden_size: int = 0
    """width of one head in Hopfield space; 0 = the features' width / num_heads"""
    num_heads: int = 1
    """parallel association heads"""
    quantity: int = 16
    """hopfield_layer: learned stored patterns; hopfield_pooling: learned queries (unused by hopfield)"""
    scaling: float = 0.0
    """beta, the inverse temperature; 0 = 1 / sqrt(hidden_size)"""
    update_steps_max: int = 0
    """0 = one update; n = up to n further updates; -1 = until converged"""
    dropout: float = 0.0
    """dropout on the association matrix (training only)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.hidden_size >= 0, "hidden_size", self.hidden_size, "an integer >= 0 (0 = width / num_heads)")
        check(self.num_heads >= 1, "num_heads", self.num_heads, "an integer >= 1")
        check(self.quantity >= 1, "quantity", self.quantity, "an integer >= 1")
        check(self.scaling >= 0, "scaling", self.scaling, "a number >= 0 (0 = 1/sqrt(hidden_size))")
        check(self.update_steps_max >= -1, "update_steps_max", self.update_steps_max, "an integer >= -1")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")


class HopfieldMemory(AttachedMemory):
    """One of the three Hopfield layers at an attachment point (see the module docstring)."""

    def __init__(self, cfg: HopfieldMemoryConfig, kind: str) -> None:
        super().__init__(cfg, heads=cfg.num_heads)
        self.cfg, self.kind, self.name = cfg, kind, kind
        self.layer: Any = None

    def build(self, width: int) -> int:
        c = self.cfg
        kw: dict[str, Any] = dict(input_size=width, num_heads=c.num_heads, dropout=c.dropout, batch_first=True,
                                  update_steps_max=None if c.update_steps_max < 0 else c.update_steps_max)
        if c.hidden_size:
            kw["hidden_size"] = c.hidden_size
        if c.scaling:
            kw["scaling"] = c.scaling
        if self.kind == "hopfield":
            self.layer = Hopfield(**kw)
            return width
        if self.kind == "hopfield_layer":
            self.layer = HopfieldLayer(**kw, quantity=c.quantity)
            return width
        self.layer = HopfieldPooling(**kw, quantity=c.quantity)
        return c.quantity * width

    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y = self.layer(x)  # (B, T, F), or (B, q F) pooled
        if self.kind == "hopfield_pooling":
            y = repeat(y, "b r -> b t r", t=x.shape[1])
        return y, state


@register("memory", "hopfield", HopfieldMemoryConfig)
def build_hopfield(cfg: HopfieldMemoryConfig, env: BuildEnv) -> HopfieldMemory:
    """Modern Hopfield layer: self-association among the features' steps, fused into them."""
    return HopfieldMemory(cfg, "hopfield")


@register("memory", "hopfield_layer", HopfieldMemoryConfig)
def build_hopfield_layer(cfg: HopfieldMemoryConfig, env: BuildEnv) -> HopfieldMemory:
    """HopfieldLayer: lookup in learned stored patterns, fused into the features."""
    return HopfieldMemory(cfg, "hopfield_layer")


@register("memory", "hopfield_pooling", HopfieldMemoryConfig)
def build_hopfield_pooling(cfg: HopfieldMemoryConfig, env: BuildEnv) -> HopfieldMemory:
    """HopfieldPooling: learned queries pool the features' steps into one read, fused into every step."""
    return HopfieldMemory(cfg, "hopfield_pooling")
