"""FNNSP: a flexible network with structural plasticity and per-task controller masks over modules.

Every wrapped hidden `Linear` splits its output units into a pool of M worker modules
(contiguous groups of units). Per task a controller chooses which modules are on:

    gate_t = top-k(controller logits_t) over the modules this task may use   (straight-through sigmoid)
    h = (W x + b) ⊙ repeat(gate_t, per module)

Structural plasticity, between tasks (`on_task_start` / `on_task_end`):

    activate     the pool starts with `initial_active` modules awake; dormant ones are woken
                 when fewer than `new_modules_per_task` free modules remain
    reconnect    a new controller starts biased towards the modules the previous task used
                 (transfer) and towards the free modules designated for this task (capacity)
    specialise   at task end the designated modules the task switched on become its own:
                 protected, never trained again

Hybrid fine-tuning: a task trains its controller and only the weights of its designated free
modules; weights that any earlier task depends on are frozen entry by entry — W[r, c]
is protected when row r feeds a protected module (or an output row an earlier task reads)
and column c comes from a protected module (or the input). Since an earlier task gates
every unprotected module off, its outputs cannot change (tested bit-identical).

Axis legend: b = examples, m = modules, u = units per module, t = tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.protocols import PlasticityModule
from agentlab.registry import BuildEnv, register
from agentlab.wrapping import CompositionError, LayerTargets, LayerTransform, freeze_base, select_layers, wrap

FREE, DORMANT = -1, -2


@dataclass(frozen=True)
class FNNSPConfig(LayerTargets):
    """Worker-module pools with learned sparse per-task controller masks and structural plasticity.

    Of the Linear layers `layers` / `exclude` choose, the last one is the read-out (not split into modules)."""

    modules: int = 16
    """worker modules per hidden layer (the layer width must divide by it)"""
    active_modules: int = 6
    """modules the controller switches on per task and layer (the sparsity of the controller mask)"""
    new_modules_per_task: int = 2
    """free modules per layer a task (after the first) may train and then specialise"""
    initial_active: int = 8
    """modules awake at the start; the rest are dormant until activated"""
    controller_lr_boost: float = 1.0
    """initial logit bias towards reused and designated modules (reconnection)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.modules >= 2, "modules", self.modules, "an integer >= 2")
        check(1 <= self.active_modules <= self.modules, "active_modules", self.active_modules, f"in [1, modules={self.modules}]")
        check(1 <= self.new_modules_per_task <= self.modules, "new_modules_per_task", self.new_modules_per_task, "in [1, modules]")
        check(1 <= self.initial_active <= self.modules, "initial_active", self.initial_active, "in [1, modules]")
        check(self.controller_lr_boost >= 0, "controller_lr_boost", self.controller_lr_boost, "a number >= 0")


