"""The plug-in kinds: plasticity modules, memory modules and learners.

Each kind is a `typing.Protocol` (what the agent and loop call) plus a base
class with no-op defaults, so a module overrides only the hooks it uses.
Hooks *return* values (loss terms, scalars, byte counts); they never reach into
another module's fields.

Hook order, fixed by `agentlab.agent.Agent` (documented there too):

    attach(backbone)                      once, when the agent is built, in list order
    on_task_start(task)                   plasticity in list order, then memory in list order
      per training step:
        set_task(task_id)                 plasticity, before every forward
        forward                           backbone (memory modules are called by the backbone)
        extra_loss(batch, output)         plasticity then memory; named terms summed into the loss
        backward, optimizer step          the learner
        after_step(step)                  plasticity then memory
      after_epoch(epoch)                  plasticity, after each pass over the task's data
    on_task_end(task)                     plasticity in *reverse* list order (unwinding), then memory
    evaluation:                            set_task(id) when the label is given, else infer_task(x)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from agentlab.errors import CannotForget

if TYPE_CHECKING:
    from agentlab.data import Batch
    from agentlab.task import Task


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes held by `tensors` as stored (dtype size times elements)."""
    return int(sum(t.numel() * t.element_size() for t in tensors))


# ---------------------------------------------------------------------------- plasticity


@runtime_checkable
class Plasticity(Protocol):
    """How a backbone's weights may change per task (masks, sparse rewiring, adapters)."""

    name: str

    def attach(self, backbone: nn.Module) -> None: ...
    def on_task_start(self, task: "Task") -> None: ...
    def on_task_end(self, task: "Task") -> None: ...
    def set_task(self, task_id: int | None) -> None: ...
    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None: ...
    def extra_loss(self, batch: "Batch", output: Tensor) -> dict[str, Tensor]: ...
    def after_step(self, step: int) -> None: ...
    def after_epoch(self, epoch: int) -> None: ...
    def state_bytes(self) -> dict[int, int]: ...
    def scalars(self) -> dict[str, float]: ...


