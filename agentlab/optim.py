"""Optimisers and learning-rate schedules: what every training loop in the library builds its updates with.

One place for the settings (`OptimizerConfig`), the optimiser factory with the fast multi-tensor kernels,
the one cosine schedule, and the backward-and-step of a loss. Learners, memories that pretrain their own
parts (tokenizers, VQ-VAEs) and benchmarks import these; nothing here knows about tasks or agents.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from agentlab.config import check


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser's settings, shared by every learner that builds one with `make_optimizer`."""

    lr: float = 0.01
    """learning rate"""
    optimizer: Literal["sgd", "adam", "rmsprop"] = "adam"
    """optimiser, rebuilt at the start of every task unless `keep_optimizer`"""
    momentum: float = 0.0
    """SGD momentum"""
    weight_decay: float = 0.0
    """L2 penalty"""
    grad_clip: float = 0.0
    """clip the global gradient norm to this value; 0 = off"""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a number >= 0")


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("the agent has no trainable parameters for this task; check the plasticity modules' freezing")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fast_kernels(params))
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast_kernels(params))
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast_kernels(params, fused=True))


def optimizes_exactly(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter]) -> bool:
    """Whether `optimizer` updates exactly these parameter objects, in this order (a kept optimizer stays valid)."""
    kept = [p for g in optimizer.param_groups for p in g["params"]]
    return len(kept) == len(params) and all(a is b for a, b in zip(kept, params))


