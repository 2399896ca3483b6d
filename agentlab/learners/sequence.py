"""The sequence learner: masked sigmoid cross-entropy on algorithmic tasks, with a length curriculum.

Each step samples a fresh batch from the task's `SequenceSource` with pattern
lengths uniform in [min_len, current max]; the loss is the cost in bits per
sequence (summed over bits and scored steps, as in the DNC paper); the global
gradient norm is clipped (DNC training diverges without it). The curriculum
(Graves et al. 2014/2016) starts the max length at `start_len` and raises it by
`len_step` whenever the mean training cost of the last `check_every` steps is
below `threshold` bits per sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepDriver, StepOutput
from agentlab.learners.base import BudgetCosine, StatelessLearner
from agentlab.optim import OptimizerConfig, backward_step, make_optimizer
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class SequenceConfig(OptimizerConfig):
    """Training settings for `sequence` tasks (the optimiser's come from `OptimizerConfig`)."""

    lr: float = 1e-3
    """learning rate"""
    grad_clip: float = 10.0
    """clip the global gradient norm to this value; 0 = off"""
    steps: int = 1000
    """optimiser steps per task"""
    batch_size: int = 16
    """sequences per step"""
    start_len: int = 0
    """curriculum: first max length; 0 = no curriculum (the task's full range from the start)"""
    len_step: int = 1
    """curriculum: how much the max length grows at a time"""
    threshold: float = 1.0
    """curriculum: grow when the mean cost of the last window is below this many bits per sequence"""
    check_every: int = 50
    """curriculum: window length in steps"""
    time_budget_s: float = 0.0
    """stop a task after this many seconds of training; 0 = no limit (steps decide)"""
    epoch_steps: int = 100
    """steps that make one pass over a task (its sequences are sampled fresh, so a pass is a count of steps):
    the modules' `after_epoch` runs after each (SET rewires there); 0 = the task's `steps` are one pass"""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """learning rate over a task: constant, or cosine-annealed from `lr` to 0 over the task's budget
    (the fraction of `steps` or of `time_budget_s` used, whichever is further along)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.start_len >= 0, "start_len", self.start_len, "an integer >= 0")
        check(self.len_step >= 1, "len_step", self.len_step, "an integer >= 1")
        check(self.threshold > 0, "threshold", self.threshold, "a number > 0")
        check(self.check_every >= 1, "check_every", self.check_every, "an integer >= 1")
        check(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, "a number >= 0")
        check(self.epoch_steps >= 0, "epoch_steps", self.epoch_steps, "an integer >= 0 (0 = one pass per task)")
        check(self.lr_schedule in ("constant", "cosine"), "lr_schedule", self.lr_schedule, "'constant' or 'cosine'")


class Curriculum:
    """The current max length, raised when the windowed training cost falls below the threshold."""

    def __init__(self, cfg: SequenceConfig, max_len: int) -> None:
        self.cfg, self.max_len = cfg, max_len
        self.current = min(cfg.start_len, max_len) if cfg.start_len else max_len
        self._window: list[float] = []

    def update(self, cost: float) -> int:
        self._window.append(cost)
        if len(self._window) >= self.cfg.check_every:
            if self.current < self.max_len and sum(self._window) / len(self._window) < self.cfg.threshold:
                self.current = min(self.current + self.cfg.len_step, self.max_len)
            self._window = []
        return self.current


class SequenceLearner(StatelessLearner):
    name = "sequence"

    def __init__(self, cfg: SequenceConfig) -> None:
        self.cfg = cfg
        self.last_max_len = 0
        self.steps_done = 0

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        from agentlab.scenarios.algorithmic import bits_per_sequence

        if task.kind != "sequence":
            raise ValueError(f"learner 'sequence' trains sequence tasks; task {task.name!r} is a {task.kind!r} task")
        cfg, src = self.cfg, task.train
        optimizer = make_optimizer(agent.trainable_parameters(), cfg)
        schedule = (BudgetCosine(optimizer, cfg.lr, cfg.steps, time_budget_s=cfg.time_budget_s)
                    if cfg.lr_schedule == "cosine" else None)
        # `backward_step` is looked up here, in this module, so a test can watch the rate of every update.
        driver = StepDriver(agent, optimizer, ctx, grad_clip=cfg.grad_clip, schedule=schedule, update=backward_step)
        curriculum = self.curriculum = Curriculum(cfg, src.spec.max_len)
        per_pass = cfg.epoch_steps or cfg.steps
        t0 = time.perf_counter()

        def batches(epoch: int) -> Iterator[Any]:
            """The steps of pass `epoch`: fresh batches at the curriculum's current length."""
            for _ in range(min(per_pass, cfg.steps - epoch * per_pass)):
                yield src.batch(ctx.generator, cfg.batch_size, curriculum.current).to(ctx.device)

        def compute(b: Any) -> StepOutput:
            logits = agent(b.x, task.id)
            seen = Batch(b.x, b.y, task.id, {"mask": b.mask})  # what the modules' terms and the memories' writes see
            return StepOutput({"bits_per_seq": bits_per_sequence(logits, b.y, b.mask)}, logits, seen,
                              logs={"max_len": float(curriculum.current)})

        out_of_time = (lambda: time.perf_counter() - t0 > cfg.time_budget_s) if cfg.time_budget_s else None
        driver.run(batches, compute, epochs=-(-cfg.steps // per_pass), until=out_of_time, steps=cfg.steps,
                   on_step=lambda logged: curriculum.update(logged["bits_per_seq"]))
        self.steps_done = driver.steps
        self.last_max_len = curriculum.current


@register("learner", "sequence", SequenceConfig)
def build_sequence(cfg: SequenceConfig, env: BuildEnv) -> SequenceLearner:
    """Masked sigmoid cross-entropy (bits per sequence) on algorithmic tasks, with a length curriculum."""
    return SequenceLearner(cfg)
