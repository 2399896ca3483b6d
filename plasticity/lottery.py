"""Lottery tickets (Frankle & Carbin 2019): magnitude pruning with rewinding, and a found ticket as a fixed sparse sub-network.

The `Lottery` module wraps layers with the same connectivity mask as SET
(`SparseLayer`), starting dense. Its operations are the steps of iterative
magnitude pruning (IMP), driven by the `imp` learner (agentlab/learners/imp.py):

    remember(): keep the weights at step k (the rewind point; k = 0 is the initialisation)
    prune(p):   remove the fraction p of the *remaining* connections with the smallest |w|,
                over all wrapped layers at once ("global") or in each layer ("layer");
                the last wrapped layer is pruned at `output_fraction` instead (Frankle &
                Carbin prune LeNet's output layer at half the rate), apart from the rest
    rewind():   put the survivors back to their remembered values (the ticket)
    reinit():   draw fresh random values instead (the random re-initialisation control)

With `ticket = "path"` a saved ticket (masks and rewind values) is loaded on
attach and trained as a fixed sparse sub-network: it never rewires.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from agentlab.config import ConfigError, check
from agentlab.protocols import PlasticityModule
from agentlab.registry import BuildEnv, register
from agentlab.plasticity.sparse_figures import density_scalars, magnitude_histograms, magnitude_images, magnitude_scalars
from agentlab.plasticity.sparse_layer import FREE, SparseLayer, sparse_bytes
from agentlab.wrapping import LayerTargets, LayerTransform, attach_transforms, named_base_parameters


@dataclass(frozen=True)
class LotteryConfig(LayerTargets):
    """Masks found by iterative magnitude pruning, or a saved ticket trained as a fixed sparse network."""

    scope: Literal["global", "layer"] = "global"
    """rank magnitudes over all pruned layers together, or in each layer apart"""
    prune_fraction: float = 0.2
    """fraction of the remaining connections removed per round"""
    output_fraction: float = 0.1
    """fraction of the last wrapped layer's remaining connections removed per round (0 = keep it dense)"""
    ticket: str = ""
    """path of a saved ticket (.pt from `save_ticket`) to load and train as a fixed sub-network; '' = start dense"""
    name: str = "lottery"
    """module name (TensorBoard prefix plasticity/<name>/)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.prune_fraction < 1, "prune_fraction", self.prune_fraction, "in (0, 1)")
        check(0 <= self.output_fraction < 1, "output_fraction", self.output_fraction, "in [0, 1)")
        check(not self.ticket or self.ticket.endswith(".pt"), "ticket", self.ticket, "'' or a path ending in .pt")
        check(not self.ticket or Path(self.ticket).is_file(), "ticket", self.ticket, "'' or an existing ticket file")


def _k_smallest(scores: Tensor, k: int) -> Tensor:
    """Indices of the k smallest entries of a flat tensor."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.topk(scores, k, largest=False, sorted=False).indices


