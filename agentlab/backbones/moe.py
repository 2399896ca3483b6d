"""Expert-choice mixture of experts (Zhou et al., NeurIPS 2022): each expert chooses its tokens.

Axis legend: g routing groups (one example, or the whole batch), n tokens per group, d width,
e experts, k tokens each expert takes, h expert hidden width.

    S = softmax_e(router(x))                          (g, n, e)   a distribution over experts per token
    G, I = top-k over tokens of S^T,  k = round(n c / e)  (g, e, k)   each expert takes its k best tokens
    y[t] = sum over the experts e that took t of G[e, t] * expert_e(x[t])

The softmax runs over experts for every token (the common port bug is a softmax over the chosen
tokens instead). Every expert processes exactly k tokens, so the load is balanced by construction
(tokens processed / capacity = 1 for every expert) and no auxiliary balancing loss is needed. A
token may be taken by several experts or by none; a token no expert takes gets a zero output here,
and the residual connection around the layer carries it through unchanged (a ViT block adds the
layer's output to its input; `ResidualMoE` does the same inside an MLP). Expert choice is for
encoders: a token's routing depends on the other tokens of its group, so it cannot be causal.

Routing groups (`route_over`): "example" routes the tokens of each example among themselves (a
ViT's patches: an example's output never depends on the rest of the batch); "batch" routes all
tokens of the batch together, as Zhou et al. do (the only choice for one vector per example).

Experts live in groups, each with its own router (an `nn.Linear` whose outputs are the group's
experts' logits) and its experts (two `nn.Linear` layers each), so plasticity modules wrap every
one of them by name (`blocks.1.mlp.groups.0.router`, `blocks.1.mlp.groups.0.experts.3.fc1`).
Groups after the first are added by the `experts` plasticity module (a task's own experts);
`visible` limits routing to the first groups (the experts a task may use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from agentlab.config import check


@dataclass(frozen=True)
class MoEConfig:
    """Expert-choice mixture of experts in place of a dense MLP (Zhou et al. 2022)."""

    experts: int = 8
    """experts in the layer"""
    capacity: float = 2.0
    """capacity factor c: each expert takes k = round(tokens * c / experts) tokens; c is the mean number of experts
    per token, so a dense MLP of hidden width c * expert_hidden has the same active parameters per token"""
    hidden: int = 0
    """hidden width of each expert; 0 = the model width"""
    route_over: Literal["example", "batch", "auto"] = "auto"
    """tokens that compete for the experts: each example's own (ViT default) or the whole batch's (MLP default);
    auto = example for token sequences, batch for one vector per example"""
    every: int = 1
    """in a ViT: an MoE layer in every `every`-th block (the last block of each run of `every`), dense MLPs elsewhere"""

    def __post_init__(self) -> None:
        check(self.experts >= 1, "experts", self.experts, "an integer >= 1")
        check(0 < self.capacity <= self.experts, "capacity", self.capacity, f"in (0, experts={self.experts}]")
        check(self.hidden >= 0, "hidden", self.hidden, "an integer >= 0 (0 = the model width)")
        check(self.every >= 1, "every", self.every, "an integer >= 1")


class Expert(nn.Module):
    """One expert, and the ViT's dense MLP: Linear `fc1` (d -> h), GELU, Linear `fc2` (h -> d)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ExpertGroup(nn.Module):
    """A router (its experts' logits) and its experts."""

    def __init__(self, dim: int, n: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(dim, n)
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(n)])