class PlasticityModule(nn.Module):
    """Base class for plasticity modules: every hook is a no-op until overridden.

    A module wraps backbone layers in `attach` (keeping each original as
    `base_layer`, PEFT style) and keeps per-task state keyed by task id. A module
    whose state grows per task must restore itself from `load_state_dict` on a
    freshly attached instance (create the per-task entries the state names):
    checkpoints resume that way.
    """

    name: str = "plasticity"

    def attach(self, backbone: nn.Module) -> None:
        """Wrap the layers this module changes. Called once, before any task."""

    def on_task_start(self, task: "Task") -> None:
        """Create this task's state (scores, masks, adapters) and choose what trains."""

    def on_task_end(self, task: "Task") -> None:
        """Freeze or consolidate this task's state."""

    def set_task(self, task_id: int | None) -> None:
        """Select the task whose state the wrapped layers use; None = no task state (base layers)."""

    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None:
        """Predicted task ids (B,) for inputs `x` when no label is given, or None if this module cannot tell.

        `forward(x)` runs the agent's backbone, so a module can probe it (SupSup's entropy gradient).
        """
        return None

    def observe_inference(self, true_task: int, guess: Tensor) -> None:
        """The evaluator's answer to `infer_task`: the true task of examples whose tasks were inferred (confusion figures)."""

    def extra_loss(self, batch: "Batch", output: Tensor) -> dict[str, Tensor]:
        """Named loss terms added to the task loss (regularisers)."""
        return {}

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (re-apply masks, rewire every N steps)."""

    def after_epoch(self, epoch: int) -> None:
        """Called after every pass over the task's training data (SET rewires here)."""

    def state_bytes(self) -> dict[int, int]:
        """Bytes this module keeps for each task id, as it stores them (bit-packed masks count 1 bit)."""
        return {}

    def shared_bytes(self) -> int:
        """Bytes this module keeps that belong to no single task (fixed random weights, a Hopfield matrix)."""
        return 0

    def scalars(self) -> dict[str, float]:
        """Figures for TensorBoard under `plasticity/<name>/<figure>`."""
        return {}

    def images(self) -> dict[str, Tensor]:
        """Images (C, H, W) in [0, 1] for TensorBoard under `plasticity/<name>/<image>`."""
        return {}

    def histograms(self) -> dict[str, Tensor]:
        """Value sets for TensorBoard histograms under `plasticity/<name>/<figure>` (weight magnitudes...)."""
        return {}

    def accounted_tensors(self) -> list[Tensor]:
        """Backbone tensors this module wraps without registering them, already counted in its own bytes."""
        return []

    def forget_task(self, task_id: int) -> int:
        """Remove everything this module keeps of task `task_id`, exactly: afterwards no state derived from that
        task's data remains and every other task computes as before. Returns the bytes freed (0 when it keeps
        nothing of the task). A module that cannot do so raises `CannotForget` naming the reason
        (`agentlab forget` then retrains from the checkpoint before the task instead)."""
        raise CannotForget(f"plasticity module {self.name!r} ({type(self).__name__}) keeps no per-task record of its state, "
                           "so it cannot remove one task's contribution")

    def layer_transforms(self) -> list[nn.Module]:
        """What this module put into the backbone (its `LayerTransform`s, per-task norms): `disabled()` turns them off."""
        return []

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside, every layer this module changes computes as if the module were not there."""
        parts = self.layer_transforms()
        before = [getattr(p, "enabled", True) for p in parts]
        for p in parts:
            p.enabled = False
        try:
            yield
        finally:
            for p, b in zip(parts, before):
                p.enabled = b


# ---------------------------------------------------------------------------- memory


class MemoryState(NamedTuple):
    """Placeholder type: each memory module defines its own NamedTuple of tensors."""


@runtime_checkable
class Memory(Protocol):
    """What an agent can store and read back. State is explicit data passed in and returned."""

    name: str

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> Any: ...
    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]: ...
    def reset(self) -> None: ...
    def on_task_start(self, task: "Task") -> None: ...
    def on_task_end(self, task: "Task") -> None: ...
    def state_bytes(self) -> int: ...
    def scalars(self) -> dict[str, float]: ...


class MemoryModule(nn.Module):
    """Base class for recurrent memories (DNC, memory transformer) with explicit state."""

    name: str = "memory"

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> Any:
        raise NotImplementedError

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:  # noqa: D401
        raise NotImplementedError

    def reset(self) -> None:
        """Forget stored content kept *inside* the module (stores); recurrent state lives outside."""

    def on_task_start(self, task: "Task") -> None:
        """Reset per task or per episode where configured."""

    def on_task_end(self, task: "Task") -> None:
        """Consolidate or keep memory across tasks."""

    def extra_loss(self, batch: "Batch", output: Tensor) -> dict[str, Tensor]:
        return {}

    def after_step(self, step: int) -> None:
        """Called after every optimizer step."""

    def observe(self, features: Any, labels: Tensor, task_ids: Tensor) -> None:
        """After every training step: what the step newly saw (features at the memory's point, or None for a memory
        inside the backbone, which keeps what its owner handed it), labels (B,) and task ids (B,). Stores write here,
        never in a loss hook."""

    def state_bytes(self) -> int:
        """Bytes of stored content (not parameters) this module holds now."""
        return 0

    def forget_task(self, task_id: int) -> int:
        """Remove every stored entry of task `task_id`; the bytes freed (0 when none is stored). A memory whose
        entries carry no task id, or whose content every task trains, raises `CannotForget` naming the reason."""
        raise CannotForget(f"memory {self.name!r} ({type(self).__name__}) keeps no per-task record of what it holds, "
                           "so it cannot remove one task's contribution")

    def scalars(self) -> dict[str, float]:
        """Figures for TensorBoard under `memory/<name>/<figure>` (usage, occupancy, hit rate...)."""
        return {}

    def images(self) -> dict[str, Tensor]:
        """Images (C, H, W) in [0, 1] for TensorBoard under `memory/<name>/<image>`."""
        return {}

    def histograms(self) -> dict[str, Tensor]:
        """Value sets for TensorBoard histograms under `memory/<name>/<figure>` (slot usage...)."""
        return {}


@runtime_checkable
class Store(Protocol):
    """A bounded key-value store (mini-RAG, Hopfield associative store)."""

    capacity: int

    def write(self, keys: Tensor, values: Any, meta: Any = None) -> None: ...
    def retrieve(self, query: Tensor, k: int = 1) -> Any: ...
    def reset(self) -> None: ...
    def __len__(self) -> int: ...


# ---------------------------------------------------------------------------- learner


@runtime_checkable
class Learner(Protocol):
    """The update rule: trains an agent on one task (fine-tuning, replay, joint, an episode learner, RL)."""

    name: str

    def fit(self, agent: Any, task: "Task", ctx: Any) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def state_bytes(self) -> int: ...
    def forget_task(self, task_id: int) -> int: ...
