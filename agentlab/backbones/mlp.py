"""A multilayer perceptron over flattened inputs (LeNet 300-100, the 2x400 / 2x1000 MLPs of the CL literature)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from einops import rearrange
from torch import Tensor, nn

from agentlab.backbones.moe import MoEConfig, ResidualMoE
from agentlab.config import ConfigError, check
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class MLPConfig:
    """A fully connected network; input size and classes come from the stream unless given."""

    hidden: list[int] | Literal["auto"] = field(default_factory=lambda: [400, 400])
    """widths of the hidden layers, or "auto": `auto_depth` layers of the width the capacity estimate suggests for the
    stream's training data (agentlab.capacity; runs its probe when the backbone is built)"""
    auto_depth: int = 2
    """hidden layers when hidden is \"auto\" (each of the suggested width)"""
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    """non-linearity between layers"""
    bias: bool = True
    """biases in the linear layers (SupSup uses none)"""
    dropout: float = 0.0
    """dropout after each hidden activation; 0 = none"""
    in_features: int = 0
    """input size; 0 = from the stream"""
    out_features: int = 0
    """output units; 0 = the stream's number of classes"""
    per_step: bool = False
    """apply the layers to every step of a sequence (b, t, i) -> (b, t, o) instead of to whole flattened examples"""
    moe: MoEConfig | None = None
    """a residual expert-choice mixture of experts after the activation of the hidden layers listed in `moe_layers`
    (x + moe(x); tokens are the batch's examples, or a sequence's steps with per_step)"""
    moe_layers: list[int] = field(default_factory=lambda: [0])
    """indices of the hidden layers followed by an MoE layer (with `moe`)"""

    def __post_init__(self) -> None:
        check(self.hidden == "auto" or all(h >= 1 for h in self.hidden), "hidden", self.hidden, 'a list of integers >= 1 or "auto"')
        check(self.auto_depth >= 1, "auto_depth", self.auto_depth, "an integer >= 1")
        check(self.in_features >= 0, "in_features", self.in_features, "an integer >= 0")
        check(self.out_features >= 0, "out_features", self.out_features, "an integer >= 0")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        check(all(0 <= i < len(self.hidden) for i in self.moe_layers), "moe_layers", self.moe_layers,
              f"indices of hidden layers (0..{len(self.hidden) - 1})")


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Module):
    """Linear layers named `layers.0`, `layers.2`, ... with the activation between them."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, *, activation: str = "relu", bias: bool = True,
                 dropout: float = 0.0, per_step: bool = False, moe: MoEConfig | None = None,
                 moe_layers: list[int] | tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.config = {"in_features": in_features, "hidden": list(hidden), "out_features": out_features, "activation": activation, "bias": bias}
        self.per_step = per_step
        if per_step:
            self.config["per_step"] = True
        if dropout:
            self.config["dropout"] = dropout
        if moe is not None:
            self.config["moe"], self.config["moe_layers"] = dict(moe.__dict__), list(moe_layers)
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                act = ACTIVATIONS[activation]()
                # dropout shares the activation's slot so the linear layers keep their names (layers.0, .2, ...)
                if moe is not None and i in moe_layers:  # act -> [dropout] -> x + moe(x), in the activation's slot
                    route = "example" if per_step and moe.route_over != "batch" else "batch"
                    parts = [("act", act), *([("drop", nn.Dropout(dropout))] if dropout else []),
                             ("moe", ResidualMoE(b, moe, route_over=route))]
                    layers.append(nn.Sequential(OrderedDict(parts)))
                else:
                    layers.append(nn.Sequential(act, nn.Dropout(dropout)) if dropout else act)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.per_step:
            return self.layers(x)  # (B, T, I) -> (B, T, O)
        x = rearrange(x, "b ... -> b (...)")  # (B, D)
        return self.layers(x)  # (B, classes)


@register("backbone", "mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, env: BuildEnv) -> MLP:
    """Multilayer perceptron over flattened inputs."""
    i, o = env.stream_sizes(cfg.in_features, cfg.out_features, where="backbone", flatten=not cfg.per_step)
    hidden = auto_hidden(cfg, env) if cfg.hidden == "auto" else list(cfg.hidden)
    return MLP(i, hidden, o, activation=cfg.activation, bias=cfg.bias, dropout=cfg.dropout, per_step=cfg.per_step,
               moe=cfg.moe, moe_layers=cfg.moe_layers)


def auto_hidden(cfg: MLPConfig, env: BuildEnv) -> list[int]:
    """`auto_depth` layers of the width the capacity estimate suggests for the stream's training data."""
    import sys

    from agentlab.capacity import CapacityConfig, estimate, stream_data

    if env.stream is None:
        raise ConfigError('backbone.hidden = "auto" needs the stream\'s data; give the widths instead (e.g. [400, 400])')
    x, y, n, k = stream_data(env.stream, seed=env.seed)
    est = estimate(x, y, k, CapacityConfig(depth=cfg.auto_depth, seed=env.seed), n_total=n)
    print(f"backbone.hidden = \"auto\": {[est.width] * cfg.auto_depth} (capacity estimate of {n:,} examples in "
          f"{est.seconds:.0f} s; `agentlab size` prints its factors)", file=sys.stderr)
    return [est.width] * cfg.auto_depth