class ExpertChoiceMoE(nn.Module):
    """(..., n, d) -> (..., n, d): see the module docstring. Tokens no expert takes come out as zeros."""

    def __init__(self, dim: int, cfg: MoEConfig, *, route_over: Literal["example", "batch"] = "example") -> None:
        super().__init__()
        self.dim, self.cfg = dim, cfg
        self.route_over = route_over
        self.hidden = cfg.hidden or dim
        self.groups = nn.ModuleList([ExpertGroup(dim, cfg.experts, self.hidden)])
        self.visible: int | None = None  # groups routing may use (the first `visible`); None = all
        self.last: dict[str, float] = {}
        self.last_probs: Tensor | None = None  # (g, n, e visible) router distribution of the last forward (detached)
        self.keep_probs = False  # also keep it with its graph (`probs_for_loss`), for a routing loss
        self.probs_for_loss: Tensor | None = None
        self.usage: Tensor | None = None  # (e, n) how often each expert took the token at each position
        self.usage_groups = 0

    # ------------------------------------------------------------------ structure
    def add_group(self, n: int, hidden: int = 0, *, generator: torch.Generator | None = None) -> ExpertGroup:
        """Append a group of `n` experts (and their router), initialised like the first group, from `generator`."""
        group = ExpertGroup(self.dim, n, hidden or self.hidden)
        if generator is not None:
            for m in group.modules():
                if isinstance(m, nn.Linear):
                    bound = 1 / math.sqrt(m.in_features)  # nn.Linear's default init, drawn from a private generator
                    with torch.no_grad():
                        m.weight.uniform_(-bound, bound, generator=generator)
                        m.bias.uniform_(-bound, bound, generator=generator)
        ref = self.groups[0].router.weight
        self.groups.append(group.to(device=ref.device, dtype=ref.dtype))
        return group

    def n_visible_groups(self) -> int:
        return len(self.groups) if self.visible is None else min(self.visible, len(self.groups))

    def experts(self, groups: int | None = None) -> list[nn.Module]:
        """The experts of the first `groups` groups (default: the visible ones), in routing order."""
        g = self.n_visible_groups() if groups is None else groups
        return [e for grp in list(self.groups)[:g] for e in grp.experts]

    def group_sizes(self) -> list[int]:
        return [len(g.experts) for g in self.groups]

    def capacity_k(self, n: int, e: int) -> int:
        """Tokens each expert takes from a group of `n` tokens among `e` experts: round(n c / e), at least 1."""
        return max(1, min(n, round(n * self.cfg.capacity / e)))

    # ------------------------------------------------------------------ computing
    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if self.route_over == "batch" or x.dim() == 2:
            xg = rearrange(x, "... d -> 1 (...) d")  # (1, all tokens, d)
        else:
            xg = rearrange(x, "... n d -> (...) n d")  # (g, n, d)
        g, n, d = xg.shape
        groups = list(self.groups)[: self.n_visible_groups()]
        experts = [ex for grp in groups for ex in grp.experts]
        e = len(experts)
        logits = torch.cat([grp.router(xg) for grp in groups], dim=-1)  # (g, n, e)
        probs = logits.softmax(dim=-1)  # over experts, for every token
        k = self.capacity_k(n, e)
        gates, index = torch.topk(rearrange(probs, "g n e -> g e n"), k, dim=-1)  # (g, e, k): each expert's tokens
        picked = torch.gather(xg, 1, repeat(index, "g e k -> g (e k) d", d=d))  # (g, e*k, d)
        picked = rearrange(picked, "g (e k) d -> e (g k) d", e=e)
        outs = torch.stack([ex(picked[i]) for i, ex in enumerate(experts)])  # (e, g*k, d)
        weighted = rearrange(outs, "e (g k) d -> g (e k) d", g=g) * rearrange(gates, "g e k -> g (e k) 1")
        y = torch.zeros_like(xg).scatter_add(1, repeat(index, "g e k -> g (e k) d", d=d), weighted)  # (g, n, d)
        self.last_probs = probs.detach()
        self.probs_for_loss = probs if self.keep_probs and probs.requires_grad else None
        self._record(probs, index, n, k)
        return y.reshape(shape)

    @torch.no_grad()
    def _record(self, probs: Tensor, index: Tensor, n: int, k: int) -> None:
        """Routing figures of this forward (and usage per expert and position since `reset_usage`)."""
        g, e = index.shape[0], index.shape[1]
        taken = torch.zeros(g, e, n, device=index.device).scatter_(2, index, 1.0)  # (g, e, n) 1 where e took token
        per_token = taken.sum(1)  # (g, n) experts per token
        processed = taken.sum((0, 2))  # (e,) tokens each expert processed
        p = probs.detach().float()
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        self.last = {
            "tokens_per_expert": float(processed.mean() / g),
            "max_load_ratio": float(processed.max() / (g * k)),  # tokens processed / capacity: 1 by construction
            "dropped_token_share": float((per_token == 0).float().mean()),
            "experts_per_token": float(per_token.mean()),
            "router_entropy": float(entropy),
            "router_entropy_max": math.log(e),
            "experts": float(e),
            "capacity_k": float(k),
        }
        if self.route_over == "example":
            use = taken.sum(0)  # (e, n)
            if self.usage is None or self.usage.shape != use.shape:
                self.usage, self.usage_groups = torch.zeros_like(use), 0
            self.usage += use
            self.usage_groups += g

    def reset_usage(self) -> None:
        self.usage, self.usage_groups = None, 0

    def usage_share(self) -> Tensor | None:
        """(e, n): the share of examples in which each expert took the token at each position, since `reset_usage`."""
        if self.usage is None or not self.usage_groups:
            return None
        return (self.usage / self.usage_groups).cpu()

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool, missing_keys: list,
                              unexpected_keys: list, error_msgs: list) -> None:
        # A freshly built layer has the first group only: grow the groups a checkpoint names (a task's experts).
        head = prefix + "groups."
        found: dict[int, tuple[int, int]] = {}
        for key, value in state_dict.items():
            if key.startswith(head) and key.endswith(".router.weight"):
                i = int(key[len(head):].split(".", 1)[0])
                hidden = state_dict[f"{head}{i}.experts.0.fc1.weight"].shape[0]
                found[i] = (value.shape[0], hidden)
        for i in sorted(found):
            if i >= len(self.groups):
                n, hidden = found[i]
                for p in self.add_group(n, hidden).parameters():
                    p.requires_grad_(False)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class ResidualMoE(nn.Module):
    """`x + moe(x)`: an MoE layer inside a backbone without a residual stream of its own (an MLP's hidden layer),
    so tokens no expert takes pass through unchanged."""

    def __init__(self, dim: int, cfg: MoEConfig, *, route_over: Literal["example", "batch"] = "batch") -> None:
        super().__init__()
        self.moe = ExpertChoiceMoE(dim, cfg, route_over=route_over)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.moe(x)