class KeptOptimizer:
    """The optimizer of a learner's tasks: a fresh one per task, or with `cfg.keep_optimizer` one for the whole
    stream (its moments carried from task to task) while the agent trains the same parameters; a plasticity
    module that changes what is trained gets a fresh optimizer, as the Avalanche bridge does.

    Its state is part of the learner's checkpoint, so a resumed run continues with the same moments.
    """

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    def for_task(self, params: Iterable[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
        params = list(params)
        if cfg.keep_optimizer and self.optimizer is not None and optimizes_exactly(self.optimizer, params):
            return self.optimizer
        self.optimizer = make_optimizer(params, cfg)
        if cfg.keep_optimizer and self._pending is not None:
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(self._pending)
            # the rates come from the config, not the checkpoint: a resume may lower them (`--resume --set learner.lr`)
            for g, lr in zip(self.optimizer.param_groups, lrs):
                g["lr"] = lr
                if "initial_lr" in g:
                    g["initial_lr"] = lr
        self._pending = None
        return self.optimizer

    def state_dict(self) -> dict[str, Any]:
        """The kept optimizer's state with string keys (checkpoints hold JSON trees); empty before the first task."""
        if self.optimizer is None:
            return {}
        state = self.optimizer.state_dict()
        return {"state": {str(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restored into the optimizer the next task builds (the parameters are known only then)."""
        if state:
            self._pending = {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def fast_kernels(params: Sequence[Tensor], *, fused: bool = False) -> dict[str, bool]:
    """Keyword arguments that make a torch optimizer update all tensors in one multi-tensor (`foreach`)
    or `fused` kernel: same update rule, fewer kernel launches. On the CPU PyTorch otherwise loops over
    tensors with several small kernels each; measured on LeNet 300-100 at batch 60, one thread, a whole
    training step took 5.6 ms (default), 2.7 ms (foreach), 2.0 ms (fused Adam). `fused` is for
    Adam / AdamW / SGD, and only taken when every tensor is floating point on one device type."""
    if not params or not all(t.is_floating_point() for t in params):
        return {}
    if fused and len({t.device.type for t in params}) == 1:
        return {"fused": True}
    return {"foreach": True}


def cosine_factor(progress: float) -> float:
    """The one cosine of the library: 0.5 (1 + cos(pi p)) for progress p clamped to [0, 1], so 1 at the start and 0
    from the end on (SGDR, Loshchilov & Hutter 2017, without restarts). Learning rates anneal by it over steps,
    episodes or seconds, and SET's RigL drop fraction over updates (Evci et al. 2020, eq. 1)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class Schedule:
    """A task's learning-rate controller. The training loop tells it the loss after every optimiser step and the
    mean training loss after every pass over the task's data; `after_epoch` returning True ends the task's
    training there (a controller that predicts no further gain stops early). `scalars()` are what it wants logged
    after a pass (tag -> value; the step driver logs them with `charts/lr`). The base class keeps the rate."""

    def after_step(self, loss: float) -> None:
        """One optimiser step was taken; `loss` is its total loss."""

    def after_epoch(self, epoch: int, loss: float) -> bool:
        """Pass `epoch` ended with mean training loss `loss`; True = stop training this task."""
        return False

    def scalars(self) -> dict[str, float]:
        """TensorBoard tags and values describing the latest decision (none for a fixed schedule)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TorchSchedule(Schedule):
    """A `torch.optim.lr_scheduler` stepped after every optimiser step, never past its last step (OneCycleLR
    refuses one more). The rate is a function of the step count alone, so the count is the whole state: loading
    replays the steps on the freshly built scheduler."""

    def __init__(self, sched: Any, total: int) -> None:
        self.sched, self.total, self.steps = sched, total, 0

    def after_step(self, loss: float) -> None:
        if self.steps < self.total:
            self.sched.step()
            self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # replaying without optimiser steps is what we mean here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            for _ in range(int(state.get("steps", 0)) - self.steps):
                self.after_step(0.0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> TorchSchedule:
    """The rate annealed from its initial value to 0 along `cosine_factor` over `total` steps."""
    return TorchSchedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s / total)), total)


def step_schedule(optimizer: torch.optim.Optimizer, total: int, milestones: Sequence[float], gamma: float) -> TorchSchedule:
    """The rate multiplied by `gamma` at each milestone, a fraction of the task's steps (step decay, e.g. the
    0.5 / 0.75 of He et al. 2016)."""
    at = sorted({max(1, round(m * total)) for m in milestones})
    return TorchSchedule(torch.optim.lr_scheduler.MultiStepLR(optimizer, at, gamma), total)


def onecycle_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> TorchSchedule:
    """One cycle (Smith & Topsakal 2018): from lr/25 up to lr over the first `warmup` of the steps, then a cosine
    down to lr/1e4 (PyTorch's `OneCycleLR` defaults). Momentum is left alone (`cycle_momentum=False`), so every
    schedule compared runs the same optimiser."""
    if total < 2:  # OneCycleLR needs two phases of at least one step
        return TorchSchedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), total)
    lrs = [g["lr"] for g in optimizer.param_groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total, pct_start=warmup,
                                                cycle_momentum=False)
    return TorchSchedule(sched, total - 1)  # OneCycleLR's constructor took step 0


class PlateauSchedule(Schedule):
    """ReduceLROnPlateau on the pass's mean training loss: the rate times `gamma` once `patience` passes in a row
    failed to lower the best loss by the relative `threshold`."""

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float, patience: int, threshold: float) -> None:
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=gamma, patience=patience,
                                                                threshold=threshold, threshold_mode="rel")

    def after_epoch(self, epoch: int, loss: float) -> bool:
        self.sched.step(loss)
        return False

    def state_dict(self) -> dict[str, Any]:
        s = self.sched
        return {"best": None if math.isinf(s.best) else s.best, "bad": s.num_bad_epochs, "cooldown": s.cooldown_counter,
                "last_epoch": s.last_epoch, "lrs": [g["lr"] for g in s.optimizer.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            s = self.sched
            s.best = math.inf if state["best"] is None else state["best"]
            s.num_bad_epochs, s.cooldown_counter, s.last_epoch = state["bad"], state["cooldown"], state["last_epoch"]
            for g, lr in zip(s.optimizer.param_groups, state["lrs"]):
                g["lr"] = lr


def lrpo_schedule(optimizer: torch.optim.Optimizer, cfg: Any, total: int) -> Schedule:
    from agentlab.lrpo import LRPO  # LRPO subclasses Schedule, so its module imports this one

    return LRPO(optimizer, cfg.lrpo, gamma=cfg.lr_gamma)


ScheduleFactory = Callable[[torch.optim.Optimizer, Any, int], Schedule]
SCHEDULES: dict[str, ScheduleFactory] = {
    "constant": lambda optimizer, cfg, steps: Schedule(),
    "cosine": lambda optimizer, cfg, steps: cosine_schedule(optimizer, steps),
    "step": lambda optimizer, cfg, steps: step_schedule(optimizer, steps, cfg.lr_milestones, cfg.lr_gamma),
    "onecycle": lambda optimizer, cfg, steps: onecycle_schedule(optimizer, steps, cfg.lr_warmup),
    "plateau": lambda optimizer, cfg, steps: PlateauSchedule(optimizer, cfg.lr_gamma, cfg.plateau_patience, cfg.plateau_threshold),
    "lrpo": lrpo_schedule,
}


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Any, steps: int) -> Schedule:
    """The schedule `cfg.lr_schedule` names over a task of `steps` optimiser steps (with `cfg.max_steps` the
    budget is the smaller of the two)."""
    total = max(1, min(steps, cfg.max_steps) if cfg.max_steps else steps)
    return SCHEDULES[cfg.lr_schedule](optimizer, cfg, total)


def schedule_scalars(schedule: Schedule, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What the training loop logs after every pass: the rate (`charts/lr`, of the first parameter group) and the
    schedule's own scalars (LRPO's predicted and observed loss, its predicted stall)."""
    return {"charts/lr": float(optimizer.param_groups[0]["lr"]), **schedule.scalars()}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (schedules driven by time or episodes rather than steps)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def with_terms(losses: Mapping[str, Tensor], terms: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    """The loss to minimise (the learner's `losses` plus the modules' extra `terms`) and each of them as a
    float for logging, with the sum under "total"."""
    loss = sum(losses.values()) + sum(terms.values())
    logged = {k: float(v.detach()) for k, v in {**losses, **terms}.items()}
    logged["total"] = float(loss.detach())
    return loss, logged


def backward_step(optimizer: torch.optim.Optimizer, loss: Tensor, params: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
    """Zero the gradients, backpropagate `loss`, clip the global gradient norm of `params` to `grad_clip`
    (0 = off; DNC and transformer training diverge without it), take one optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    optimizer.step()
