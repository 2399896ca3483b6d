"""Experts for continual learning: every task gets its own experts in the backbone's expert-choice MoE layers.

How it composes: a module attachment, not a `LayerTransform`. A transform changes one Linear's
weight; this module changes which experts an MoE layer (`agentlab.backbones.moe.ExpertChoiceMoE`)
routes over. It finds the MoE layers `layers` / `exclude` choose (fnmatch over module names, like
every plasticity module), adds expert groups to them and sets how many groups each task sees. The
experts it adds are ordinary Linear layers inside the backbone, so plasticity modules listed
*after* it (which wrap layers when the agent is built) wrap the built experts only, and a module
listed before it sees the added ones as parameters of the backbone.

    first task      trains the whole backbone, the layer's own experts (group 0) included
    task t > first  a new group per MoE layer: `per_task` experts and their router (the router
                    extended by `per_task` logits); everything else is frozen (`freeze_base`)
    task t's view   groups 0 .. g(t): the old experts (frozen) and its own; the softmax over
                    experts runs over exactly these, so a later task's experts never reach an
                    earlier task's tokens: task t's outputs cannot change once it is trained
    no task / a task never trained    group 0 only (the backbone as built)

Without a task label the task is inferred (`infer`): "entropy", the task whose view gives the
lowest output entropy (SupSup's rule, Wortsman et al. 2020), or "router", the task whose experts
receive the most router probability with every group visible (averaged over tokens and layers);
`router_loss` trains a new task's router logits to claim its tokens from the older groups
(cross-entropy of the router mass per group against the task's group), which "router" needs.

Figures (`plasticity/<name>/...`): the routing figures of the last forward (tokens per expert,
max load ratio, dropped token share, experts per token, router entropy), experts per layer, and
the image `expert_usage`, which expert took which token position during the task (reset at task start).
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from agentlab.backbones.moe import ExpertChoiceMoE, moe_scalars, usage_image
from agentlab.config import check
from agentlab.protocols import PlasticityModule, tensor_bytes
from agentlab.registry import BuildEnv, register
from agentlab.wrapping import CompositionError, LayerTargets, freeze_base


@dataclass(frozen=True)
class ExpertsConfig(LayerTargets):
    """New experts per task in the backbone's expert-choice MoE layers; old experts frozen, the router extended."""

    per_task: int = 2
    """experts added to every chosen MoE layer for each task after the first"""
    hidden: int = 0
    """hidden width of the added experts; 0 = that of the layer's own experts"""
    infer: Literal["entropy", "router", "none"] = "entropy"
    """without a task label: the task whose experts give the lowest output entropy, the task whose experts get the
    most router probability, or no inference"""
    router_loss: float = 0.0
    """weight of the loss that trains a new task's router logits to claim its tokens from older groups (0 = none)"""
    seed: int = 0
    """seed of the added experts' initialisation (a private generator per task and layer)"""
    name: str = "experts"
    """module name (TensorBoard prefix plasticity/<name>/)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.per_task >= 1, "per_task", self.per_task, "an integer >= 1")
        check(self.hidden >= 0, "hidden", self.hidden, "an integer >= 0 (0 = the layer's expert width)")
        check(self.router_loss >= 0, "router_loss", self.router_loss, "a number >= 0")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")


def select_moe_layers(backbone: nn.Module, targets: LayerTargets, owner: str) -> list[tuple[str, ExpertChoiceMoE]]:
    """The MoE layers `targets` choose, in module order; a `CompositionError` naming `owner` when there is none."""
    found = [(n, m) for n, m in backbone.named_modules() if isinstance(m, ExpertChoiceMoE)]
    keep = [(n, m) for n, m in found if any(fnmatch.fnmatchcase(n, p) for p in targets.layers)
            and not any(fnmatch.fnmatchcase(n, p) for p in targets.exclude)]
    if not keep:
        raise CompositionError(
            f"{owner}.layers={list(targets.layers)} (exclude={list(targets.exclude)}) matches no expert-choice MoE layer of "
            f"the backbone ({', '.join(n for n, _ in found) or 'it has none'}); {owner} needs a backbone with MoE layers: "
            "vit with a `moe` table, or mlp with `moe`"
        )
    return keep


class Experts(PlasticityModule):
    """See the module docstring."""

    def __init__(self, cfg: ExpertsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.layers: list[tuple[str, ExpertChoiceMoE]] = []
        self.views: dict[int, int] = {}  # task id -> groups it sees (its own group is the last of them)
        self.base_task: int | None = None  # the task that trained the backbone (group 0)
        self.task: int | None = None  # the task set now
        self.training_task: int | None = None
        self.enabled = True
        object.__setattr__(self, "_backbone", None)

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        object.__setattr__(self, "_backbone", backbone)  # a reference: the agent owns the backbone
        self.layers = select_moe_layers(backbone, self.cfg, self.name)
        self._route()

    def _route(self) -> None:
        """Set every layer's visible groups for the current task (group 0 only without one, or disabled)."""
        groups = self.views.get(self.task, 1) if (self.enabled and self.task is not None) else 1
        for _, layer in self.layers:
            layer.visible = groups
            layer.keep_probs = self.cfg.router_loss > 0

    def own_groups(self) -> dict[int, int]:
        """Task id -> index of the group it added (tasks after the first)."""
        return {t: g - 1 for t, g in self.views.items() if t != self.base_task}

    def _group_parameters(self, index: int) -> list[nn.Parameter]:
        return [p for _, layer in self.layers for p in layer.groups[index].parameters()]

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside, every MoE layer routes over its own experts only (the backbone as built)."""
        old, self.enabled = self.enabled, False
        self._route()
        try:
            yield
        finally:
            self.enabled = old
            self._route()

    # ------------------------------------------------------------------ task hooks
    def on_task_start(self, task: Any) -> None:
        t = int(task.id)
        backbone = self._backbone
        assert backbone is not None, "attach() first"
        if self.base_task is None or t == self.base_task:
            self.base_task = t  # the backbone's phase: everything trains, group 0 is this task's
            self.views[t] = 1
        else:
            if t not in self.views:
                index = len(self.layers[0][1].groups)
                for i, (_, layer) in enumerate(self.layers):
                    g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 1009 * t + i)
                    layer.add_group(self.cfg.per_task, self.cfg.hidden, generator=g)
                self.views[t] = index + 1
            own = self._group_parameters(self.views[t] - 1)
            freeze_base(backbone, keep=own)  # old experts, old routers and every shared layer are fixed
            for p in own:
                p.requires_grad_(True)
        self.training_task = t
        for _, layer in self.layers:
            layer.reset_usage()
        self.set_task(t)

    def on_task_end(self, task: Any) -> None:
        t = int(task.id)
        if t != self.base_task and t in self.views:
            for p in self._group_parameters(self.views[t] - 1):
                p.requires_grad_(False)
        self.training_task = None

    def set_task(self, task_id: int | None) -> None:
        self.task = None if task_id is None else int(task_id)
        self._route()

    # ------------------------------------------------------------------ routing loss and task inference
    def extra_loss(self, batch: Any, output: Tensor) -> dict[str, Tensor]:
        t = self.training_task
        if not self.cfg.router_loss or t is None or t == self.base_task or self.task != t:
            return {}
        terms = []
        for _, layer in self.layers:
            probs, layer.probs_for_loss = layer.probs_for_loss, None
            if probs is None or probs.shape[-1] != sum(layer.group_sizes()[: self.views[t]]):
                continue  # no forward of the training task's view since the last loss (a replayed task's was last)
            mass = self._group_mass(layer, probs, self.views[t])[..., -1]  # (g, n) router mass on the task's own group
            terms.append(-mass.clamp_min(1e-9).log().mean())
        return {"router": self.cfg.router_loss * torch.stack(terms).mean()} if terms else {}

    def after_step(self, step: int) -> None:
        t = self.training_task
        if t is not None and t != self.base_task and not all(p.requires_grad for p in self._group_parameters(self.views[t] - 1)):
            raise CompositionError(
                f"{self.name}: the experts of task {t} were frozen by a plasticity module listed after {self.name!r} "
                f"(a module that freezes the backbone when a task starts: an adapter, supsup, fnnsp); list {self.name!r} "
                "after it")

    @staticmethod
    def _group_mass(layer: ExpertChoiceMoE, probs: Tensor, groups: int) -> Tensor:
        """(..., groups): router probability summed over each group's experts."""
        sizes = layer.group_sizes()[:groups]
        return torch.stack([chunk.sum(-1) for chunk in probs.split(sizes, dim=-1)], dim=-1)

    def candidates(self) -> list[int]:
        return sorted(self.views, key=lambda t: self.views[t])

    @torch.no_grad()
    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None:
        tasks = self.candidates()
        if self.cfg.infer == "none" or not tasks:
            return None
        ids = torch.tensor(tasks, device=x.device)
        if len(tasks) == 1:
            return ids.expand(x.shape[0]).clone()
        old = self.task
        try:
            if self.cfg.infer == "entropy":
                from agentlab.plasticity.task_inference import output_entropy

                cols = []
                for t in tasks:
                    self.set_task(t)
                    cols.append(output_entropy(forward(x)))
                return ids[torch.stack(cols, 1).argmin(1)]
            self.set_task(tasks[-1])  # every group visible
            forward(x)
            score = 0.0
            for _, layer in self.layers:
                mass = self._group_mass(layer, layer.last_probs, self.views[tasks[-1]])  # (b, n, groups)
                score = score + mass.mean(1)
            order = [self.views[t] - 1 for t in tasks]
            return ids[score[:, order].argmax(1)]
        finally:
            self.set_task(old)

    # ------------------------------------------------------------------ accounting and figures
    def state_bytes(self) -> dict[int, int]:
        return {t: tensor_bytes(self._group_parameters(g)) for t, g in self.own_groups().items()}

    def accounted_tensors(self) -> list[Tensor]:
        return [p for g in self.own_groups().values() for p in self._group_parameters(g)]

    def scalars(self) -> dict[str, float]:
        out = {k[len("moe/"):]: v for k, v in moe_scalars(self._backbone).items() if k.startswith("moe/")} if self._backbone else {}
        if self.layers:
            out["experts_per_layer"] = float(sum(self.layers[0][1].group_sizes()))
        out["tasks"] = float(len(self.views))
        return out

    def images(self) -> dict[str, Tensor]:
        img = usage_image(self._backbone, title=f"expert utilisation, task {self.task}") if self._backbone is not None else None
        return {} if img is None else {"expert_usage": torch.from_numpy(img).permute(2, 0, 1).float() / 255}

    def get_extra_state(self) -> dict[str, Any]:
        return {"views": {str(k): v for k, v in self.views.items()}, "base_task": self.base_task}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.views = {int(k): int(v) for k, v in state.get("views", {}).items()}
        self.base_task = state.get("base_task")
        self._route()


@register("plasticity", "experts", ExpertsConfig)
def build_experts(cfg: ExpertsConfig, env: BuildEnv) -> Experts:
    """Per-task experts in expert-choice MoE layers: new experts per task, old ones frozen, the router extended."""
    return Experts(cfg)