def moe_layers(module: nn.Module) -> list[tuple[str, ExpertChoiceMoE]]:
    """(name, layer) of every expert-choice MoE layer in `module`, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, ExpertChoiceMoE)]


def moe_scalars(module: nn.Module) -> dict[str, float]:
    """Routing figures of the last forward of every MoE layer (`<layer>/<figure>`) and their means and maxima
    over layers (`moe/<figure>`; `moe/max_load_ratio` is the maximum)."""
    out: dict[str, float] = {}
    layers = [(n, m) for n, m in moe_layers(module) if m.last]
    for n, m in layers:
        out.update({f"{n}/{k}": v for k, v in m.last.items()})
    if layers:
        for key in ("tokens_per_expert", "dropped_token_share", "experts_per_token", "router_entropy"):
            out[f"moe/{key}"] = sum(m.last[key] for _, m in layers) / len(layers)
        out["moe/max_load_ratio"] = max(m.last["max_load_ratio"] for _, m in layers)
    return out


def usage_image(module: nn.Module, title: str = "expert utilisation") -> Any:
    """Heat-map (H, W, 3) uint8 of every MoE layer's usage since `reset_usage`: a row per expert (layers stacked),
    a column per token position, the share of examples in which the expert took that token; None without usage."""
    import numpy as np

    from agentlab.tblog import heatmap_image

    rows = [m.usage_share() for _, m in moe_layers(module)]
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    n = max(r.shape[1] for r in rows)
    mat = np.concatenate([np.pad(r.numpy(), ((0, 0), (0, n - r.shape[1])), constant_values=np.nan) for r in rows])
    return heatmap_image(mat, title=title, xlabel="token position (0 = class token)", ylabel="expert (layers stacked)")