class Lottery(PlasticityModule):
    """A fixed connectivity mask over the wrapped layers, with IMP's prune / rewind / reinit steps."""

    def __init__(self, cfg: LotteryConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.seed = seed
        self.layers: dict[str, SparseLayer] = {}
        self.backbone: nn.Module | None = None
        self.rewind_state: dict[str, Tensor] | None = None
        self.rounds = 0

    # ------------------------------------------------------------------ building
    def attach(self, backbone: nn.Module) -> None:
        self.layers = attach_transforms(backbone, self.cfg, self.name, lambda name, base: SparseLayer(base))  # type: ignore[assignment]
        object.__setattr__(self, "backbone", backbone)  # a reference, not a submodule (the agent owns it)
        for layer in self.layers.values():
            layer.owner.fill_(0)  # dense: every connection is active
            layer.changed()
        if self.cfg.ticket:
            load_ticket(self, self.cfg.ticket)

    def layer_transforms(self) -> list[nn.Module]:
        return list(self.layers.values())

    def accounted_tensors(self) -> list[Tensor]:
        return [t for l in self.layers.values() for t in (l.weight, l.owner)]

    # ------------------------------------------------------------------ IMP steps
    def remember(self) -> None:
        """Keep every backbone parameter's current value as the rewind point."""
        assert self.backbone is not None, "attach first"
        self.rewind_state = {k: v.detach().clone() for k, v in named_base_parameters(self.backbone)}

    @torch.no_grad()
    def rewind(self) -> None:
        """Every parameter back to the rewind point; pruned connections stay 0."""
        if self.rewind_state is None:
            raise RuntimeError("rewind() before remember(): nothing to rewind to")
        for k, p in named_base_parameters(self.backbone):
            p.copy_(self.rewind_state[k])
        self._zero_pruned()

    @torch.no_grad()
    def reinit(self, seed: int) -> None:
        """The random re-initialisation control: fresh default init of every layer (same mask), from `seed`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.backbone.modules():
                if hasattr(m, "reset_parameters") and not isinstance(m, LayerTransform):
                    m.reset_parameters()
        self._zero_pruned()

    def _zero_pruned(self) -> None:
        for layer in self.layers.values():
            layer.weight.data[layer.owner == FREE] = 0.0
            layer.changed()

    @torch.no_grad()
    def prune(self, fraction: float | None = None, output_fraction: float | None = None) -> dict[str, int]:
        """Remove the smallest-|w| share of the remaining connections; returns {layer: removed}."""
        fraction = self.cfg.prune_fraction if fraction is None else fraction
        output_fraction = self.cfg.output_fraction if output_fraction is None else output_fraction
        names = list(self.layers)
        last = names[-1] if len(names) > 1 else None
        groups: list[tuple[list[str], float]]
        body = [n for n in names if n != last]
        if self.cfg.scope == "global":
            groups = [(body, fraction)]
        else:
            groups = [([n], fraction) for n in body]
        if last is not None:
            groups.append(([last], output_fraction))
        removed: dict[str, int] = {n: 0 for n in names}
        for group, frac in groups:
            flat = [self.layers[n].owner.flatten() >= 0 for n in group]
            mags = torch.cat([self.layers[n].weight.detach().flatten()[f].abs() for n, f in zip(group, flat)])
            k = int(round(frac * mags.numel()))
            drop = _k_smallest(mags, k)
            # map positions in the concatenation back to (layer, flat index)
            offsets = torch.tensor([0] + [int(f.sum()) for f in flat]).cumsum(0)
            for i, n in enumerate(group):
                sel = drop[(drop >= offsets[i]) & (drop < offsets[i + 1])] - offsets[i]
                idx = flat[i].nonzero().squeeze(1)[sel]
                self.layers[n].owner.view(-1)[idx] = FREE
                removed[n] = int(idx.numel())
        self._zero_pruned()
        self.rounds += 1
        return removed

    def remaining(self) -> float:
        """Fraction of the wrapped layers' connections still active."""
        act = sum(l.n_active() for l in self.layers.values())
        return act / sum(l.n_connections() for l in self.layers.values())

    def masks(self) -> dict[str, Tensor]:
        return {n: l.owner >= 0 for n, l in self.layers.items()}

    # ------------------------------------------------------------------ reporting
    def state_bytes(self) -> dict[int, int]:
        return {0: sum(sparse_bytes(l.n_active(), l.rows()) for l in self.layers.values())}

    def scalars(self) -> dict[str, float]:
        out = density_scalars(self.layers)
        out.update(magnitude_scalars(self.layers))
        out["remaining"] = self.remaining()
        out["rounds"] = self.rounds
        return out

    def images(self) -> dict[str, Tensor]:
        return magnitude_images(self.layers)

    def histograms(self) -> dict[str, Tensor]:
        return magnitude_histograms(self.layers)

    def get_extra_state(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        for layer in self.layers.values():
            layer.changed()


def save_ticket(module: Lottery, path: str | Path) -> Path:
    """Write the masks and the rewind values of every backbone parameter (the ticket: mask + init) to `path` (.pt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = module.rewind_state or {k: v.detach() for k, v in named_base_parameters(module.backbone)}
    torch.save({"masks": module.masks(), "values": {k: v.clone() for k, v in values.items()}, "rounds": module.rounds}, path)
    return path


def load_ticket(module: Lottery, path: str | Path) -> None:
    """Apply a saved ticket's masks and initial values to an attached module (and remember them as its rewind point)."""
    if not Path(path).is_file():
        raise ConfigError(f"lottery ticket {path} not found; write one with agentlab.plasticity.lottery.save_ticket")
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign file's pickle protocol: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors of a damaged or foreign file
        raise ConfigError(f"lottery ticket {path} cannot be read ({type(e).__name__}): not a file from save_ticket") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in ("masks", "values")):
        raise ConfigError(f"lottery ticket {path} is not a file from save_ticket (no masks and values)")
    if set(module.layers) != set(state["masks"]):
        raise ConfigError(f"ticket {path} names layers {sorted(state['masks'])}, the module wraps {sorted(module.layers)}")
    params = dict(named_base_parameters(module.backbone))
    if set(params) != set(state["values"]):
        raise ConfigError(f"ticket {path} holds parameters {sorted(state['values'])}, the backbone has {sorted(params)}")
    for k, p in params.items():
        if not isinstance(state["values"][k], torch.Tensor) or state["values"][k].shape != p.shape:
            raise ConfigError(f"ticket {path}: parameter {k} does not have the backbone's shape {tuple(p.shape)}")
    for n, layer in module.layers.items():
        m = state["masks"][n]
        if not isinstance(m, torch.Tensor) or m.shape != layer.owner.shape:
            raise ConfigError(f"ticket {path}: the mask of {n} does not have the layer's shape {tuple(layer.owner.shape)}")
    with torch.no_grad():
        for n, layer in module.layers.items():
            layer.owner.copy_(torch.where(state["masks"][n], 0, FREE).to(layer.owner.dtype))
        for k, p in params.items():
            p.copy_(state["values"][k])
    module.remember()
    module._zero_pruned()
    module.rounds = int(state.get("rounds", 0))


@register("plasticity", "lottery", LotteryConfig)
def build_lottery(cfg: LotteryConfig, env: BuildEnv) -> Lottery:
    """Lottery-ticket masks: iterative magnitude pruning with rewinding (with the `imp` learner), or a saved ticket."""
    return Lottery(cfg, seed=env.seed)
