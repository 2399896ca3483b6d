"""Experience replay with a bounded buffer: reservoir or class-balanced sampling.

Every training batch of the current task is mixed with an equal number of
examples drawn from the buffer, and then offered to the buffer:

* reservoir (Vitter 1985; as used by Chaudhry et al. 2019, "On Tiny Episodic
  Memories"): the n-th example seen replaces a random slot with probability
  capacity / n, so the buffer is a uniform sample of the stream;
* class-balanced (class-balancing reservoir, Chrysakis & Moens 2020): when full,
  an example of an under-represented class evicts a random example of the
  largest class; one of a full class enters by reservoir within its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepOutput
from agentlab.errors import CannotForget
from agentlab.learners.finetune import require_classification, train_split
from agentlab.learners.sgd import SGDConfig, supervised_loss
from agentlab.optim import KeptOptimizer
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class ReplayConfig(SGDConfig):
    """Fine-tuning plus a bounded replay buffer mixed into every batch."""

    buffer_size: int = 500
    """examples the buffer holds at most"""
    policy: Literal["reservoir", "class_balanced"] = "reservoir"
    """which examples stay when the buffer is full"""
    replay_batch_size: int = 0
    """examples drawn from the buffer per step; 0 = the same as batch_size"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.buffer_size >= 1, "buffer_size", self.buffer_size, "an integer >= 1")
        check(self.replay_batch_size >= 0, "replay_batch_size", self.replay_batch_size, "an integer >= 0")


class ReplayBuffer:
    """A fixed-capacity store of (x, y, task id) with reservoir or class-balanced admission."""

    def __init__(self, capacity: int, policy: str = "reservoir") -> None:
        self.capacity = capacity
        self.policy = policy
        self.x: Tensor | None = None  # (capacity, ...) allocated on first add
        self.y = torch.zeros(capacity, dtype=torch.long)
        self.t = torch.zeros(capacity, dtype=torch.long)
        self.size = 0
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}

    def __len__(self) -> int:
        return self.size

    def _put(self, slot: int, x: Tensor, y: int, t: int) -> None:
        assert self.x is not None
        self.x[slot] = x
        self.y[slot] = y
        self.t[slot] = t

    def add(self, x: Tensor, y: Tensor, task_id: int, generator: torch.Generator) -> None:
        if self.x is None:
            self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype)
        x, y = x.detach().cpu(), y.detach().cpu()
        draws = torch.rand(x.shape[0], generator=generator).tolist()
        for i in range(x.shape[0]):
            c = int(y[i])
            self.seen += 1
            self.seen_per_class[c] = self.seen_per_class.get(c, 0) + 1
            if self.size < self.capacity:
                self._put(self.size, x[i], c, task_id)
                self.size += 1
                continue
            if self.policy == "reservoir":
                j = int(draws[i] * self.seen)
                if j < self.capacity:
                    self._put(j, x[i], c, task_id)
                continue
            self._admit_balanced(x[i], c, task_id, draws[i])

    def _admit_balanced(self, x: Tensor, c: int, task_id: int, u: float) -> None:
        counts = torch.bincount(self.y[: self.size])
        largest = int(counts.argmax())
        mine = int(counts[c]) if c < counts.shape[0] else 0
        if mine < int(counts[largest]):
            victims = (self.y[: self.size] == largest).nonzero().squeeze(1)
            self._put(int(victims[int(u * victims.shape[0])]), x, c, task_id)
        else:
            # The class is already among the largest: reservoir within the class keeps it a uniform sample.
            if u < mine / self.seen_per_class[c]:
                victims = (self.y[: self.size] == c).nonzero().squeeze(1)
                self._put(int(victims[int(u * self.seen_per_class[c] / mine * victims.shape[0]) % victims.shape[0]]), x, c, task_id)

    def sample(self, n: int, generator: torch.Generator) -> Batch | None:
        if self.size == 0:
            return None
        assert self.x is not None
        idx = torch.randint(0, self.size, (min(n, self.size),), generator=generator)
        return Batch(self.x[idx], self.y[idx], None, {"task_ids": self.t[idx]})

    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x[: self.size].clone() if self.x is not None else torch.zeros(0),
            "y": self.y[: self.size].clone(),
            "t": self.t[: self.size].clone(),
            "seen": self.seen,
            "seen_per_class": {str(k): v for k, v in self.seen_per_class.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["y"].shape[0])
        self.size, self.seen = n, int(state["seen"])
        self.seen_per_class = {int(k): int(v) for k, v in state["seen_per_class"].items()}
        if n:
            self.x = torch.zeros((self.capacity, *state["x"].shape[1:]), dtype=state["x"].dtype)
            self.x[:n] = state["x"]
            self.y[:n], self.t[:n] = state["y"], state["t"]

    def nbytes(self) -> int:
        if self.x is None:
            return 0
        per = self.x[0].numel() * self.x.element_size() + 2 * 8
        return self.size * per


class Replay:
    name = "replay"

    def __init__(self, cfg: ReplayConfig) -> None:
        self.cfg = cfg
        self.buffer = ReplayBuffer(cfg.buffer_size, cfg.policy)
        self.classes_by_task: dict[int, Any] = {}
        self.optimizers = KeptOptimizer()

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        self.classes_by_task[task.id] = task.classes
        n_replay = self.cfg.replay_batch_size or self.cfg.batch_size

        def step(batch: Batch) -> StepOutput:
            memory = self.buffer.sample(n_replay, ctx.generator)
            mixed = batch
            if memory is not None:
                memory = memory.to(ctx.device)
                current_t = torch.full((len(batch),), task.id, dtype=torch.long, device=batch.x.device)
                mixed = Batch(
                    torch.cat([batch.x, memory.x]),
                    torch.cat([batch.y, memory.y]),
                    task.id,
                    {"task_ids": torch.cat([current_t, memory.extra["task_ids"]])},
                )
            out = supervised_loss(agent, mixed, task, self.classes_by_task, observed=batch)
            # Offered to the buffer once the replayed sample is drawn: a batch is never replayed in its own step.
            self.buffer.add(batch.x, batch.y, task.id, ctx.generator)
            return out

        train_split(agent, task, task.train, self.cfg, ctx, step_fn=step, optimizers=self.optimizers)

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "classes_by_task": {str(k): (list(v) if v is not None else None) for k, v in self.classes_by_task.items()},
            "optimizer": self.optimizers.state_dict() if self.cfg.keep_optimizer else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.optimizers.load_state_dict(state.get("optimizer", {}))
        self.classes_by_task = {int(k): (tuple(v) if v is not None else None) for k, v in state["classes_by_task"].items()}

    def state_bytes(self) -> int:
        return self.buffer.nbytes()

    def forget_task(self, task_id: int) -> int:
        """0 when the buffer never saw the task; otherwise refused: removing its entries would not give the buffer of
        a stream without it (they took the places of other examples) nor undo their replay in later tasks."""
        held = int((self.buffer.t[: self.buffer.size] == task_id).sum())
        if held or task_id in self.classes_by_task:
            raise CannotForget(
                f"learner 'replay' admitted task {task_id}'s examples to its buffer ({held} held now) in place of other "
                "tasks' examples and replayed them while later tasks trained: dropping them does not give the buffer "
                "or the weights of a stream without the task")
        return 0


@register("learner", "replay", ReplayConfig)
def build_replay(cfg: ReplayConfig, env: BuildEnv) -> Replay:
    """Experience replay with a bounded reservoir or class-balanced buffer."""
    return Replay(cfg)
