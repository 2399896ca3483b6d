"""SupSup: one binary supermask per task over fixed random weights (Wortsman et al., NeurIPS 2020).

    attach          wrap the Linear/Conv2d layers `layers` / `exclude` choose (weights re-drawn as
                    signed constants and frozen) and every BatchNorm (per-task, non-affine)
    on_task_start   fresh scores for the task; only they train
    on_task_end     mask = top-k%(|scores|), packed 1 bit per weight; scores dropped;
                    optionally (an experiment) the mask of one small layer is also written to a
                    Hopfield side store; `hopsupsup` is the mode in which a store holds the masks
    set_task(t)     sub-network t; None (or a task never trained) = the plain base layers
    infer_task(x)   entropy gradient over the superposition coefficients α (one-shot or
                    binary search; per example or per group), or Hopfield recovery

Old tasks cannot be forgotten by accident: their masks are frozen bits and the weights never change;
`forget_task` removes one on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agentlab.config import check
from agentlab.layers import replace_layer
from agentlab.plasticity.hopfield_mask_store import HopfieldMaskStore
from agentlab.plasticity.supermask_layers import MaskContext, SupermaskLayer, TaskBatchNorm, signed_constant_
from agentlab.plasticity.task_inference import g_objective, infer_tasks, output_entropy
from agentlab.protocols import PlasticityModule
from agentlab.registry import BuildEnv, register
from agentlab.wrapping import LayerTargets, freeze_base, select_layers, wrap


@dataclass(frozen=True)
class SupSupConfig(LayerTargets):
    """Supermasks in superposition: per-task binary masks over fixed random weights."""

    density: float = 0.5
    """fraction of weights each task's top-k mask keeps (rule "topk")"""
    rule: Literal["topk", "threshold"] = "topk"
    """mask = top-k% of |scores| ("topk", GG) or scores >= 0 ("threshold", GNu)"""
    init: Literal["signed_constant", "kaiming_normal", "keep"] = "signed_constant"
    """how the fixed random weights are drawn ("keep" = the backbone's own init)"""
    scale_fan: bool = True
    """signed-constant scale uses the kept fan-in (fan_in * density)"""
    infer: Literal["oneshot", "binary", "entropy", "hopfield"] = "oneshot"
    """task inference without a label: entropy gradient one-shot, binary search, lowest entropy of each mask, or Hopfield
    recovery from the side store (an experiment, less accurate than the entropy rules)"""
    objective: Literal["entropy", "g"] = "entropy"
    """what task inference minimises: output entropy (H) or the log-sum-exp over superfluous output units (G)"""
    real_outputs: int = 10
    """objective "g": output units that are real classes (the rest are superfluous)"""
    infer_group: int = 1
    """examples that share one inferred task: 1 = each example alone, 0 = the whole batch"""
    infer_chunk: int = 256
    """examples per superposed forward (bounds memory)"""
    stack_cache_mb: float = 1024.0
    """memory (on the weights' device) for the masked weights W ⊙ M_i that task inference superposes,
    kept across batches; 0 = unpack every mask for every batch (slow beyond a few tasks)"""
    hopfield: bool = False
    """experiment: also write each task's mask of `hopfield_layer` into a Hopfield side store (logs size and recall
    error); the masks stay bit-packed, so the store only costs memory unless infer = "hopfield" (see `hopsupsup`)"""
    hopfield_layer: str = ""
    """name of the wrapped Linear layer whose masks the store holds; '' = the smallest wrapped layer"""
    hopfield_noise: float = 0.1
    """fraction of bits flipped in the cues used to measure recall"""
    hopfield_steps: int = 30
    """gradient steps of Hopfield recovery (infer = "hopfield")"""
    seed: int = -1
    """seed of the fixed random weights and scores; -1 = the run seed"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.density <= 1.0, "density", self.density, "in (0, 1]")
        check(self.real_outputs >= 1, "real_outputs", self.real_outputs, "an integer >= 1")
        check(self.infer_group >= 0, "infer_group", self.infer_group, "an integer >= 0")
        check(self.infer_chunk >= 1, "infer_chunk", self.infer_chunk, "an integer >= 1")
        check(self.stack_cache_mb >= 0, "stack_cache_mb", self.stack_cache_mb, "a number of MiB >= 0")
        check(0.0 <= self.hopfield_noise < 0.5, "hopfield_noise", self.hopfield_noise, "in [0, 0.5)")
        check(self.hopfield_steps >= 1, "hopfield_steps", self.hopfield_steps, "an integer >= 1")
        check(self.infer != "hopfield" or self.hopfield, "infer", self.infer, "'oneshot', 'binary' or 'entropy' unless hopfield = true")


def score_seed(seed: int, task_id: int) -> int:
    """Seed of task `task_id`'s initial scores: independent of the weights' seed `seed` and of other tasks."""
    return int(np.random.SeedSequence([seed, task_id, 0x5C0E]).generate_state(1)[0])


class SupSup(PlasticityModule):
    """Per-task supermasks with task inference; see the module docstring."""

    def __init__(self, cfg: SupSupConfig = SupSupConfig(), *, name: str = "supsup", seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.seed = seed
        self.ctx = MaskContext()
        # The wrappers live inside the backbone (their state is saved there); kept here unregistered.
        self._layers: dict[str, SupermaskLayer] = {}
        self._norms: dict[str, TaskBatchNorm] = {}
        self.store: HopfieldMaskStore | None = None
        self._hop_name = ""
        self._confusion: dict[tuple[int, int], int] = {}
        self._recall: tuple[float, float] | None = None

    # ------------------------------------------------------------------ structure
    def attach(self, backbone: nn.Module) -> None:
        chosen = set(select_layers(backbone, self.cfg, owner=self.name))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for name, mod in list(backbone.named_modules()):
                if name in chosen:
                    layer = wrap(backbone, name)
                    base = layer.base_layer
                    if self.cfg.init == "signed_constant":
                        signed_constant_(base.weight, density=self.cfg.density, scale_fan=self.cfg.scale_fan)
                    elif self.cfg.init == "kaiming_normal":
                        nn.init.kaiming_normal_(base.weight)
                    self._layers[name] = layer.add(self.name, SupermaskLayer(
                        self.ctx, rule=self.cfg.rule, density=self.cfg.density,
                        stack_cache_bytes=int(self.cfg.stack_cache_mb * 2**20)))  # type: ignore[assignment]
                    for p in base.parameters():
                        p.requires_grad_(False)
                elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    norm = TaskBatchNorm(mod, self.ctx)
                    replace_layer(backbone, name, norm)
                    self._norms[name] = norm
        if self.cfg.hopfield:
            linear = {n: l for n, l in self._layers.items() if isinstance(l.base_layer, nn.Linear)}
            name = self.cfg.hopfield_layer or min(linear, key=lambda n: linear[n].weight.numel(), default="")
            if name not in linear:
                raise ValueError(f"supsup.hopfield_layer={name!r} is not a wrapped Linear layer; wrapped: {list(linear)}")
            d = linear[name].weight.numel()
            if 4 * d * d > 256 * 2**20:  # the store is a dense d x d float32 matrix
                raise ValueError(
                    f"supsup.hopfield: a Hopfield store over layer {name!r} would hold a {d}x{d} matrix "
                    f"({4 * d * d / 2**30:.1f} GiB); name a smaller layer in hopfield_layer or set hopfield = false"
                )
            self._hop_name = name
            self.store = HopfieldMaskStore(d)
        # Supermasks select from a fixed random network: nothing else of the backbone may learn either, or old
        # tasks' outputs would move (layers SupSup cannot mask, an LSTM's or an embedding's, stay as initialised).
        freeze_base(backbone)

    def _wrappers(self) -> list[SupermaskLayer | TaskBatchNorm]:
        return [*self._layers.values(), *self._norms.values()]

    def layer_transforms(self) -> list[nn.Module]:
        return self._wrappers()

    @property
    def tasks(self) -> list[int]:
        """Tasks whose masks are frozen (those task inference chooses among), in training order."""
        return list(next(iter(self._layers.values())).frozen) if self._layers else []

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The per-task scores this module owns inside the backbone (the ledger counts them here)."""
        for layer in self._layers.values():
            yield from layer.scores.values()

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """Packed masks and per-task BatchNorm statistics this module owns inside the backbone, and the store."""
        for layer in self._layers.values():
            yield from (getattr(layer, f"mask_{t}") for t in layer.frozen)
        for norm in self._norms.values():
            yield from norm.per_task.buffers()
        if self.store is not None:
            yield from self.store.buffers()

    # ------------------------------------------------------------------ task hooks
    def on_task_start(self, task: Any) -> None:
        with torch.random.fork_rng(devices=[]):
            # A seed stream of its own: seeding scores with the weights' seed (task 0 of seed 0 did)
            # draws score signs anti-correlated with the weight signs (75% disagree), a bad start.
            torch.manual_seed(score_seed(self.seed, task.id))
            for w in self._wrappers():
                if not w.has_task(task.id):
                    w.add_task(task.id)
        device = next(iter(self._layers.values())).weight.device
        for w in self._wrappers():
            w.to(device)
        self.set_task(task.id)

    def on_task_end(self, task: Any) -> None:
        for w in self._wrappers():
            w.freeze_task(task.id)
        if self.store is not None:
            layer = self._layers[self._hop_name]
            self.store.write(layer.mask(task.id).reshape(-1))
            self._recall = self._measure_recall()
        self._confusion = {}

    def set_task(self, task_id: int | None) -> None:
        self.ctx.mode = "base" if task_id is None else "task"
        self.ctx.task = task_id

    # ------------------------------------------------------------------ task inference
    def infer_task(self, x: Tensor, forward: Any) -> Tensor | None:
        tasks = self.tasks
        if not tasks:
            return None
        was = (self.ctx.mode, self.ctx.task)
        try:
            if self.cfg.infer == "hopfield" and len(tasks) > 1:
                return self._hopfield_infer(x, forward, tasks)
            objective = g_objective(self.cfg.real_outputs) if self.cfg.objective == "g" else output_entropy
            return infer_tasks(forward, x, self.ctx, tasks, method=self.cfg.infer, group=self.cfg.infer_group,
                               chunk=self.cfg.infer_chunk, objective=objective)
        finally:
            self.ctx.mode, self.ctx.task = was

    def _hopfield_infer(self, x: Tensor, forward: Any, tasks: list[int]) -> Tensor:
        """HopSupSup: recover the Hopfield layer's mask from the entropy, then match it to a stored task.

        Other layers run in uniform superposition; the Hopfield layer uses the per-example soft
        mask (1 + tanh s) / 2 from s = 0, annealed towards the store's energy minimum.
        """
        assert self.store is not None
        layer = self._layers[self._hop_name]
        k = len(tasks)
        out = []
        for start in range(0, x.shape[0], self.cfg.infer_chunk):
            xb = x[start : start + self.cfg.infer_chunk]

            def objective(v: Tensor, xb: Tensor = xb) -> Tensor:
                self.ctx.mode, self.ctx.tasks = "superpose", tasks
                self.ctx.alpha = torch.full((xb.shape[0], k), 1.0 / k, device=xb.device)
                layer.soft_mask = ((1 + v) / 2).reshape(xb.shape[0], *layer.weight.shape)
                try:
                    return output_entropy(forward(xb))
                finally:
                    layer.soft_mask = None

            s0 = torch.zeros(xb.shape[0], self.store.d, device=xb.device)
            got = self.store.recover(objective, s0, steps=self.cfg.hopfield_steps)  # (b, d) ±1
            stored = torch.stack([2 * layer.mask(t).reshape(-1) - 1 for t in tasks])  # (k, d)
            out.append(torch.tensor(tasks, device=x.device)[(got @ stored.T).argmax(1)])
        return torch.cat(out)

    def observe_inference(self, true_task: int, guess: Tensor) -> None:
        for g in guess.tolist():
            self._confusion[(true_task, int(g))] = self._confusion.get((true_task, int(g)), 0) + 1

    # ------------------------------------------------------------------ ledger and figures
    def state_bytes(self) -> dict[int, int]:
        tasks = set(self.tasks) | {int(k) for layer in self._layers.values() for k in layer.scores.keys()}
        out = {t: sum(w.task_bytes(t) for w in self._wrappers()) for t in sorted(tasks)}
        return {t: b for t, b in out.items() if b}

    def shared_bytes(self) -> int:
        return self.store.nbytes() if self.store is not None else 0

    def _measure_recall(self) -> tuple[float, float]:
        assert self.store is not None
        layer = self._layers[self._hop_name]
        recent = self.tasks[-32:]
        patterns = torch.stack([layer.mask(t).reshape(-1) for t in recent])
        return self.store.recall_error(patterns, noise=self.cfg.hopfield_noise, generator=torch.Generator().manual_seed(len(self.tasks)))

    def mask_overlap(self, last: int = 32) -> np.ndarray:
        """IoU of the masks of the last `last` tasks, averaged over layers weighted by size; (n, n)."""
        tasks = self.tasks[-last:]
        n = len(tasks)
        inter = np.zeros((n, n))
        union = np.zeros((n, n))
        for layer in self._layers.values():
            m = torch.stack([layer.mask(t).reshape(-1) for t in tasks])  # (n, weights)
            i = (m @ m.T).double().numpy()
            s = m.sum(1).double().numpy()
            inter += i
            union += s[:, None] + s[None, :] - i
        return inter / np.maximum(union, 1)

    def scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        tasks = self.tasks
        if not tasks:
            return out
        last = tasks[-1]
        for name, layer in self._layers.items():
            out[f"density/{name}"] = float(layer.mask(last).mean())
        if len(tasks) > 1:
            ov = self.mask_overlap(last=8)
            out["mask_overlap_last_vs_prev"] = float(ov[-1, :-1].mean())
        out["tasks_stored"] = float(len(tasks))
        bytes_ = self.state_bytes()
        out["bytes_last_task"] = float(bytes_.get(last, 0))
        if self.store is not None:
            out["hopfield/bytes"] = float(self.store.nbytes())
            out["hopfield/d"] = float(self.store.d)
            out["hopfield/patterns"] = float(len(self.store))
            out["hopfield/capacity"] = float(self.store.capacity)
            if self._recall is not None:
                out["hopfield/recall_bit_err"], out["hopfield/recall_exact"] = self._recall
        return out

    def images(self) -> dict[str, Tensor]:
        from agentlab.tblog import heatmap_image

        out: dict[str, Any] = {}
        tasks = self.tasks
        if len(tasks) > 1:
            out["mask_overlap"] = heatmap_image(self.mask_overlap(), title="mask IoU between tasks",
                                                xlabel="task j", ylabel="task i")
        if self._confusion:
            n = max(max(a, b) for a, b in self._confusion) + 1
            C = np.zeros((n, n))
            for (a, b), c in self._confusion.items():
                C[a, b] = c
            C = C / np.maximum(C.sum(1, keepdims=True), 1)
            out["task_inference_confusion"] = heatmap_image(C, title="task inference (row: true task)",
                                                            xlabel="inferred task", ylabel="true task")
        return out

    # ------------------------------------------------------------------ exact forgetting
    def forget_task(self, task_id: int) -> int:
        """Drop the task's masks and BatchNorm statistics (the weights are fixed: no other task changes); a Hopfield
        store is rebuilt from the remaining masks in their order, as a stream without the task would have written it."""
        freed = self.state_bytes().get(task_id, 0)
        if not freed and not any(w.has_task(task_id) for w in self._wrappers()):
            return 0
        for w in self._wrappers():
            w.drop_task(task_id)
        if self.store is not None:
            self.store.W.zero_()
            self.store.count.zero_()
            for t in self.tasks:
                self.store.write(self._layers[self._hop_name].mask(t).reshape(-1))
            self._recall = self._measure_recall() if self.tasks else None
        if self.ctx.task == task_id:
            self.set_task(None)
        self._confusion = {}
        return freed


@register("plasticity", "supsup", SupSupConfig)
def build_supsup(cfg: SupSupConfig, env: BuildEnv) -> SupSup:
    """SupSup supermasks (fixed random weights, per-task binary masks, task inference by entropy gradient)."""
    return SupSup(cfg, seed=env.seed if cfg.seed < 0 else cfg.seed)
