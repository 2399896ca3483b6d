"""SET: sparse evolutionary training (Mocanu et al., Nature Communications 2018), and its frozen-and-grow form for task streams.

Each wrapped layer starts as an Erdos-Renyi random graph of density
eps (n_in + n_out) / (n_in n_out); after every epoch (or every N steps) the
fraction zeta of its weights nearest zero is removed (positive and negative
apart) and as many connections are grown at random empty positions, so the
number of active connections stays constant while the topology evolves. Flags:
`regrowth = "gradient"` grows where |dL/dw| is largest (RigL, Evci et al. 2020)
and `zeta_schedule = "cosine"` anneals zeta to 0.

For task streams, `freeze_per_task = true`: each task owns the connections it
grew; at the task's end they are frozen, and the next task grows only into the
still-free positions while reading through the frozen ones (task-incremental:
evaluation on task j uses the connections of tasks 0..j, so nothing is forgotten).
Biases are trained on the first task only. In the last wrapped layer a task grows
only into the rows of its own classes when the task names them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.protocols import PlasticityModule
from agentlab.registry import BuildEnv, register
from agentlab.plasticity.rewire import cosine_zeta, prune_nearest_zero, regrow_gradient, regrow_random
from agentlab.plasticity.sparse_figures import density_scalars, magnitude_histograms, magnitude_images, magnitude_scalars
from agentlab.plasticity.sparse_layer import FREE, SparseLayer, erdos_renyi_density, put_flat_, random_positions, sparse_bytes
from agentlab.wrapping import LayerTargets, attach_transforms


@dataclass(frozen=True)
class SETConfig(LayerTargets):
    """Sparse evolutionary training of the backbone's Linear/Conv2d layers."""

    epsilon: float = 20.0
    """Erdos-Renyi sparsity parameter: density = eps (n_in + n_out) / (n_in n_out), per task in frozen-and-grow mode"""
    zeta: float = 0.3
    """fraction of each layer's trainable connections removed (and regrown) per rewiring"""
    rewire_every: int = 0
    """rewire every this many optimiser steps; 0 = between epochs (after every epoch but a task's last)"""
    regrowth: Literal["random", "gradient"] = "random"
    """where connections regrow: uniformly at random (SET) or where |gradient| is largest (RigL)"""
    zeta_schedule: Literal["constant", "cosine"] = "constant"
    """constant zeta (SET) or cosine-annealed to 0 over `zeta_decay_rewirings` rewirings (RigL)"""
    zeta_decay_rewirings: int = 100
    """rewirings over which the cosine schedule decays zeta to 0 (counted per task)"""
    regrow_init: Literal["zero", "random"] = "zero"
    """value of a regrown connection: 0 (RigL) or small random (SET)"""
    freeze_per_task: bool = False
    """task streams: freeze each task's connections at its end and grow later tasks into free capacity"""
    max_task_density: float = 1.0
    """frozen-and-grow: at most this share of a layer's positions per task (leaves room for later tasks)"""
    rows_by_class: bool = True
    """frozen-and-grow: in the last wrapped layer, a task grows only into its own classes' rows"""
    sparse_kernels: bool = True
    """CPU: compute a Linear layer SET wraps alone on CSR storage (same outputs and gradients); false = the masked dense product"""
    name: str = "set"
    """module name (TensorBoard prefix plasticity/<name>/)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.epsilon > 0, "epsilon", self.epsilon, "a number > 0")
        check(0 <= self.zeta < 1, "zeta", self.zeta, "in [0, 1)")
        check(self.rewire_every >= 0, "rewire_every", self.rewire_every, "an integer >= 0")
        check(self.zeta_decay_rewirings >= 1, "zeta_decay_rewirings", self.zeta_decay_rewirings, "an integer >= 1")
        check(0 < self.max_task_density <= 1, "max_task_density", self.max_task_density, "in (0, 1]")


def sparse_init_(weight: Tensor, positions: Tensor, density: float, generator: torch.Generator) -> None:
    """Draw new connections' values U(-b, b), b = 1 / sqrt(density * fan_in).

    PyTorch's default Linear bound is 1/sqrt(fan_in); dividing the fan-in by the
    density keeps each unit's pre-activation variance what it is in the dense
    network (Evci et al. 2022, "Gradient flow in sparse neural networks").
    """
    fan_in = math.prod(weight.shape[1:])
    bound = 1.0 / math.sqrt(max(density * fan_in, 1.0))
    vals = (torch.rand(positions.numel(), generator=generator) * 2 - 1) * bound
    with torch.no_grad():
        put_flat_(weight, positions, vals.to(weight.device, weight.dtype))


class SET(PlasticityModule):
    """SET rewiring over the wrapped layers; see the module docstring. Layers live in the backbone."""

    def __init__(self, cfg: SETConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.generator = torch.Generator().manual_seed(seed + 7919)  # private: rewiring never moves the global RNG
        self.layers: dict[str, SparseLayer] = {}  # not registered here: they are parts of the backbone
        self.task: int | None = None
        self.rewirings = 0  # in the current task (the cosine schedule restarts per task)
        self.steps = 0
        self.rewire_log: list[dict[str, Any]] = []  # one entry per rewiring, for TensorBoard
        self.last_counts: dict[str, tuple[int, int]] = {}
        self._region: dict[str, Tensor | None] = {}
        self._epoch_ended = False

    # ------------------------------------------------------------------ building
    def attach(self, backbone: nn.Module) -> None:
        make = lambda name, base: SparseLayer(base, freeze_per_task=self.cfg.freeze_per_task, rewires=self.cfg.zeta > 0,  # noqa: E731
                                              sparse_kernels=self.cfg.sparse_kernels)
        self.layers = attach_transforms(backbone, self.cfg, self.name, make)  # type: ignore[assignment]
        for layer in self.layers.values():
            layer.keep_grad = self.cfg.regrowth == "gradient"
            with torch.no_grad():
                layer.weight.zero_()  # empty positions hold 0; connections get values when they are grown
        if not self.cfg.freeze_per_task:
            for name in self.layers:
                self._allocate(name, 0, None)

    def layer_transforms(self) -> list[nn.Module]:
        return list(self.layers.values())

    def accounted_tensors(self) -> list[Tensor]:
        """Tensors the ledger should count as this module's (their sparse form is in `state_bytes`)."""
        return [t for l in self.layers.values() for t in (l.weight, l.owner)]

    def _density(self, layer: SparseLayer) -> float:
        d = erdos_renyi_density(tuple(layer.owner.shape), self.cfg.epsilon)
        return min(d, self.cfg.max_task_density) if self.cfg.freeze_per_task else d

    def _allocate(self, name: str, task: int, region: Tensor | None) -> None:
        """Grow task `task`'s initial Erdos-Renyi connections at random free positions of `region`."""
        layer = self.layers[name]
        free = layer.owner == FREE
        if region is not None:
            free &= region
        n = round(self._density(layer) * layer.n_connections())
        pos = random_positions(free, n, self.generator)
        layer.owner.view(-1)[pos] = task
        sparse_init_(layer.weight, pos, max(self._density(layer), 1e-6), self.generator)
        layer.changed()

    def _class_rows(self, name: str, classes: Any) -> Tensor | None:
        last = list(self.layers)[-1]
        layer = self.layers[name]
        if not (self.cfg.rows_by_class and name == last and classes is not None):
            return None
        region = torch.zeros_like(layer.owner, dtype=torch.bool)
        region[list(classes)] = True
        return region

    # ------------------------------------------------------------------ task hooks
    def on_task_start(self, task: Any) -> None:
        self.task, self.rewirings = task.id, 0
        if not self.cfg.freeze_per_task:
            return
        for name, layer in self.layers.items():
            layer.train_task = task.id
            layer.changed()
            self._region[name] = self._class_rows(name, task.classes)
            if layer.base_layer.bias is not None:
                layer.base_layer.bias.requires_grad_(task.id == 0)  # biases are shared: trained by the first task only
            if layer.n_active(task.id) == 0:
                self._allocate(name, task.id, self._region[name])

    def on_task_end(self, task: Any) -> None:
        self._epoch_ended = False
        for layer in self.layers.values():
            layer.train_task = None  # its connections are now frozen (owner == task.id < every later task)
            layer.dense_grad = None

    def set_task(self, task_id: int | None) -> None:
        for layer in self.layers.values():
            layer.view = task_id if self.cfg.freeze_per_task else None

    def after_step(self, step: int) -> None:
        self.steps += 1
        if self.cfg.rewire_every and self.steps % self.cfg.rewire_every == 0:
            self.rewire()
        elif self._epoch_ended:
            # Per-epoch rewiring happens after the first step of the next epoch, so the last epoch of a task is
            # never followed by one (SET's reference code skips the last epoch: regrown connections would be untrained).
            self._epoch_ended = False
            self.rewire()

    def after_epoch(self, epoch: int) -> None:
        if not self.cfg.rewire_every:
            self._epoch_ended = True

    # ------------------------------------------------------------------ rewiring
    def zeta_now(self) -> float:
        if self.cfg.zeta_schedule == "cosine":
            return cosine_zeta(self.cfg.zeta, self.rewirings, self.cfg.zeta_decay_rewirings)
        return self.cfg.zeta

    @torch.no_grad()
    def rewire(self) -> dict[str, tuple[int, int]]:
        """Remove the fraction zeta nearest zero of each layer's trainable connections and regrow as many.

        Returns {layer: (pruned, regrown)}.
        """
        zeta = self.zeta_now()
        task = self.task if (self.cfg.freeze_per_task and self.task is not None) else 0
        counts: dict[str, tuple[int, int]] = {}
        for name, layer in self.layers.items():
            owner, w = layer.owner, layer.weight
            mine = owner == task
            free = owner == FREE
            region = self._region.get(name) if self.cfg.freeze_per_task else None
            if region is not None:
                free &= region
            # Regrowth goes to positions that were empty before this pruning (as RigL), so a layer
            # with fewer free positions than zeta * active (a dense output layer) rewires less or not at all.
            n_mine, n_free = int(mine.sum()), int(free.sum())
            z = min(zeta, n_free / n_mine) if n_mine else 0.0
            removed = prune_nearest_zero(w, mine, z)
            n = int(removed.sum())
            owner[removed] = FREE
            w[removed] = 0.0
            if self.cfg.regrowth == "gradient" and layer.dense_grad is not None:
                grown = regrow_gradient(free, layer.dense_grad, n)
            else:
                grown = regrow_random(free, n, self.generator)
            owner.view(-1)[grown] = task
            if self.cfg.regrow_init == "random":
                sparse_init_(w, grown, max(layer.density(), 1e-6), self.generator)
            else:
                put_flat_(w, grown, 0.0)
            layer.changed()
            counts[name] = (n, int(grown.numel()))
        self.rewirings += 1
        self.last_counts = counts
        self.rewire_log.append({"step": self.steps, "task": task, "zeta": zeta, "counts": counts})
        return counts

    # ------------------------------------------------------------------ reporting
    def capacity(self) -> dict[int, float]:
        """Share of all wrapped positions each task owns."""
        total = sum(l.n_connections() for l in self.layers.values())
        tasks = sorted({int(t) for l in self.layers.values() for t in torch.unique(l.owner).tolist() if t >= 0})
        return {t: sum(l.n_active(t) for l in self.layers.values()) / total for t in tasks}

    def state_bytes(self) -> dict[int, int]:
        """Per task: its connections as CSR (float32 values, int32 columns, int32 row pointers) per layer."""
        tasks = self.capacity()
        return {t: sum(sparse_bytes(l.n_active(t), l.rows()) for l in self.layers.values()) for t in tasks}

    def scalars(self) -> dict[str, float]:
        out = density_scalars(self.layers)
        out.update(magnitude_scalars(self.layers))
        for name, (p, g) in self.last_counts.items():
            out[f"pruned/{name}"] = p
            out[f"regrown/{name}"] = g
        out["zeta"] = self.zeta_now()
        out["rewirings"] = len(self.rewire_log)
        cap = self.capacity()
        for t, c in cap.items():
            out[f"capacity/task_{t:03d}"] = c
        out["capacity/free"] = 1.0 - sum(cap.values())
        return out

    def images(self) -> dict[str, Tensor]:
        return magnitude_images(self.layers)

    def histograms(self) -> dict[str, Tensor]:
        return magnitude_histograms(self.layers)

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "steps": self.steps, "rewirings": self.rewirings}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self.steps, self.rewirings = int(state["steps"]), int(state["rewirings"])
        for layer in self.layers.values():
            layer.changed()

    # ------------------------------------------------------------------ exact forgetting
    def forget_task(self, task_id: int) -> int:
        """Frozen-and-grow: the task's connections go back to the pool of free positions (value 0). Refused when
        the connections are not the task's alone: one shared sub-network, biases the task trained (the first task
        trains them), or later tasks that compute through them (task j reads the connections of tasks 0..j)."""
        if not self.cfg.freeze_per_task:
            raise CannotForget(f"{self.name}: one sparse sub-network is shared by every task (freeze_per_task = false)")
        freed = self.state_bytes().get(task_id, 0)
        if not freed:
            return 0
        if task_id == 0 and any(l.base_layer.bias is not None for l in self.layers.values()):
            raise CannotForget(f"{self.name}: task 0 trained the biases every later task shares")
        later = sorted({int(t) for l in self.layers.values() for t in torch.unique(l.owner).tolist() if t > task_id})
        if later:
            raise CannotForget(f"{self.name}: tasks {later} compute through task {task_id}'s frozen connections "
                               "(frozen-and-grow: task j reads the connections of tasks 0..j)")
        with torch.no_grad():
            for layer in self.layers.values():
                mine = layer.owner == task_id
                layer.owner[mine] = FREE
                layer.weight[mine] = 0.0
                layer.changed()
        return freed


@register("plasticity", "set", SETConfig)
def build_set(cfg: SETConfig, env: BuildEnv) -> SET:
    """SET: Erdos-Renyi sparse layers rewired by magnitude (optionally frozen-and-grow per task)."""
    return SET(cfg, seed=env.seed)
