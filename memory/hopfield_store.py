"""A Hopfield associative store: write patterns, retrieve them from partial or noisy cues.

Patterns Y (n, d) sit in a fixed-size buffer (capacity rows; when full, the oldest
is overwritten, so the store never exceeds its capacity). Retrieval is the modern
Hopfield update (Ramsauer et al. 2021, eq. 3) iterated to convergence or to
`update_steps_max`:

    xi <- Y^T softmax(beta Y xi)

With `value_dim` > 0 the store is hetero-associative: each key has a value and
retrieval returns V^T softmax(beta Y xi*) for the converged state xi*.
Logged (`scalars`): `load` = patterns / d (the classical capacity is ~0.14 d for a
binary Hopfield net), `occupancy` = patterns / capacity, `recall_error` = the mean
relative distance between the last retrievals and their nearest stored pattern
(0 when every retrieval landed on a stored pattern; large for metastable mixtures),
and `steps` = update steps the last retrieval made.

Axis legend: b cues, n stored patterns, d pattern width, v value width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agentlab.attachment import AttachConfig, AttachedMemory
from agentlab.config import check
from agentlab.protocols import MemoryModule
from agentlab.errors import CannotForget
from agentlab.registry import BuildEnv, register
from agentlab.memory.hopfield_core import hopfield_retrieve


class HopfieldStore(MemoryModule):
    """A bounded auto- (or hetero-) associative store read by modern Hopfield retrieval."""

    name = "hopfield_store"

    def __init__(self, *, dim: int, capacity: int = 1024, beta: float = 8.0, update_steps_max: int | None = None,
                 update_steps_eps: float = 1e-4, value_dim: int = 0) -> None:
        super().__init__()
        self.dim, self.capacity, self.beta, self.value_dim = dim, capacity, beta, value_dim
        self.update_steps_max, self.update_steps_eps = update_steps_max, update_steps_eps
        self.register_buffer("keys", torch.zeros(capacity, dim))
        self.register_buffer("values", torch.zeros(capacity, value_dim) if value_dim else torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # patterns ever written
        self._last = {"recall_error": 0.0, "steps": 0.0}

    def __len__(self) -> int:
        return int(min(int(self.count), self.capacity))

    def reset(self) -> None:
        self.keys.zero_()
        if self.value_dim:
            self.values.zero_()
        self.count.zero_()

    @torch.no_grad()
    def write(self, keys: Tensor, values: Any = None, meta: Any = None) -> None:
        """Store keys (b, d) [and values (b, v)], overwriting the oldest rows once full."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (b, {self.dim}), got {tuple(keys.shape)}")
        if self.value_dim and (values is None or values.shape != (keys.shape[0], self.value_dim)):
            raise ValueError(f"a hetero-associative store needs values (b, {self.value_dim})")
        rows = (int(self.count) + torch.arange(keys.shape[0])) % self.capacity
        self.keys[rows] = keys.to(self.keys)
        if self.value_dim:
            self.values[rows] = values.to(self.values)
        self.count += keys.shape[0]

    def patterns(self) -> Tensor:
        """The stored keys (n, d)."""
        return self.keys[: len(self)]

    def retrieve(self, query: Tensor, k: int = 1) -> Tensor:
        """Converged retrieval for cues (b, d) -> (b, d), or (b, v) for a hetero-associative store.

        `k` is accepted for the Store protocol; Hopfield retrieval returns one pattern per cue.
        """
        n = len(self)
        if n == 0:
            raise ValueError("the Hopfield store is empty; write patterns first")
        y = self.patterns()[None, None]  # (1, 1, n, d)
        q = query[None, None]  # (1, 1, b, d)
        r = hopfield_retrieve(q, y, y, scaling=self.beta, update_steps_max=self.update_steps_max,
                              update_steps_eps=self.update_steps_eps, need_association=bool(self.value_dim))
        out = r.output[0, 0]  # (b, d)
        with torch.no_grad():
            nearest = torch.cdist(out, self.patterns()).min(dim=1).values  # (b,)
            self._last = {"recall_error": float((nearest / (self.patterns().norm(dim=1).mean() + 1e-12)).mean()),
                          "steps": float(r.steps)}
        if self.value_dim:
            assert r.association is not None
            return r.association[0, 0] @ self.values[:n]  # (b, v)
        return out

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> None:
        return None

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Retrieve for cues x (b, d); the store's content lives inside the module, so state passes through."""
        return self.retrieve(x), state

    def state_bytes(self) -> int:
        per = self.dim + self.value_dim
        return len(self) * per * self.keys.element_size()

    def scalars(self) -> dict[str, float]:
        return {"load": len(self) / self.dim, "occupancy": len(self) / self.capacity, **self._last}


