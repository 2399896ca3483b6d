"""Per-task adapters on `nn.Linear` layers: the shared wrapper, state keyed by task id, freezing, merging.

Every adapter method here (LoRA, NOLA, PRANC, MCNC) changes the targeted
linear layers by a per-task weight delta, `W_t = W + dW_t`:

    AdaptedLinear(x) = base_layer(x) + delta_t(x)

The wrapper keeps the original layer as `base_layer` (PEFT style) and holds no
adapter parameters itself: they live in the plasticity module, one
`nn.ParameterDict` per task under `tasks[str(task_id)]`, so that

* the backbone's parameters are exactly the shared model (freezing it is one loop);
* deleting a task (`forget`) removes every trace of it: nothing else changes;
* training task B touches no tensor of task A (B's parameters are separate and A's are frozen).

Tasks whose `meta["population"]` is true train the shared backbone instead
(adapters off): that is how the population model is pre-trained in the same loop.
Subclasses implement `new_task_state` and `delta_weight` (and may override
`layer_delta` with a cheaper low-rank product).
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import ConfigError, check
from agentlab.layers import replace_layer
from agentlab.protocols import PlasticityModule, tensor_bytes


@dataclass(frozen=True)
class AdapterConfig:
    """What every adapter takes: which linear layers it targets, its seed, whether it identifies tasks."""

    target_modules: list[str] = field(default_factory=lambda: ["cond", "action_head", "time_head", "error_head"])
    """fnmatch patterns over the backbone's module names (e.g. "blocks.*.ff.2"); every matching nn.Linear is adapted"""
    seed: int = 0
    """seed of initialisations and random bases (private generators; the global RNG is never used)"""
    identify: bool = True
    """without a task label, infer the task as the one whose adapter gives the input the highest likelihood
    (needs a backbone with `log_likelihood(x, out)`; the fingerprint of a person)"""
    name: str = ""
    """module name in logs and the ledger; '' = the method's name"""

    def __post_init__(self) -> None:
        check(len(self.target_modules) >= 1, "target_modules", self.target_modules, "a non-empty list of patterns")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")


def is_population_task(task: Any) -> bool:
    """A task that trains the shared model rather than a per-task adapter."""
    return bool(getattr(task, "meta", {}).get("population", False))


