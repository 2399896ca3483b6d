"""HopSupSup: per-task unit gates kept only as attractors of one Hopfield matrix (Wortsman et al. 2020, Sec. 3.5).

The weights are fixed random signed constants, as in SupSup. What a task changes is a small parameter
set: one gate per output unit (channel) of every wrapped layer but the read-out (`unit_gates.py`),

    y = g_t ⊙ (W x + b),    g_t ∈ {0, 1}^units ("binary", the reference's BatchNorm-scale mask) or {-1, +1}^units

learned through real scores while the task trains. At the task's end its gates, as ±1 bits, follow a
key generated from (seed, task id), and the pattern x_t = [key_t ; gates_t] is written into one d × d
Hopfield matrix with Storkey's rule (`hopfield_mask_store.py`); the scores are dropped. The store is
the only thing kept of a task: no copy of the gates, bit-packed or otherwise.

    task given       gates_t = what the store completes from key_t (the key entries held fixed, the
                     gate entries recalled by sign updates); the key is generated again, not kept
    task not given   "entropy": every stored task's gates recalled from its key; the task whose
                     sub-network gives the lowest output entropy (SupSup's rule, served by the store)
                     "recover": the paper's recovery: free scores s from the mean of the recalled
                     patterns, gradient steps on the output entropy of the gates sign(s) annealed
                     towards the Hopfield energy; the task whose key the fixed point carries

Memory: 4 d² bytes (d = key bits + gated units) whatever the number of tasks. Recall from a key is
exact up to about `reliable_capacity` tasks and degrades past it; the figures logged after every task
show where (`hopfield/...`). A d × d matrix is larger than the P · d bits that would keep the same P
patterns bit-packed, for any P it can hold: its point is a fixed size and recall without labels.

Axis legend: b = examples, k = tasks, d = pattern bits, m = gated units.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agentlab.config import check
from agentlab.plasticity.bitpack import pack_bits, packed_size, unpack_bits
from agentlab.plasticity.hopfield_mask_store import HopfieldMaskStore
from agentlab.plasticity.supermask_layers import signed_constant_
from agentlab.plasticity.task_inference import group_sum, output_entropy
from agentlab.plasticity.unit_gates import GateContext, GateValues, UnitGate, gate_of_bits
from agentlab.ports import head_name
from agentlab.protocols import PlasticityModule
from agentlab.registry import BuildEnv, register
from agentlab.wrapping import CompositionError, LayerTargets, freeze_base, select_layers, wrap

MAX_STORE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class HopSupSupConfig(LayerTargets):
    """Per-task unit gates over fixed random weights, kept only in one Hopfield store."""

    values: GateValues = "binary"
    """gate values: {0, 1} ("binary", units switched off) or {-1, +1} ("sign", units' signs flipped)"""
    readout: bool = False
    """gate the read-out's units too (each task then switches classes off); by default the read-out is left alone"""
    init: Literal["signed_constant", "kaiming_normal", "keep"] = "signed_constant"
    """how the gated layers' fixed random weights are drawn ("keep" = the backbone's own init; an ungated read-out keeps it)"""
    key_bits: int = 0
    """bits of the generated key that addresses a task's gates in the store; 0 = half the gated units (at least 32)"""
    sweeps: int = 30
    """synchronous sign updates of a recall (it stops earlier at a fixed point)"""
    infer: Literal["entropy", "recover"] = "entropy"
    """task inference without a label: lowest output entropy of each task's recalled gates, or the paper's recovery"""
    infer_group: int = 1
    """examples that share one inferred task: 1 = each example alone, 0 = the whole batch"""
    infer_chunk: int = 256
    """examples per forward of task inference (bounds memory)"""
    recover_steps: int = 30
    """gradient steps of recovery (infer = "recover")"""
    recover_optimizer: Literal["adam", "sgd"] = "adam"
    """recovery's steps: Adam (steps independent of the entropy gradient's scale) or SGD with momentum 0.9 (the
    reference code's; with near-uniform outputs its steps never flip a gate)"""
    recover_lr: float = 0.05
    """step size of recovery (the reference code's SGD used 10)"""
    recover_gamma: float = 1e-6
    """weight of the Hopfield energy -½ vᵀWv at the end of the annealing; the energy's gradient is ~d times the
    entropy's, so larger weights pull every example to the same mixture state (the reference code's 1.5e-3 does)"""
    keep_exact: bool = False
    """also keep every task's gates bit-packed beside the store, only to measure recall (bit error, exact
    recalls); the ledger counts them per task and forward passes still use the recalled gates"""
    seed: int = -1
    """seed of the fixed random weights, the scores and the keys; -1 = the run seed"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.key_bits >= 0, "key_bits", self.key_bits, "an integer >= 0 (0 = half the gated units)")
        check(self.sweeps >= 1, "sweeps", self.sweeps, "an integer >= 1")
        check(self.infer_group >= 0, "infer_group", self.infer_group, "an integer >= 0")
        check(self.infer_chunk >= 1, "infer_chunk", self.infer_chunk, "an integer >= 1")
        check(self.recover_steps >= 1, "recover_steps", self.recover_steps, "an integer >= 1")
        check(self.recover_lr > 0, "recover_lr", self.recover_lr, "a number > 0")
        check(self.recover_gamma >= 0, "recover_gamma", self.recover_gamma, "a number >= 0")


def _seed(seed: int, task_id: int, stream: int) -> int:
    """A seed for task `task_id`'s scores (stream 0) or key (stream 1), independent of the weights' seed."""
    return int(np.random.SeedSequence([seed, task_id, 0x4B05, stream]).generate_state(1)[0])


class HopSupSup(PlasticityModule):
    """Unit gates per task, held only as attractors of a Hopfield store; see the module docstring."""

    def __init__(self, cfg: HopSupSupConfig = HopSupSupConfig(), *, name: str = "hopsupsup", seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.seed = seed
        self.ctx = GateContext(values=cfg.values)
        self._gates: dict[str, UnitGate] = {}  # inside the backbone (saved there), kept here unregistered
        self.layout: list[tuple[str, int]] = []  # (layer, units) in pattern order
        self.key_bits = 0
        self.store: HopfieldMaskStore | None = None
        self.tasks: list[int] = []  # tasks whose gates the store holds, in the order written
        self.learning: set[int] = set()  # tasks whose scores train now (`training` is nn.Module's flag)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()  # recalled patterns of recently used tasks
        self._exact_view = False
        self._figures: dict[str, float] = {}

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        chosen = select_layers(backbone, self.cfg, owner=self.name)
        if not self.cfg.readout:
            head = head_name(backbone)
            chosen = [n for n in chosen if n != head]
            if not chosen:
                raise CompositionError(f"{self.name}: the layers chosen ({self.cfg.layers}) are only the read-out {head!r}; "
                                       "gate hidden layers (`layers`) or set readout = true")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for n in chosen:
                layer = wrap(backbone, n)
                base = layer.base_layer
                if self.cfg.init == "signed_constant":
                    signed_constant_(base.weight, density=1.0, scale_fan=False)
                elif self.cfg.init == "kaiming_normal":
                    nn.init.kaiming_normal_(base.weight)
                units = base.weight.shape[0]
                self._gates[n] = layer.add(self.name, UnitGate(self.ctx, n, units))  # type: ignore[assignment]
                self.layout.append((n, units))
        m = sum(u for _, u in self.layout)
        self.key_bits = self.cfg.key_bits or max(32, m // 2)
        d = self.key_bits + m
        if 4 * d * d > MAX_STORE_BYTES:
            raise CompositionError(
                f"{self.name}: a store over {m} gated units and {self.key_bits} key bits is a {d}x{d} matrix "
                f"({4 * d * d / 2**20:.0f} MiB, more than {MAX_STORE_BYTES // 2**20} MiB); gate fewer layers (`layers`/`exclude`) "
                "or set key_bits lower")
        self.store = HopfieldMaskStore(d)
        # Gates select from a fixed random network: nothing of the backbone may learn, or old tasks' outputs would move.
        freeze_base(backbone)

    @property
    def units(self) -> int:
        """Gated units: the gate bits of one task."""
        return sum(u for _, u in self.layout)

    def layer_transforms(self) -> list[nn.Module]:
        return list(self._gates.values())

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The scores of the task in training, inside the backbone (the ledger counts them here)."""
        for g in self._gates.values():
            yield from g.scores.values()

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """The store, and the bit-packed copies `keep_exact` keeps."""
        if self.store is not None:
            yield from self.store.buffers()
        yield from (getattr(self, f"exact_{t}") for t in self.tasks if hasattr(self, f"exact_{t}"))

    # ------------------------------------------------------------------ keys and patterns
    def key(self, t: int) -> Tensor:
        """Task t's key, ±1 (key_bits,): generated from (seed, t) whenever it is needed, never stored."""
        g = torch.Generator().manual_seed(_seed(self.seed, t, 1))
        return (torch.randint(0, 2, (self.key_bits,), generator=g) * 2 - 1).float()

    def _where_key(self, device: torch.device) -> Tensor:
        where = torch.zeros(self.store.d, dtype=torch.bool, device=device)
        where[: self.key_bits] = True
        return where

    def recall(self, tasks: list[int]) -> Tensor:
        """The patterns (k, d) ±1 the store completes from the tasks' keys (the exact ones under `serving_exact`)."""
        assert self.store is not None
        dev = self.store.W.device
        if self._exact_view:
            return torch.stack([self.exact_pattern(t) for t in tasks]).to(dev)
        missing = [t for t in tasks if t not in self._cache]
        if missing:
            cues = torch.zeros(len(missing), self.store.d, device=dev)
            cues[:, : self.key_bits] = torch.stack([self.key(t) for t in missing]).to(dev)
            got = self.store.complete(cues, self._where_key(dev), sweeps=self.cfg.sweeps)
            for t, p in zip(missing, got):
                self._cache[t] = p
        out = []
        for t in tasks:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > max(64, len(tasks)):
            self._cache.popitem(last=False)
        return torch.stack(out)

    def _split(self, bits: Tensor) -> dict[str, Tensor]:
        """Gate bits (..., m) ±1 -> layer name -> gate values (..., units)."""
        out, start = {}, 0
        for n, u in self.layout:
            out[n] = gate_of_bits(bits[..., start : start + u], self.cfg.values)
            start += u
        return out

    def _trained_bits(self, t: int) -> Tensor:
        """Task t's gates from its scores, ±1 (m,)."""
        return torch.cat([torch.where(self._gates[n].scores[str(t)].detach() >= 0, 1.0, -1.0) for n, _ in self.layout])

    def exact_pattern(self, t: int) -> Tensor:
        """[key_t ; gates_t] as trained, ±1 (d,): only with `keep_exact`."""
        if not hasattr(self, f"exact_{t}"):
            raise KeyError(f"{self.name}: no exact copy of task {t}'s gates (keep_exact = false, or task {t} not stored)")
        bits = unpack_bits(getattr(self, f"exact_{t}"), (self.units,), torch.float32) * 2 - 1
        return torch.cat([self.key(t), bits.cpu()])

    # ------------------------------------------------------------------ task hooks
    def on_task_start(self, task: Any) -> None:
        if task.id not in self.tasks and task.id not in self.learning:
            g = torch.Generator().manual_seed(_seed(self.seed, task.id, 0))
            for gate in self._gates.values():
                gate.add_task(task.id, g)
            self.learning.add(task.id)
        self.set_task(task.id)

    def on_task_end(self, task: Any) -> None:
        t = task.id
        if t not in self.learning:
            return
        assert self.store is not None
        bits = self._trained_bits(t)
        pattern = torch.cat([self.key(t), bits.cpu()])
        self.store.write(pattern)
        for gate in self._gates.values():
            gate.drop_task(t)
        self.learning.discard(t)
        self.tasks.append(t)
        if self.cfg.keep_exact:
            self.register_buffer(f"exact_{t}", pack_bits((bits > 0).float()).to(self.store.W.device))
        self._cache.clear()
        self._figures = self._measure(t, pattern)
        self.set_task(t)

    def set_task(self, task_id: int | None) -> None:
        c = self.ctx
        c.mode, c.task, c.gates = "base", None, {}
        if task_id is None:
            return
        if task_id in self.learning:
            c.mode, c.task = "task", task_id
        elif task_id in self.tasks:
            c.mode, c.task = "task", task_id
            c.gates = self._split(self.recall([task_id])[0, self.key_bits :])

    # ------------------------------------------------------------------ task inference
    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None:
        return self.infer(x, forward, self.cfg.infer)

    def infer(self, x: Tensor, forward: Any, method: str) -> Tensor | None:
        """Task ids (b,) among the stored tasks for inputs x, by `method` ("entropy" or "recover")."""
        tasks = list(self.tasks)
        if not tasks:
            return None
        ids = torch.tensor(tasks, dtype=torch.long, device=x.device)
        if len(tasks) == 1:
            return ids.expand(x.shape[0]).clone()
        was = (self.ctx.mode, self.ctx.task, self.ctx.gates)
        try:
            out = []
            for start in range(0, x.shape[0], self.cfg.infer_chunk):
                xb = x[start : start + self.cfg.infer_chunk]
                out.append(self._entropy_rule(xb, forward, tasks) if method == "entropy" else self._recover(xb, forward, tasks))
            return ids[torch.cat(out)]
        finally:
            self.ctx.mode, self.ctx.task, self.ctx.gates = was
            self.ctx.example_gates = {}

    @torch.no_grad()
    def _entropy_rule(self, x: Tensor, forward: Any, tasks: list[int]) -> Tensor:
        """Index of the task whose recalled gates give the lowest output entropy, per example or group; (b,)."""
        patterns = self.recall(tasks)  # (k, d)
        cols = []
        for p in patterns:
            self.ctx.mode, self.ctx.gates = "task", self._split(p[self.key_bits :])
            self.ctx.task = -1  # a task id no gate is training
            cols.append(output_entropy(forward(x)))
        return group_sum(torch.stack(cols, 1), self.cfg.infer_group).argmin(1)

    def _recover(self, x: Tensor, forward: Any, tasks: list[int]) -> Tensor:
        """HopSupSup recovery: from the mean of the stored patterns, entropy annealed towards energy; (b,)."""
        assert self.store is not None
        patterns = self.recall(tasks)  # (k, d)
        b = x.shape[0]
        size = b if self.cfg.infer_group == 0 else self.cfg.infer_group
        group = torch.arange(b, device=x.device) // size  # (b,) the group of each example
        n_groups = int(group.max()) + 1
        s0 = patterns.mean(0).expand(n_groups, -1)  # the superposition the reference code starts from

        def objective(v: Tensor) -> Tensor:  # v (groups, d) ±1, straight-through
            self.ctx.mode = "examples"
            self.ctx.example_gates = self._split(v[group, self.key_bits :])
            h = output_entropy(forward(x))  # (b,)
            return torch.zeros(n_groups, device=x.device).index_add(0, group, h) / torch.bincount(group, minlength=n_groups)

        got = self.store.recover(objective, s0, steps=self.cfg.recover_steps, lr=self.cfg.recover_lr,
                                 gamma=self.cfg.recover_gamma, momentum=0.9, optimizer=self.cfg.recover_optimizer,
                                 straight_through=True, sweeps=self.cfg.sweeps)  # (groups, d)
        keys = torch.stack([self.key(t) for t in tasks]).to(got.device)  # (k, key_bits)
        return (got[:, : self.key_bits] @ keys.T).argmax(1)[group]

    # ------------------------------------------------------------------ measuring the store
    @contextmanager
    def serving_exact(self) -> Iterator[None]:
        """Inside, forward passes and task inference use the exact copies `keep_exact` keeps instead of the store."""
        if not self.cfg.keep_exact:
            raise KeyError(f"{self.name}: serving_exact needs keep_exact = true")
        self._exact_view = True
        try:
            yield
        finally:
            self._exact_view = False

    @contextmanager
    def using_store(self, store: HopfieldMaskStore, tasks: list[int] | None = None) -> Iterator[None]:
        """Inside, gates are recalled from `store` (e.g. one holding only the first P patterns) instead of the module's,
        and task inference chooses among `tasks` (default: every stored task)."""
        own, self.store = self.store, store
        own_tasks = self.tasks
        if tasks is not None:
            self.tasks = list(tasks)
        self._cache.clear()
        try:
            yield
        finally:
            self.store, self.tasks = own, own_tasks
            self._cache.clear()

    def _probe(self) -> list[int]:
        """Stored tasks the per-task figures look at: all, or 128 spread evenly over them."""
        if len(self.tasks) <= 128:
            return list(self.tasks)
        return [self.tasks[i] for i in np.linspace(0, len(self.tasks) - 1, 128).round().astype(int)]

    @torch.no_grad()
    def _measure(self, new: int, pattern: Tensor) -> dict[str, float]:
        """Figures after writing task `new`: its recall, the stability of the stored tasks' recalls, exact recall."""
        assert self.store is not None
        m = self.key_bits
        got = self.recall([new])[0].cpu()
        out = {"new_recall_bit_err": float((got[m:] != pattern[m:]).float().mean())}
        probe = self._probe()
        recalled = self.recall(probe)  # (k, d)
        free = self.store.recall(recalled, sweeps=self.cfg.sweeps)
        keys = torch.stack([self.key(t) for t in probe]).to(free.device)
        # a stored task's recall is stable when the free dynamics keep it where it is, its own key included
        out["key_stable"] = float((free[:, :m] == keys).all(1).float().mean())
        out["fixed_point"] = float((free == recalled).all(1).float().mean())
        if self.cfg.keep_exact:
            exact = torch.stack([self.exact_pattern(t) for t in probe]).to(recalled.device)
            wrong = recalled[:, m:] != exact[:, m:]
            out["recall_bit_err"] = float(wrong.float().mean())
            out["mask_recall_acc"] = float((~wrong.any(1)).float().mean())
        return out

    # ------------------------------------------------------------------ state, ledger and figures
    def get_extra_state(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "training": sorted(self.learning)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.tasks = [int(t) for t in state.get("tasks", [])]
        self.learning = {int(t) for t in state.get("training", [])}
        self._cache.clear()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        for key, value in state_dict.items():  # the exact copies a checkpoint holds
            name = key[len(prefix):] if key.startswith(prefix) else ""
            if name.startswith("exact_") and "." not in name:
                self.register_buffer(name, torch.empty_like(value))
        self._cache.clear()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def state_bytes(self) -> dict[int, int]:
        """Per task: nothing once stored (0 B; the store is shared), the scores while it trains, the exact copy if kept."""
        out = {t: packed_size(self.units) if self.cfg.keep_exact else 0 for t in self.tasks}
        for t in self.learning:
            out[t] = sum(g.scores[str(t)].numel() * 4 for g in self._gates.values() if str(t) in g.scores)
        return out

    def shared_bytes(self) -> int:
        return self.store.nbytes() if self.store is not None else 0

    def scalars(self) -> dict[str, float]:
        if self.store is None:
            return {}
        out = {
            "hopfield/tasks_stored": float(len(self.tasks)),
            "hopfield/capacity": float(self.store.reliable_capacity),
            "hopfield/storkey_capacity": float(self.store.capacity),
            "hopfield/d": float(self.store.d),
            "hopfield/key_bits": float(self.key_bits),
            "hopfield/bytes": float(self.store.nbytes()),
            "hopfield/packed_bytes_per_task": float(packed_size(self.units)),
        }
        out.update({f"hopfield/{k}": v for k, v in self._figures.items()})
        return out


@register("plasticity", "hopsupsup", HopSupSupConfig)
def build_hopsupsup(cfg: HopSupSupConfig, env: BuildEnv) -> HopSupSup:
    """HopSupSup: per-task unit gates over fixed random weights, kept only in one Hopfield store (no per-task copy)."""
    return HopSupSup(cfg, seed=env.seed if cfg.seed < 0 else cfg.seed)