@dataclass(frozen=True)
class HopfieldStoreConfig(AttachConfig):
    """A Hopfield associative store attached to a backbone: written with the features training shows it,
    read by modern Hopfield retrieval of the stored pattern nearest each feature vector (pattern completion)."""

    dim: int = 0
    """pattern width d; 0 = the features' width (else a fixed random projection to d)"""
    capacity: int = 1024
    """most patterns kept (the oldest is overwritten when full)"""
    beta: float = 8.0
    """inverse temperature of the update"""
    update_steps_max: int = 3
    """most update steps per read (a forward pass reads every example; metastable states may never converge);
    -1 = until converged"""
    update_steps_eps: float = 1e-4
    """convergence threshold on the association matrix"""
    value_dim: int = 0
    """value width for a hetero-associative store; 0 = auto-associative"""
    seed: int = 0
    """seed of the projection (with dim > 0)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.dim >= 0, "dim", self.dim, "an integer >= 0 (0 = the features' width)")
        check(self.capacity >= 1, "capacity", self.capacity, "an integer >= 1")
        check(self.beta > 0, "beta", self.beta, "a number > 0")
        check(self.update_steps_max >= -1, "update_steps_max", self.update_steps_max, "an integer >= -1")
        check(self.update_steps_eps > 0, "update_steps_eps", self.update_steps_eps, "a number > 0")
        check(self.value_dim >= 0, "value_dim", self.value_dim, "an integer >= 0")


class AttachedHopfieldStore(AttachedMemory):
    """A `HopfieldStore` at an attachment point: training features are written (FIFO within capacity), each
    feature vector retrieves the pattern it completes to, and that pattern is fused into the features."""

    name = "hopfield_store"
    writes = True

    def __init__(self, cfg: HopfieldStoreConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.store: HopfieldStore | None = None

    def build(self, width: int) -> int:
        d = self.cfg.dim or width
        if d != width:
            g = torch.Generator().manual_seed(self.cfg.seed)
            self.register_buffer("projection", torch.randn(width, d, generator=g) / d**0.5, persistent=False)
        else:
            self.projection = None
        self.store = HopfieldStore(dim=d, capacity=self.cfg.capacity, beta=self.cfg.beta,
                                   update_steps_max=None if self.cfg.update_steps_max < 0 else self.cfg.update_steps_max,
                                   update_steps_eps=self.cfg.update_steps_eps, value_dim=self.cfg.value_dim)
        return self.cfg.value_dim or d

    def _patterns(self, x: Tensor) -> Tensor:
        return x @ self.projection.to(x) if self.projection is not None else x

    def retrieve(self, x: Tensor, state: Any) -> tuple[Tensor | None, Any]:
        assert self.store is not None
        if len(self.store) == 0:
            return None, state
        b, t, f = x.shape
        r = self.store.retrieve(self._patterns(x.reshape(b * t, f)))
        return r.reshape(b, t, -1), state

    @torch.no_grad()
    def observe(self, features: Tensor, labels: Tensor, task_ids: Tensor) -> None:
        assert self.store is not None
        x = features.reshape(features.shape[0], -1) if features.dim() == 2 else features.reshape(-1, features.shape[-1])
        if self.cfg.value_dim:
            return  # a hetero-associative store needs values; it is written by its owner, not by training features
        self.store.write(self._patterns(x.float()))

    def state_bytes(self) -> int:
        return self.store.state_bytes() if self.store is not None else 0

    def scalars(self) -> dict[str, float]:
        return self.store.scalars() if self.store is not None else {}

    def reset(self) -> None:
        if self.store is not None:
            self.store.reset()

    def forget_task(self, task_id: int) -> int:
        if self.store is None or len(self.store) == 0:
            return 0
        raise CannotForget(f"memory {self.name!r}: its stored patterns carry no task id (a FIFO of features), and "
                           "what it retrieves is fused into every task's features")


@register("memory", "hopfield_store", HopfieldStoreConfig)
def build_hopfield_store(cfg: HopfieldStoreConfig, env: BuildEnv) -> AttachedHopfieldStore:
    """Hopfield associative store attached to a backbone: written with training features, read by retrieval."""
    return AttachedHopfieldStore(cfg)