class AdaptedLinear(nn.Module):
    """`base_layer(x) + owner.delta(index, x)`; the owner is referenced, not registered (its parameters stay its own)."""

    def __init__(self, base_layer: nn.Linear, owner: "AdapterModule", index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        object.__setattr__(self, "_owner", owner)

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        d = self._owner.delta(self.index, x)
        return y if d is None else y + d

    def extra_repr(self) -> str:
        return f"adapter={self._owner.name}, index={self.index}"



class AdapterModule(PlasticityModule):
    """Base of the per-task adapters; see the module docstring."""

    method = "adapter"

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name or self.method
        self.tasks = nn.ModuleDict()
        self.targets: list[tuple[str, int, int]] = []  # (module name, in_features, out_features)
        self.active: str | None = None
        self.enabled = True
        self.merged: str | None = None
        self._cache: dict[tuple[str, int], tuple[tuple[int, ...], Tensor]] = {}
        object.__setattr__(self, "_backbone", None)

    # ------------------------------------------------------------------ subclass API
    def new_task_state(self, task_id: int) -> nn.ParameterDict:
        """The trainable parameters of a new task, initialised so that every delta is exactly zero."""
        raise NotImplementedError

    def delta_weight(self, state: nn.ParameterDict, index: int) -> Tensor:
        """dW (out, in) of target layer `index` for a task's `state`."""
        raise NotImplementedError

    def layer_delta(self, state: nn.ParameterDict, index: int, x: Tensor) -> Tensor:
        """delta(x) = x dW^T for target `index`; dense deltas are cached while no gradient is needed."""
        if torch.is_grad_enabled():
            return F.linear(x, self.delta_weight(state, index))
        key = (self.active or "", index)
        version = tuple(p._version for p in state.values())
        hit = self._cache.get(key)
        if hit is None or hit[0] != version:
            hit = (version, self.delta_weight(state, index).detach())
            self._cache[key] = hit
        return F.linear(x, hit[1])

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        object.__setattr__(self, "_backbone", backbone)
        linear = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
        names = [n for n in linear if any(fnmatch.fnmatchcase(n, p) for p in self.cfg.target_modules)]
        if not names:
            raise ConfigError(
                f"target_modules={self.cfg.target_modules!r} match no nn.Linear of the backbone; its linear layers: {', '.join(linear)}"
            )
        for i, n in enumerate(names):
            lin = backbone.get_submodule(n)
            replace_layer(backbone, n, AdaptedLinear(lin, self, i))
            self.targets.append((n, lin.in_features, lin.out_features))
        self.on_attached()

    def on_attached(self) -> None:
        """Called once the targets are known (fixed generators are built here)."""

    def wrapped(self) -> list[AdaptedLinear]:
        assert self._backbone is not None, "attach() first"
        return [m for m in self._backbone.modules() if isinstance(m, AdaptedLinear) and m._owner is self]

    def people(self) -> list[int]:
        """Task ids that have an adapter."""
        return [int(k) for k in self.tasks]

    # ------------------------------------------------------------------ hooks
    def on_task_start(self, task: Any) -> None:
        backbone = self._backbone
        assert backbone is not None, "attach() first"
        if is_population_task(task):
            self.active = None
            for p in backbone.parameters():
                p.requires_grad_(True)
            for p in self.tasks.parameters():
                p.requires_grad_(False)
            return
        key = str(task.id)
        if key not in self.tasks:
            self.tasks[key] = self.new_task_state(task.id)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for k, state in self.tasks.items():
            for p in state.values():
                p.requires_grad_(k == key)
        self.active = key

    def on_task_end(self, task: Any) -> None:
        key = str(task.id)
        if key in self.tasks:
            for p in self.tasks[key].values():
                p.requires_grad_(False)

    def set_task(self, task_id: int | None) -> None:
        key = None if task_id is None else str(int(task_id))
        self.active = key if key is not None and key in self.tasks else None

    def delta(self, index: int, x: Tensor) -> Tensor | None:
        """What target `index` adds for the active task; None = exactly the base layer."""
        if not self.enabled or self.active is None or self.active == self.merged:
            return None
        return self.layer_delta(self.tasks[self.active], index, x)

    # ------------------------------------------------------------------ disable, merge, forget
    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside, every wrapped layer is exactly its base layer."""
        old, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = old

    @torch.no_grad()
    def merge(self, task_id: int) -> None:
        """Fold task `task_id`'s delta into the base weights (one person served at full speed).

        While merged, every other task sees the merged weights too: unmerge before using them.
        """
        key = str(task_id)
        if self.merged is not None:
            raise RuntimeError(f"task {self.merged} is merged; unmerge it first")
        if key not in self.tasks:
            raise KeyError(f"no adapter for task {task_id}")
        for layer in self.wrapped():
            layer.base_layer.weight.add_(self.delta_weight(self.tasks[key], layer.index).to(layer.weight.dtype))
        self.merged = key

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged task's delta again (equal to the original weights up to float rounding)."""
        if self.merged is None:
            return
        for layer in self.wrapped():
            layer.base_layer.weight.sub_(self.delta_weight(self.tasks[self.merged], layer.index).to(layer.weight.dtype))
        self.merged = None

    def forget(self, task_id: int) -> None:
        """Delete task `task_id`'s adapter entirely; the shared model and other tasks are untouched."""
        key = str(task_id)
        if key not in self.tasks:
            raise KeyError(f"no adapter for task {task_id}; known: {self.people()}")
        if self.merged == key:
            self.unmerge()
        del self.tasks[key]
        self._cache = {k: v for k, v in self._cache.items() if k[0] != key}
        if self.active == key:
            self.active = None

    # ------------------------------------------------------------------ identification
    @torch.no_grad()
    def task_scores(self, x: Tensor, task_ids: list[int] | None = None, **likelihood_kw: Any) -> tuple[list[int], Tensor]:
        """(task ids, (b, n_tasks) log-likelihood of each input under each task's adapter); keyword arguments
        go to the backbone's `log_likelihood` (the trace encoder takes `heads=`)."""
        backbone = self._backbone
        if backbone is None or not hasattr(backbone, "log_likelihood"):
            raise TypeError("task_scores needs a backbone with log_likelihood(x, out)")
        ids = self.people() if task_ids is None else list(task_ids)
        old = self.active
        cols = []
        try:
            for t in ids:
                self.active = str(t)
                cols.append(backbone.log_likelihood(x, backbone(x), **likelihood_kw))
        finally:
            self.active = old
        return ids, torch.stack(cols, dim=1)

    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None:
        backbone = self._backbone
        if not self.cfg.identify or not len(self.tasks) or not hasattr(backbone, "log_likelihood"):
            return None
        ids, scores = self.task_scores(x)
        return torch.tensor(ids, device=x.device)[scores.argmax(1)]

    # ------------------------------------------------------------------ accounting
    def state_bytes(self) -> dict[int, int]:
        return {int(k): tensor_bytes(state.values()) for k, state in self.tasks.items()}

    def shared_bytes(self) -> int:
        return 0

    def scalars(self) -> dict[str, float]:
        per = self.state_bytes()
        return {"people": float(len(per)), "bytes_per_person": float(sum(per.values()) / len(per)) if per else 0.0}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # A freshly attached instance has no tasks yet: create the entries the checkpoint names.
        head = prefix + "tasks."
        for key, value in state_dict.items():
            if not key.startswith(head):
                continue
            task, pname = key[len(head) :].split(".", 1)
            if task not in self.tasks:
                self.tasks[task] = nn.ParameterDict()
            if pname not in self.tasks[task]:
                self.tasks[task][pname] = nn.Parameter(torch.empty_like(value), requires_grad=False)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