class _GateST(torch.autograd.Function):
    """Forward the hard gate, backward through the soft one (straight-through)."""

    @staticmethod
    def forward(ctx: Any, soft: Tensor, hard: Tensor) -> Tensor:
        return hard

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class ModularLinear(LayerTransform):
    """FNNSP's transform on one Linear: its output units form `modules` gated workers (none for the read-out).

    The gate multiplies the weight's rows and the bias of each module's units, which is the same as
    gating the layer's output, `(W x + b) ⊙ g = (g ⊙ W) x + g ⊙ b`, but is what `.weight` readers see.
    """

    base_weight = "any"  # hybrid fine-tuning trains the unprotected entries when the weights are trainable

    def __init__(self, base_layer: nn.Linear, modules: int | None) -> None:
        super().__init__()
        self.n_modules = modules or 0
        out = base_layer.out_features
        if modules and out % modules:
            raise ValueError(f"fnnsp.modules={modules} does not divide the layer width {out}")
        self.controllers = nn.ParameterDict()  # str(t) -> (M,) logits while task t trains
        self.register_buffer("owner", torch.full((self.n_modules,), FREE, dtype=torch.long))
        self.register_buffer("row_protect", torch.zeros(out, dtype=torch.bool))  # rows earlier tasks read
        self.register_buffer("trainable", torch.ones_like(base_layer.weight, dtype=torch.bool))
        self.gate: Tensor | None = None  # (M,) hard gate in use now; None = all units on
        self.gates: dict[int, Tensor] = {}
        self.last_act: Tensor | None = None  # (b, m) mean |activation| per module of the last batch

    def set_gates(self, t: int, g: Tensor) -> None:
        self.gates[t] = g
        self.register_buffer(f"gate_{t}", g.to(torch.bool))

    def current_gate(self, t: int | None, allowed: Tensor | None) -> Tensor | None:
        if not self.n_modules or t is None:
            return None
        if str(t) in self.controllers:
            logits = self.controllers[str(t)]
            if allowed is not None:
                logits = logits.masked_fill(~allowed, -1e4)
            k = min(int(allowed.sum()) if allowed is not None else self.n_modules, self._k)
            hard = torch.zeros_like(logits).scatter_(0, logits.topk(k).indices, 1.0)
            return _GateST.apply(torch.sigmoid(logits), hard)
        if t in self.gates:
            return self.gates[t].float()
        return None

    def _unit_gate(self) -> Tensor | None:
        """The gate per output unit (o,), or None when every unit is on."""
        if not self.n_modules or self.gate is None:
            return None
        return repeat(self.gate, "m -> (m u)", u=self.base_layer.out_features // self.n_modules)

    def transform_weight(self, w: Tensor) -> Tensor:
        w = torch.where(self.trainable, w, w.detach())
        g = self._unit_gate()
        return w if g is None else w * g[:, None]

    def transform_bias(self, b: Tensor | None) -> Tensor | None:
        if b is None:
            return None
        b = torch.where(self.row_protect, b.detach(), b)
        g = self._unit_gate()
        return b if g is None else b * g

    def observe(self, x: Tensor, y: Tensor) -> None:
        if self.n_modules:
            self.last_act = rearrange(y.detach().abs(), "... (m u) -> (...) m u", m=self.n_modules).mean(-1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        for key, value in state_dict.items():
            name = key[len(prefix):] if key.startswith(prefix) else ""
            if name.startswith("gate_") and "." not in name:
                self.set_gates(int(name[5:]), torch.zeros_like(value))
            elif name.startswith("controllers.") and name.count(".") == 1 and name[12:] not in self.controllers:
                self.controllers[name[12:]] = nn.Parameter(torch.zeros_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args)
        for t in list(self.gates):
            self.gates[t] = getattr(self, f"gate_{t}").float()


class FNNSP(PlasticityModule):
    """See the module docstring."""

    def __init__(self, cfg: FNNSPConfig = FNNSPConfig(), *, name: str = "fnnsp") -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name
        self._layers: list[ModularLinear] = []
        self.allowed: dict[int, list[Tensor]] = {}  # per task and hidden layer: modules it may switch on
        self.task: int | None = None
        self.frac_updated: dict[int, float] = {}
        self._before: list[Tensor] = []
        self._corr: np.ndarray | None = None
        self.readout_rows: dict[int, list[int]] = {}  # per task: the read-out rows it trained (forget_task erases them)

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        object.__setattr__(self, "_backbone", backbone)  # a reference: the agent owns the backbone
        names = select_layers(backbone, self.cfg, owner=self.name, kinds=(nn.Linear,))
        if len(names) < 2:
            raise CompositionError(f"{self.name} needs >= 2 Linear layers (hidden ones and a read-out); "
                                   f"{self.name}.layers={self.cfg.layers} chooses {names}")
        widths = [(backbone.get_submodule(n).in_features, backbone.get_submodule(n).out_features) for n in names]
        for (a, (_, out)), (b, (inp, _)) in zip(zip(names, widths), zip(names[1:], widths[1:])):
            if out != inp:  # the protection of weights entry by entry follows units from one layer into the next
                raise CompositionError(f"{self.name} manages a chain of Linear layers, each reading the previous one's "
                                       f"units; {a!r} ({out} outputs) does not feed {b!r} ({inp} inputs): choose chained "
                                       f"layers with {self.name}.layers (an MLP's)")
        for i, n in enumerate(names):
            base = wrap(backbone, n).base_layer
            layer = ModularLinear(base, None if i == len(names) - 1 else self.cfg.modules)
            layer._k = self.cfg.active_modules
            if layer.n_modules:
                layer.owner[self.cfg.initial_active:] = DORMANT
            self._layers.append(wrap(backbone, n).add(self.name, layer))  # type: ignore[arg-type]

    def layer_transforms(self) -> list[nn.Module]:
        return list(self._layers)

    @property
    def hidden(self) -> list[ModularLinear]:
        return self._layers[:-1]

    @property
    def trained(self) -> list[int]:
        """Tasks whose controller masks are frozen (restored from a checkpoint too)."""
        return sorted(self.hidden[0].gates)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The controllers this module owns inside the backbone (for the ledger)."""
        for layer in self._layers:
            yield from layer.controllers.values()

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for layer in self.hidden:
            yield from (getattr(layer, f"gate_{t}") for t in layer.gates)

    # ------------------------------------------------------------------ task hooks
    def on_task_start(self, task: Any) -> None:
        t = task.id
        self.task = t
        first = not self.trained
        allowed_all = []
        for layer in self.hidden:
            # activate: wake dormant modules while too few free ones remain
            need = self.cfg.active_modules if first else self.cfg.new_modules_per_task
            free = (layer.owner == FREE).nonzero().squeeze(1)
            dormant = (layer.owner == DORMANT).nonzero().squeeze(1)
            if free.numel() < need and dormant.numel():
                layer.owner[dormant[: need - free.numel()]] = FREE
                free = (layer.owner == FREE).nonzero().squeeze(1)
            designated = free[:need]
            allowed = layer.owner >= 0
            allowed[designated] = True
            allowed_all.append(allowed)
            # reconnect: start from the previous task's wiring plus this task's new modules
            logits = torch.zeros(layer.n_modules, device=layer.owner.device)
            if self.trained:
                logits += self.cfg.controller_lr_boost * layer.gates[self.trained[-1]].to(logits.device)
            logits[designated] += self.cfg.controller_lr_boost
            layer.controllers[str(t)] = nn.Parameter(logits + 0.01 * torch.randn(layer.n_modules, generator=torch.Generator().manual_seed(t)).to(logits.device))
            layer._designated = designated
        self.allowed[t] = allowed_all
        # hybrid fine-tuning: entries feeding protected units from protected units stay frozen
        prev_protect = None  # columns: the input is read by everyone
        for i, layer in enumerate(self._layers):
            rows = layer.row_protect.clone()
            if layer.n_modules:
                rows |= repeat(layer.owner >= 0, "m -> (m u)", u=layer.base_layer.out_features // layer.n_modules)
            cols = torch.ones(layer.base_layer.in_features, dtype=torch.bool, device=rows.device) if prev_protect is None else prev_protect
            layer.trainable.copy_(~(rows[:, None] & cols[None, :]))
            layer.row_protect.copy_(rows)
            prev_protect = rows if layer.n_modules else None
        self._before = [l.base_layer.weight.detach().clone() for l in self._layers]
        self.set_task(t)

    def on_task_end(self, task: Any) -> None:
        t = task.id
        for layer in self.hidden:
            with torch.no_grad():
                g = layer.current_gate(t, self.allowed[t][self.hidden.index(layer)]).detach()
            del layer.controllers[str(t)]
            layer.set_gates(t, g)
            # specialise: designated modules this task switched on become its own
            on = g.bool()
            for m in layer._designated.tolist():
                if on[m]:
                    layer.owner[m] = t
        out = self._layers[-1]
        rows = list(task.classes) if task.classes is not None else list(range(out.base_layer.out_features))
        out.row_protect[rows] = True
        self.readout_rows[t] = [int(r) for r in rows]
        changed = sum(int((l.base_layer.weight.detach() != b).sum()) for l, b in zip(self._layers, self._before))
        total = sum(l.base_layer.weight.numel() for l in self._layers)
        self.frac_updated[t] = changed / total
        acts = [l.last_act for l in self.hidden if l.last_act is not None]
        if acts:
            a = torch.cat(acts, 1).float()  # (b, modules of all layers)
            with np.errstate(invalid="ignore", divide="ignore"):  # a module gated off all batch long has no variance
                self._corr = np.nan_to_num(np.corrcoef(a.T.cpu().numpy()))
        for layer in self._layers:
            layer.trainable.fill_(False)
        # Layers FNNSP does not manage (embeddings, norms) would move under later tasks: fixed once a task depends
        # on them; its own layers' weights stay trainable entry by entry (hybrid fine-tuning, above).
        own = [t for layer in self._layers for t in (layer.base_layer.weight, layer.base_layer.bias) if t is not None]
        freeze_base(self._backbone, keep=own)

    def set_task(self, task_id: int | None) -> None:
        for i, layer in enumerate(self.hidden):
            allowed = self.allowed.get(task_id, [None] * len(self.hidden))[i] if task_id is not None else None
            layer.gate = layer.current_gate(task_id, allowed)

    # ------------------------------------------------------------------ ledger and figures
    def state_bytes(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for layer in self.hidden:
            for t in layer.gates:
                out[t] = out.get(t, 0) + math.ceil(layer.n_modules / 8)  # 1 bit per module
            for k, p in layer.controllers.items():
                out[int(k)] = out.get(int(k), 0) + p.numel() * p.element_size()
        return out

    def scalars(self) -> dict[str, float]:
        if not self.trained:
            return {}
        t = self.trained[-1]
        out = {"frac_weights_updated": self.frac_updated[t],
               "frac_weights_updated_mean": float(np.mean(list(self.frac_updated.values())))}
        for i, layer in enumerate(self.hidden):
            out[f"layer{i}/modules_owned"] = float((layer.owner >= 0).sum())
            out[f"layer{i}/modules_free"] = float((layer.owner == FREE).sum())
            out[f"layer{i}/modules_dormant"] = float((layer.owner == DORMANT).sum())
            out[f"layer{i}/gate_density"] = float(layer.gates[t].mean())
        return out

    def activation_matrix(self) -> np.ndarray:
        """(tasks, modules of all hidden layers): 1 where the task's controller switches the module on."""
        return np.array([np.concatenate([l.gates[t].cpu().numpy() for l in self.hidden]) for t in self.trained])

    def images(self) -> dict[str, Any]:
        from agentlab.tblog import heatmap_image

        if not self.trained:
            return {}
        out = {"module_activation": heatmap_image(self.activation_matrix(), title="controller mask (1 = module on)",
                                                  xlabel="module (layers side by side)", ylabel="task")}
        if self._corr is not None:
            out["module_correlation"] = heatmap_image(self._corr, title="module activation correlation",
                                                      xlabel="module", ylabel="module", vmin=-1.0, vmax=1.0)
        return out

    # ------------------------------------------------------------------ checkpoints and exact forgetting
    def get_extra_state(self) -> dict[str, Any]:
        return {"readout_rows": {str(t): rows for t, rows in self.readout_rows.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.readout_rows = {int(t): [int(r) for r in rows] for t, rows in state.get("readout_rows", {}).items()}

    @torch.no_grad()
    def forget_task(self, task_id: int) -> int:
        """Drop the task's controller masks and return the modules it owned to the pool of free modules, their weights
        (rows, the next layer's entries reading them, the task's read-out rows) drawn afresh as an untrained layer's
        (PyTorch's Linear initialisation, from a generator seeded by the task id). No other task reads any of them:
        refused when a later task switches on a module the task owns or shares its read-out rows."""
        t = task_id
        if t not in self.trained:
            return 0
        if t not in self.readout_rows:
            raise CannotForget(f"{self.name}: no record of the read-out rows task {t} trained (a checkpoint without it)")
        for i, layer in enumerate(self.hidden):
            owned = layer.owner == t
            users = [u for u, g in layer.gates.items() if u != t and bool((g.bool() & owned).any())]
            if users:
                raise CannotForget(f"{self.name}: tasks {sorted(users)} switch on modules task {t} owns (layer {i}: "
                                   f"modules {owned.nonzero().squeeze(1).tolist()}), so their outputs depend on them")
        rows_t = set(self.readout_rows[t])
        sharing = sorted(u for u, rows in self.readout_rows.items() if u != t and rows_t & set(rows))
        if sharing:
            raise CannotForget(f"{self.name}: tasks {sharing} train and read the same output rows as task {t}")
        freed = self.state_bytes().get(t, 0)
        g = torch.Generator().manual_seed(0xF0E7 + t)
        for i, layer in enumerate(self.hidden):
            units = repeat(layer.owner == t, "m -> (m u)", u=layer.base_layer.out_features // layer.n_modules)
            _redraw(layer.base_layer, rows=units, cols=None, generator=g)
            _redraw(self._layers[i + 1].base_layer, rows=None, cols=units, generator=g)
            layer.row_protect[units] = False
            layer.owner[layer.owner == t] = FREE
            layer.gates.pop(t, None)
            layer._buffers.pop(f"gate_{t}", None)
        out = self._layers[-1]
        readout = torch.zeros(out.base_layer.out_features, dtype=torch.bool, device=out.row_protect.device)
        readout[sorted(rows_t)] = True
        _redraw(out.base_layer, rows=readout, cols=None, generator=g)
        out.row_protect[readout] = False
        for d in (self.readout_rows, self.allowed, self.frac_updated):
            d.pop(t, None)
        self.set_task(None)
        return freed


def _redraw(layer: nn.Linear, *, rows: Tensor | None, cols: Tensor | None, generator: torch.Generator) -> None:
    """Draw the entries of `layer` in the chosen rows (with their biases) or columns afresh, as `nn.Linear` initialises
    them: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5))."""
    w, b = layer.weight, layer.bias
    bound = 1.0 / math.sqrt(w.shape[1])
    fresh = (torch.rand(w.shape, generator=generator) * 2 - 1).mul_(bound).to(w.device, w.dtype)
    pick = torch.zeros_like(w, dtype=torch.bool)
    if rows is not None:
        pick[rows.to(w.device)] = True
    if cols is not None:
        pick[:, cols.to(w.device)] = True
    w.data[pick] = fresh[pick]
    if b is not None and rows is not None:
        fresh_b = (torch.rand(b.shape, generator=generator) * 2 - 1).mul_(bound).to(b.device, b.dtype)
        b.data[rows.to(b.device)] = fresh_b[rows.to(b.device)]


@register("plasticity", "fnnsp", FNNSPConfig)
def build_fnnsp(cfg: FNNSPConfig, env: BuildEnv) -> FNNSP:
    """FNNSP: worker-module pools, sparse per-task controller masks, structural plasticity, hybrid fine-tuning."""
    return FNNSP(cfg)
