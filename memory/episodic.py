"""An episodic memory of (key, label, task id) entries that answers task inference by nearest neighbours.

Attached at the input (the default), it keeps a random projection of examples it has trained on,
per task, within a fixed capacity, and tells the task of a new example by a vote of its k nearest
stored keys (cosine similarity, votes weighted by similarity). A mask or adapter method that needs
the task at test time (SupSup, FNNSP, per-task adapters) then runs the inferred task's sub-network:
class-incremental learning from task-incremental parts.

    key(x)     = normalise(x R)                R (F, key_dim) ~ N(0, 1/key_dim), fixed by `seed` (a
                                               Johnson-Lindenstrauss projection: cosine similarities of
                                               the features are kept up to a small distortion)
    write      task-balanced reservoir: every task seen keeps capacity // tasks entries; a task's
               entries are a uniform sample of the examples it showed (Vitter's algorithm R per task)
    infer(x)   argmax_t sum_{j in kNN(x)} sim(x, key_j) [task_j = t]

Keys are stored as float16; the ledger counts entries and the projection. With `fuse` other than
"none" the k neighbours' keys are also read into the features (cross-attention by default then).

Axis legend: B batch, C capacity, E key dim, F feature width, k neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.attachment import AttachConfig, AttachedMemory, Fuse
from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class EpisodicConfig(AttachConfig):
    """Bounded (key, label, task) entries, task-balanced; nearest-neighbour task inference."""

    at: str = "input"
    """attachment point; the input (or a layer no plasticity module changes) gives task-free keys"""
    fuse: Fuse = "none"
    """none: task inference only; residual / cross_attention also read the neighbours' keys into the features"""
    capacity: int = 10000
    """entries kept at most (split evenly across the tasks seen)"""
    key_dim: int = 128
    """width of the random projection the keys are stored in; 0 = the features themselves"""
    k: int = 10
    """neighbours that vote"""
    infer: bool = True
    """answer task inference (the agent asks memories before plasticity modules)"""
    seed: int = 0
    """seed of the projection and of the reservoir's draws"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.capacity >= 1, "capacity", self.capacity, "an integer >= 1")
        check(self.key_dim >= 0, "key_dim", self.key_dim, "an integer >= 0 (0 = no projection)")
        check(self.k >= 1, "k", self.k, "an integer >= 1")


class EpisodicMemory(AttachedMemory):
    """See the module docstring."""

    name = "episodic"
    writes = True
    per_example = True

    def __init__(self, cfg: EpisodicConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.infers_task = cfg.infer
        self.generator = torch.Generator().manual_seed(cfg.seed + 0xE915)
        c = cfg.capacity
        self.register_buffer("keys", torch.zeros(c, max(cfg.key_dim, 1), dtype=torch.float16))
        self.register_buffer("labels", torch.zeros(c, dtype=torch.int16))
        self.register_buffer("tasks", torch.full((c,), -1, dtype=torch.int16))  # -1 = an empty slot
        self.seen: dict[int, int] = {}  # task -> examples shown
        self.queries = 0

    # ---------------------------------------------------------------- building
    def build(self, width: int) -> int:
        e = self.cfg.key_dim or width
        g = torch.Generator().manual_seed(self.cfg.seed)
        proj = torch.randn(width, e, generator=g) / math.sqrt(e) if self.cfg.key_dim else torch.zeros(0)
        self.register_buffer("projection", proj, persistent=False)  # rebuilt from the seed, never saved
        self.keys = torch.zeros(self.cfg.capacity, e, dtype=torch.float16)
        return e

    def key(self, features: Tensor) -> Tensor:
        """(B, F) -> unit keys (B, E)."""
        x = features.reshape(features.shape[0], -1).float()
        if self.cfg.key_dim:
            x = x @ self.projection.to(x.device)
        return F.normalize(x, dim=-1)

    @property
    def size(self) -> int:
        return int((self.tasks >= 0).sum())

    # ---------------------------------------------------------------- writing
    @torch.no_grad()
    def observe(self, features: Tensor, labels: Tensor, task_ids: Tensor) -> None:
        keys = self.key(features).to(self.keys.device, torch.float16)
        labels = (labels.reshape(labels.shape[0], -1)[:, 0] if labels.dim() > 1 else labels).to(self.labels.device)
        task_ids = task_ids.to(self.tasks.device)
        for task in torch.unique(task_ids).tolist():
            rows = (task_ids == task).nonzero().squeeze(1)
            self._write_task(keys[rows], labels[rows].to(torch.int16), int(task))

    def _write_task(self, keys: Tensor, labels: Tensor, task: int) -> None:
        """Algorithm R within the task, under the quota capacity // tasks seen."""
        first = self.seen.get(task, 0)
        self.seen[task] = first + keys.shape[0]
        quota = max(1, self.cfg.capacity // len(self.seen))
        mine = (self.tasks == task).nonzero().squeeze(1)
        fill = min(max(quota - mine.numel(), 0), keys.shape[0])
        if fill:
            slots = self._free_slots(fill, quota)
            self._put(slots, keys[:fill], labels[:fill], task)
            mine = (self.tasks == task).nonzero().squeeze(1)
        rest = keys.shape[0] - fill
        if rest <= 0 or mine.numel() == 0:
            return
        # the i-th example of the task (1-based count s) replaces a uniform slot with probability quota / s
        counts = torch.arange(first + fill + 1, first + keys.shape[0] + 1)
        j = (torch.rand(rest, generator=self.generator) * counts).long()
        take = (j < mine.numel()).nonzero().squeeze(1)
        if take.numel():
            slots = mine[j[take].to(mine.device)]
            # when two examples draw one slot, the later one stays (as writing them one by one would)
            keep = torch.ones(take.numel(), dtype=torch.bool)
            seen_slots: set[int] = set()
            for i in range(take.numel() - 1, -1, -1):
                s_ = int(slots[i])
                keep[i] = s_ not in seen_slots
                seen_slots.add(s_)
            rows = take[keep] + fill
            self._put(slots[keep], keys[rows], labels[rows], task)

    def _free_slots(self, n: int, quota: int) -> Tensor:
        """`n` slots for a task under its quota: empty ones first, then random entries of tasks above the quota."""
        empty = (self.tasks < 0).nonzero().squeeze(1)[:n]
        out = [empty]
        need = n - empty.numel()
        while need > 0:
            counts = {t: int((self.tasks == t).sum()) for t in self.seen}
            richest = max(counts, key=lambda t: counts[t])
            spare = min(need, counts[richest] - quota) if counts[richest] > quota else need
            theirs = (self.tasks == richest).nonzero().squeeze(1)
            pick = theirs[torch.randperm(theirs.numel(), generator=self.generator)[:spare].to(theirs.device)]
            self.tasks[pick] = -1
            out.append(pick)
            need -= pick.numel()
        return torch.cat(out)

    def _put(self, slots: Tensor, keys: Tensor, labels: Tensor, task: int) -> None:
        self.keys[slots], self.labels[slots] = keys, labels
        self.tasks[slots] = task

    # ---------------------------------------------------------------- reading
    def _neighbours(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """(similarities (B, k), slots (B, k)) of the nearest stored keys."""
        sims = keys @ self.keys.to(keys.device, keys.dtype).T  # (B, C)
        sims = sims.masked_fill((self.tasks < 0).to(sims.device), float("-inf"))  # empty slots never match
        k = min(self.cfg.k, self.size)
        return sims.topk(k, dim=1)

    @torch.no_grad()
    def infer_task(self, features: Tensor) -> Tensor | None:
        if not self.cfg.infer or self.size == 0:
            return None
        sims, slots = self._neighbours(self.key(features))
        tasks = self.tasks.to(slots.device)[slots].long()  # (B, k)
        base = int(tasks.min())
        votes = torch.zeros(tasks.shape[0], int(tasks.max()) - base + 1, device=tasks.device)
        votes.scatter_add_(1, tasks - base, sims.clamp_min(0) + 1e-6)
        self.queries += tasks.shape[0]
        return votes.argmax(1) + base

    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor | None, Any]:
        if self.size == 0 or self.fuse_kind == "none":
            return None, state
        b, t, f = x.shape
        _, slots = self._neighbours(self.key(x.reshape(b * t, f)))
        items = self.keys.to(x.device, x.dtype)[slots]  # (B*T, k, E)
        return items.reshape(b, t, *items.shape[1:]), state

    # ---------------------------------------------------------------- accounting and checkpoints
    def state_bytes(self) -> int:
        n = self.size
        entries = n * (self.keys.shape[1] * self.keys.element_size() + 2 + 2)  # key, label, task
        # the projection is held in memory to read the entries (it is rebuilt from the seed, never saved)
        return entries + (self.projection.numel() * 4 if n and self.bound and self.cfg.key_dim else 0)

    def scalars(self) -> dict[str, float]:
        out = {"entries": float(self.size), "capacity": float(self.cfg.capacity), "tasks": float(len(self.seen)),
               "bytes": float(self.state_bytes())}
        for t in sorted(self.seen):
            out[f"entries/task_{t:03d}"] = float((self.tasks == t).sum())
        return out

    def reset(self) -> None:
        self.tasks.fill_(-1)
        self.seen = {}

    def get_extra_state(self) -> dict[str, Any]:
        return {"seen": {str(k): v for k, v in self.seen.items()}, "rng": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seen = {int(k): int(v) for k, v in state["seen"].items()}
        self.generator.set_state(state["rng"])

    def forget_task(self, task_id: int) -> int:
        """Empty the slots holding the task's entries (key, label, task id zeroed) and forget how many examples it
        showed, so later tasks' quotas count it no more. The other entries stay as they are: those the task's
        quota once evicted are not brought back. With fusion on, the fusion layers trained with every task:
        refused."""
        if self.fuse_kind != "none":
            raise CannotForget(f"memory {self.name!r}: its fusion layers (fuse={self.fuse_kind!r}) trained with every "
                               "task, reading this task's entries")
        mine = self.tasks == task_id
        n = int(mine.sum())
        freed = n * (self.keys.shape[1] * self.keys.element_size() + 2 + 2)
        self.keys[mine] = 0
        self.labels[mine] = 0
        self.tasks[mine] = -1
        self.seen.pop(task_id, None)
        return freed



@register("memory", "episodic", EpisodicConfig)
def build_episodic(cfg: EpisodicConfig, env: BuildEnv) -> EpisodicMemory:
    """Episodic memory of (key, label, task) entries: nearest-neighbour task inference for mask and adapter methods."""
    return EpisodicMemory(cfg)
