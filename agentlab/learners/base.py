"""What learners share: no state by default, and the learning-rate schedules of the episode and sequence learners."""

from __future__ import annotations

import time
from typing import Any

import torch

from agentlab.optim import Schedule, cosine_factor, set_lr


class StatelessLearner:
    """A learner that keeps nothing between tasks: empty checkpoint state, nothing in the memory ledger.

    Learners with state across tasks (replay buffers) override all four methods.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def state_bytes(self) -> int:
        return 0

    def forget_task(self, task_id: int) -> int:
        """Nothing of any task is kept here: nothing to free."""
        return 0


class TorchSchedule(Schedule):
    """A torch learning-rate scheduler (`StepLR`...) stepped after every optimiser step."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def after_step(self, loss: float) -> None:
        self.scheduler.step()


class BudgetCosine(Schedule):
    """The rate `lr` annealed to 0 along `cosine_factor` over a budget of work units (steps, episodes) and, with
    `time_budget_s`, of seconds: the progress is whichever fraction is further along. Each optimiser step is
    `units_per_step` units; the rate for the next step is set after each one."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, units: int, *, units_per_step: int = 1,
                 time_budget_s: float = 0.0) -> None:
        self.optimizer, self.lr, self.units, self.per_step, self.budget_s = optimizer, lr, units, units_per_step, time_budget_s
        self.done = 0
        self.t0 = time.perf_counter()
        set_lr(optimizer, lr * cosine_factor(0.0))

    def after_step(self, loss: float) -> None:
        self.done += self.per_step
        progress = self.done / max(self.units, 1)
        if self.budget_s:
            progress = max(progress, (time.perf_counter() - self.t0) / self.budget_s)
        set_lr(self.optimizer, self.lr * cosine_factor(progress))
