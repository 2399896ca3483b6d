"""What a learner gets from the loop while it trains one task, and the progress shown on stderr while it does.

Progress is shown by the commands (`agentlab run` unless `--no-progress`, `fewshot`, `bench`) through
`progress_shown()`; library calls stay silent unless they ask. Within a task the bar advances per optimisation
step when the learner (or the step driver) has said how many steps it plans (`FitContext.plan`), with the loss
and an ETA; a long quiet phase (building data, evaluating) says what it is doing (`say`, `Progress.phase`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class StopRequested(RuntimeError):
    """Ctrl-C (or a test) asked the run to stop; the loop saves and flushes before leaving."""


_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("agentlab_progress_shown", default=False)


@contextlib.contextmanager
def progress_shown(on: bool = True) -> Iterator[None]:
    """Bars and phase lines on stderr inside this block (the commands' `--no-progress` passes False)."""
    token = _SHOWN.set(on)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def progress_on() -> bool:
    return _SHOWN.get()


def say(text: str) -> None:
    """One line on stderr saying what a long quiet phase does (`agentlab: building stream...`), when progress is
    shown; it is printed above any bar."""
    if progress_on():
        from tqdm.auto import tqdm

        tqdm.write(f"agentlab: {text}", file=sys.stderr)


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """One bar on stderr: work done out of `total` (fractions allowed), a free-text postfix, elapsed and remaining
    time. Inert (nothing printed, no cost) when progress is not shown."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"

    def __init__(self, desc: str, total: float, *, initial: float = 0, shown: bool | None = None) -> None:
        self.bar = None
        if progress_on() if shown is None else shown:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, bar_format=self.FORMAT, file=sys.stderr,
                            dynamic_ncols=True)

    def to(self, n: float, postfix: str = "") -> None:
        """Move to `n` done; the line is redrawn at most ten times a second."""
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(n - self.bar.n)

    def phase(self, text: str) -> None:
        """Say at once what the work is doing now (evaluating, building data)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class FitContext:
    """The loop's services to a learner: data order, step counting, logging, progress.

    `step(losses, n)` must be called once per optimisation step: it advances the
    global step, logs `losses/<term>`, `charts/steps_per_sec`, checks for NaN.
    `plan(steps)` says how many steps the task will take (for the progress bar's ETA).
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
    planned_steps: int = 0
    """steps this task is planned to take (0 = not known); set through `plan`"""
    task_steps: int = 0
    """steps taken in this task so far"""
    _t0: float = field(default_factory=time.perf_counter)
    _last_step: int = 0

    def plan(self, steps: int) -> None:
        """The learner expects to take `steps` optimisation steps on this task (an upper bound: a time budget or
        early stopping may end it sooner)."""
        self.planned_steps = max(int(steps), 0)

    def step(self, losses: dict[str, float], n_examples: int) -> None:
        self.global_step += 1
        self.task_steps += 1
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
        self.progress({"step": self.global_step, "task_step": self.task_steps, "planned": self.planned_steps,
                       "loss": total})
        if self.should_stop():
            raise StopRequested("stop requested")
