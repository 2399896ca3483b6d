"""The step driver: the one place where a learner's loss becomes an update of the agent.

A learner supplies batches and its loss; the driver owns everything around them, in one fixed order that every
learner shares (so a plasticity or memory module sees the same hooks under fine-tuning, replay, episodes or
sequences):

    step(compute)
        agent.train()
        out = compute()                          the learner's forward pass and its own losses: a `StepOutput`
        terms = agent.loss_terms(out.batch, out.output)      every module's extra terms, `<module>/<term>`
        loss = sum(out.losses) + sum(terms)      (`agentlab.optim.with_terms`; the floats, "total" included, are logged)
        update(optimizer, loss, params, clip)    zero the gradients, backward, clip the global norm, optimiser step
        agent.after_step(ctx.global_step, out.observed)      plasticity then memory; stores are written with `observed`
        schedule.after_step(total)               the learning-rate controller (`agentlab.optim.Schedule`)
        ctx.step(logged + out.logs, examples)    global step, `losses/<term>` to TensorBoard, NaN check, progress

    end_epoch(epoch)                             at the end of every pass over the task's data
        agent.after_epoch(epoch)                 (SET rewires after the next step)
        schedule.after_epoch(epoch, mean total loss of the pass)    True = the task's training stops here

`run(passes, compute, epochs=..., max_steps=..., until=..., steps=...)` is the loop of steps and passes: `passes(epoch)`
yields the items of one pass, `compute(item)` turns one into a `StepOutput`, `until()` (a time budget) is checked
before each item is drawn. What a pass is belongs to the learner: an epoch over a data set (finetune, replay, joint,
imp, token_replay, personalize's population task), `epoch_steps` freshly sampled batches (sequence), the whole
run of episodes (protonet, memtrans) or of a person's steps (personalize). A learner with a loop of its own calls
`step` and `end_epoch` itself. `steps=` says how many steps the passes hold (passes are generators: only the
learner knows), so the progress bar moves within a task with an ETA (`FitContext.plan`).

The driver is built per task (its step and pass counters are the task's); the optimizer and schedule are the
learner's (`agentlab.optim.make_optimizer`, `KeptOptimizer`, `make_schedule`). `update` is the gradient step,
`agentlab.optim.backward_step` unless a method edits gradients between backward and step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Mapping, TypeVar

import torch
from torch import Tensor

from agentlab.optim import Schedule, backward_step, schedule_scalars, with_terms

Item = TypeVar("Item")
Update = Callable[[torch.optim.Optimizer, Tensor, Iterable[torch.nn.Parameter], float], None]


@dataclass
class StepOutput:
    """What a learner's `compute` returns for one step."""

    losses: Mapping[str, Tensor]
    """the learner's own loss tensors by name (summed with the modules' terms into the loss that is minimised)"""
    output: Any
    """the current task's output, as the modules' `extra_loss(batch, output)` sees it"""
    batch: Any
    """the batch those terms see (with replayed examples where the learner mixes them in)"""
    observed: Any = None
    """the examples this step newly saw, without replayed ones, for `agent.after_step` (memories with a store are
    written with it); None = `batch`"""
    logs: Mapping[str, float] = field(default_factory=dict)
    """extra figures logged with the losses (accuracy, curriculum length...)"""
    examples: int | None = None
    """examples this step trained on, for the examples-per-second chart; None = len(observed)"""


class StepDriver:
    """Runs a learner's steps and passes over one task in the fixed order of the module docstring."""

    def __init__(
        self,
        agent: Any,
        optimizer: torch.optim.Optimizer,
        ctx: Any,
        *,
        grad_clip: float = 0.0,
        schedule: Schedule | None = None,
        update: Update = backward_step,
    ) -> None:
        self.agent = agent
        self.optimizer = optimizer
        self.ctx = ctx
        self.grad_clip = grad_clip
        self.schedule = schedule if schedule is not None else Schedule()
        self.update = update
        self.steps = 0  # optimiser steps taken by this driver (this task)
        self._pass_total, self._pass_steps = 0.0, 0

    def step(self, compute: Callable[[], StepOutput]) -> dict[str, float]:
        """One optimisation step; returns the logged figures (every loss term, "total", the learner's logs)."""
        agent = self.agent
        agent.train()
        out = compute()
        terms = agent.loss_terms(out.batch, out.output)
        loss, logged = with_terms(out.losses, terms)
        self.update(self.optimizer, loss, agent.trainable_parameters(), self.grad_clip)
        observed = out.batch if out.observed is None else out.observed
        agent.after_step(self.ctx.global_step, observed)
        self.schedule.after_step(logged["total"])
        logged.update(out.logs)
        self.ctx.step(logged, out.examples if out.examples is not None else len(observed))
        self.steps += 1
        self._pass_total += logged["total"]
        self._pass_steps += 1
        return logged

    def end_epoch(self, epoch: int) -> bool:
        """A pass over the task's data ended: the modules' `after_epoch`, then the schedule with the pass's mean
        total loss. True = stop training this task."""
        self.agent.after_epoch(epoch)
        mean = self._pass_total / max(self._pass_steps, 1)
        self._pass_total, self._pass_steps = 0.0, 0
        stop = bool(self.schedule.after_epoch(epoch, mean))
        for tag, value in schedule_scalars(self.schedule, self.optimizer).items():
            self.ctx.log_scalar(tag, value, self.ctx.global_step)
        return stop

    def run(
        self,
        passes: Callable[[int], Iterable[Item]],
        compute: Callable[[Item], StepOutput],
        *,
        epochs: int = 1,
        max_steps: int = 0,
        until: Callable[[], bool] | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
        on_epoch: Callable[[int], None] | None = None,
        steps: int = 0,
    ) -> int:
        """Up to `epochs` passes of steps, one per item of `passes(epoch)`, ending early after `max_steps` steps
        (0 = no limit), when `until()` is true before a step (a time budget; checked before the item is drawn), or
        when the schedule stops the task. A pass cut short still ends with `end_epoch`. `on_step(logged)` runs after
        every step, `on_epoch(epoch)` after every pass (bookkeeping such as early-stopping checks). `steps`: how many
        steps the passes hold when nothing cuts them short (0 = not known; `max_steps` caps it), told to the
        context (`ctx.plan`) so the progress bar moves within the task. Returns the steps taken."""
        planned = min(steps, max_steps) if steps and max_steps else steps or max_steps
        if planned and hasattr(self.ctx, "plan"):
            self.ctx.plan(planned)
        for epoch in range(epochs):
            items, steps_before, cut = iter(passes(epoch)), self.steps, False
            while True:
                if until is not None and until():
                    cut = True
                    break
                item = next(items, _END)
                if item is _END:
                    break
                logged = self.step(partial(compute, item))
                if on_step is not None:
                    on_step(logged)
                if max_steps and self.steps >= max_steps:
                    cut = True
                    break
            if self.steps == steps_before and cut:
                break  # stopped before this pass took a step: there is no pass to end
            stop = self.end_epoch(epoch)
            if on_epoch is not None:
                on_epoch(epoch)
            if stop or cut:
                break
        return self.steps


_END = object()
