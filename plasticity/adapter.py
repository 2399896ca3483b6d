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

The shared backbone learns in a first phase and is then frozen: tasks whose
`meta["population"]` is true (the personalization stream's population model), and
with `backbone_phase = "first_task"` (the default) the stream's first task, train it
with no adapter; every later task trains only its own adapter. Without a task label
the task is inferred (`infer`): by the likelihood the backbone gives the input under
each adapter (a person's fingerprint, backbones with `log_likelihood`) or by the lowest
output entropy, the rule SupSup's "entropy" inference uses.
Subclasses implement `new_task_state` and `delta_weight` (and may override
`layer_delta` with a cheaper low-rank product).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.protocols import PlasticityModule, tensor_bytes
from agentlab.wrapping import LayerTargets, LayerTransform, freeze_base, select_layers, transforms_of, wrap


@dataclass(frozen=True)
class AdapterConfig(LayerTargets):
    """What every adapter takes: which linear layers it adapts, its seed, when the backbone learns, task inference."""

    seed: int = 0
    """seed of initialisations and random bases (private generators; the global RNG is never used)"""
    backbone_phase: Literal["first_task", "population"] = "first_task"
    """which tasks train the shared backbone (then frozen): the stream's first task and population tasks, or only
    tasks marked `population` (a pretraining stream); every other task trains only its own adapter"""
    infer: Literal["auto", "likelihood", "entropy", "none"] = "auto"
    """without a task label: the task whose adapter gives the input the highest likelihood (backbones with
    `log_likelihood`, a person's fingerprint), the lowest output entropy (SupSup's rule), or no inference;
    auto = likelihood where the backbone has it, else entropy"""
    name: str = ""
    """module name in logs and the ledger; '' = the method's name"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")


def is_population_task(task: Any) -> bool:
    """A task that trains the shared model rather than a per-task adapter."""
    return bool(getattr(task, "meta", {}).get("population", False))


class AdaptedLinear(LayerTransform):
    """An adapter's transform on one Linear: `W + dW_t` for the active task. The owner is referenced, not
    registered: its per-task parameters stay its own."""

    base_weight = "fixed"
    base_weight_reason = "its per-task deltas are added to a backbone frozen after its first phase"
    has_residual = True

    def __init__(self, owner: "AdapterModule", index: int) -> None:
        super().__init__()
        self.index = index
        object.__setattr__(self, "_owner", owner)

    def transform_weight(self, w: Tensor) -> Tensor:
        d = self._owner.delta_dense(self.index)
        return w if d is None else w + d.to(w.dtype)

    def residual(self, x: Tensor) -> Tensor | None:
        return self._owner.delta(self.index, x)

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
        self.base_tasks: list[int] = []  # tasks that trained the backbone (no adapter): task inference's candidates too
        self.phase_seen = False  # whether the backbone's phase (population or first task) has begun
        self.population_tasks: list[int] = []  # population tasks that trained the backbone (forget_task refuses them)
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
        """delta(x) = x dW^T for target `index`."""
        return F.linear(x, self.dense_delta(state, index))

    def dense_delta(self, state: nn.ParameterDict, index: int) -> Tensor:
        """dW of target `index`; cached while no gradient is needed (evaluation forms it once per task)."""
        if torch.is_grad_enabled():
            return self.delta_weight(state, index)
        key = (self.active or "", index)
        version = tuple(p._version for p in state.values())
        hit = self._cache.get(key)
        if hit is None or hit[0] != version:
            hit = (version, self.delta_weight(state, index).detach())
            self._cache[key] = hit
        return hit[1]

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        object.__setattr__(self, "_backbone", backbone)
        for i, n in enumerate(select_layers(backbone, self.cfg, owner=self.name, kinds=(nn.Linear,))):
            layer = wrap(backbone, n)
            layer.add(self.name, AdaptedLinear(self, i))
            self.targets.append((n, layer.base_layer.in_features, layer.base_layer.out_features))
        self.on_attached()

    def on_attached(self) -> None:
        """Called once the targets are known (fixed generators are built here)."""

    def wrapped(self) -> list[AdaptedLinear]:
        assert self._backbone is not None, "attach() first"
        return [t for _, t in transforms_of(self._backbone, self.name)]  # type: ignore[misc]

    def layer_transforms(self) -> list[nn.Module]:
        return list(self.wrapped()) if self._backbone is not None else []

    def people(self) -> list[int]:
        """Task ids that have an adapter."""
        return [int(k) for k in self.tasks]

    # ------------------------------------------------------------------ hooks
    def on_task_start(self, task: Any) -> None:
        backbone = self._backbone
        assert backbone is not None, "attach() first"
        first = self.cfg.backbone_phase == "first_task" and (not self.phase_seen or task.id in self.base_tasks)
        if is_population_task(task) or first:
            # the backbone's phase: it trains (as far as no other module froze it) and this task has no adapter
            self.active = None
            self.phase_seen = True
            if not is_population_task(task) and task.id not in self.base_tasks:
                self.base_tasks.append(task.id)
            if is_population_task(task) and task.id not in self.population_tasks:
                self.population_tasks.append(task.id)
            for p in self.tasks.parameters():
                p.requires_grad_(False)
            return
        key = str(task.id)
        if key not in self.tasks:
            self.tasks[key] = self.new_task_state(task.id)
        freeze_base(backbone)  # the shared model's phase is over
        for k, state in self.tasks.items():
            for p in state.values():
                p.requires_grad_(k == key)
        self.active = key

    def on_task_end(self, task: Any) -> None:
        key = str(task.id)
        if key in self.tasks:
            for p in self.tasks[key].values():
                p.requires_grad_(False)
        elif self._backbone is not None and (is_population_task(task) or task.id in self.base_tasks):
            freeze_base(self._backbone)  # the backbone's phase ends with this task

    def set_task(self, task_id: int | None) -> None:
        key = None if task_id is None else str(int(task_id))
        self.active = key if key is not None and key in self.tasks else None

    def delta(self, index: int, x: Tensor) -> Tensor | None:
        """What target `index` adds for the active task; None = exactly the base layer."""
        if not self.enabled or self.active is None or self.active == self.merged:
            return None
        return self.layer_delta(self.tasks[self.active], index, x)

    def delta_dense(self, index: int) -> Tensor | None:
        """dW of target `index` for the active task (what `.weight` readers see); None = no change."""
        if not self.enabled or self.active is None or self.active == self.merged:
            return None
        return self.dense_delta(self.tasks[self.active], index)

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
        mode = self.cfg.infer
        if mode == "auto":
            mode = "likelihood" if hasattr(backbone, "log_likelihood") else "entropy"
        if mode == "none" or not len(self.tasks):
            return None
        if mode == "likelihood":
            if not hasattr(backbone, "log_likelihood"):
                raise TypeError(f"{self.name}.infer='likelihood' needs a backbone with log_likelihood(x, out); use 'entropy'")
            ids, scores = self.task_scores(x)
            return torch.tensor(ids, device=x.device)[scores.argmax(1)]
        return self._lowest_entropy(x, forward)

    @torch.no_grad()
    def _lowest_entropy(self, x: Tensor, forward: Any) -> Tensor:
        """Per example, the task (its adapter, or the backbone for a task that trained it) whose output has the
        lowest entropy: SupSup's "entropy" rule (Wortsman et al. 2020) with adapters in place of masks."""
        from agentlab.plasticity.task_inference import output_entropy

        ids = list(self.base_tasks) + self.people()
        old = self.active
        cols = []
        try:
            for t in ids:
                self.active = str(t) if str(t) in self.tasks else None
                cols.append(output_entropy(forward(x)))
        finally:
            self.active = old
        return torch.tensor(ids, device=x.device)[torch.stack(cols, 1).argmin(1)]

    # ------------------------------------------------------------------ accounting
    def state_bytes(self) -> dict[int, int]:
        return {int(k): tensor_bytes(state.values()) for k, state in self.tasks.items()}

    def shared_bytes(self) -> int:
        return 0

    def scalars(self) -> dict[str, float]:
        per = self.state_bytes()
        return {"people": float(len(per)), "bytes_per_person": float(sum(per.values()) / len(per)) if per else 0.0}

    def get_extra_state(self) -> dict[str, Any]:
        return {"base_tasks": list(self.base_tasks), "phase_seen": self.phase_seen or bool(len(self.tasks)),
                "population_tasks": list(self.population_tasks)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.base_tasks = [int(t) for t in state.get("base_tasks", [])]
        self.phase_seen = bool(state.get("phase_seen", False))
        self.population_tasks = [int(t) for t in state.get("population_tasks", [])]

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

    # ------------------------------------------------------------------ exact forgetting
    def forget_task(self, task_id: int) -> int:
        """Delete the task's adapter (`forget`): the backbone and every other adapter stay bit for bit. A task that
        trained the shared backbone (its first task, a population task) is refused: every adapter sits on it."""
        if task_id in self.base_tasks or task_id in self.population_tasks:
            raise CannotForget(f"{self.name}: task {task_id} trained the shared backbone that every later adapter was "
                               "fitted on, so its contribution cannot be removed by deleting an adapter")
        key = str(task_id)
        if key not in self.tasks:
            return 0
        freed = tensor_bytes(self.tasks[key].values())
        self.forget(task_id)
        return freed
