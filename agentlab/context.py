"""What a learner gets from the loop while it trains one task."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class StopRequested(RuntimeError):
    """Ctrl-C (or a test) asked the run to stop; the loop saves and flushes before leaving."""


@dataclass
class FitContext:
    """The loop's services to a learner: data order, step counting, logging, progress.

    `step(losses, n)` must be called once per optimisation step: it advances the
    global step, logs `losses/<term>`, `charts/steps_per_sec`, checks for NaN.
    """

    generator: torch.Generator
    task_index: int
    n_tasks: int
    device: str = "cpu"
    global_step: int = 0
    log_every: int = 20
    seen_tasks: Callable[[], list[Any]] = lambda: []
    log_scalar: Callable[[str, float, int], None] = lambda tag, v, s: None
    progress: Callable[[dict[str, Any]], None] = lambda info: None
    should_stop: Callable[[], bool] = lambda: False
    _t0: float = field(default_factory=time.perf_counter)
    _last_step: int = 0

    def step(self, losses: dict[str, float], n_examples: int) -> None:
        self.global_step += 1
        total = losses.get("total", sum(losses.values()))
        if not math.isfinite(total):
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            raise NonFiniteLoss(
                f"loss became non-finite at global step {self.global_step} (task {self.task_index}): {bad}; "
                "lower the learning rate or enable gradient clipping; the last good checkpoint is kept"
            )
        if self.global_step % self.log_every == 0:
            for k, v in losses.items():
                self.log_scalar(f"losses/{k}", v, self.global_step)
            now = time.perf_counter()
            rate = (self.global_step - self._last_step) / max(now - self._t0, 1e-9)
            self.log_scalar("charts/steps_per_sec", rate, self.global_step)
            self.log_scalar("charts/examples_per_sec", rate * n_examples, self.global_step)
            self._t0, self._last_step = now, self.global_step
        self.progress({"step": self.global_step, "loss": total})
        if self.should_stop():
            raise StopRequested("stop requested")
