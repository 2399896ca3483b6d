"""The shared supervised loss and settings of the SGD-style learners (fine-tuning, replay, joint...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.agent import restrict_to_classes
from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepOutput
from agentlab.lrpo import LRPOConfig
from agentlab.optim import SCHEDULES, OptimizerConfig


MAX_UNCAPPED_EPOCHS = 100_000


@dataclass(frozen=True)
class SGDConfig(OptimizerConfig):
    """Optimisation settings shared by the supervised learners."""

    epochs: int = 1
    """passes over each task's training data"""
    batch_size: int = 128
    """examples per step"""
    max_steps: int = 0
    """stop a task after this many steps; 0 = no limit (epochs decide)"""
    lr_schedule: Literal["constant", "cosine", "step", "onecycle", "plateau", "lrpo"] = "constant"
    """learning rate over a task: constant; cosine-annealed from `lr` to 0 over the task's steps; step (times
    `lr_gamma` at `lr_milestones`); onecycle (up to `lr` and down, `lr_warmup`); plateau (ReduceLROnPlateau on the
    pass's training loss); lrpo (predicted stalls, see `lrpo`)"""
    lr_gamma: float = 0.1
    """factor the rate is multiplied by at each decay of the step, plateau and lrpo schedules"""
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """step: where the rate decays, as fractions of the task's steps"""
    lr_warmup: float = 0.3
    """onecycle: fraction of the task's steps spent rising from lr/25 to lr"""
    plateau_patience: int = 3
    """plateau: passes without a relative improvement of `plateau_threshold` before the rate decays"""
    plateau_threshold: float = 0.01
    """plateau: relative drop of the pass's mean training loss that counts as an improvement"""
    lrpo: LRPOConfig = field(default_factory=LRPOConfig)
    """lrpo: the learning-rate predictor's settings (`agentlab.lrpo.LRPOConfig`)"""
    keep_optimizer: bool = False
    """one optimizer for the whole stream (moments carried across tasks) instead of a fresh one per task, as the
    reference code of van de Ven & Tolias 2019 does by default"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        # a task must end: without a step cap, an epoch count beyond any real run is a typo (1e20), not a plan
        check(self.epochs <= MAX_UNCAPPED_EPOCHS or self.max_steps > 0, "epochs", self.epochs,
              f"at most {MAX_UNCAPPED_EPOCHS} unless max_steps > 0 caps the steps of a task")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.max_steps >= 0, "max_steps", self.max_steps, "an integer >= 0")
        check(self.lr_schedule in SCHEDULES, "lr_schedule", self.lr_schedule, "one of " + ", ".join(map(repr, SCHEDULES)))
        check(0 < self.lr_gamma < 1, "lr_gamma", self.lr_gamma, "in (0, 1)")
        check(all(0 < m < 1 for m in self.lr_milestones), "lr_milestones", self.lr_milestones, "a list of fractions in (0, 1)")
        check(0 < self.lr_warmup < 1, "lr_warmup", self.lr_warmup, "in (0, 1)")
        check(self.plateau_patience >= 0, "plateau_patience", self.plateau_patience, "an integer >= 0")
        check(0 <= self.plateau_threshold < 1, "plateau_threshold", self.plateau_threshold, "in [0, 1)")


def classification_loss(
    agent: Any,
    x: Tensor,
    y: Tensor,
    task_ids: Tensor | None,
    current: Any,
    classes_by_task: Mapping[int, Sequence[int] | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over a batch whose examples may come from several tasks.

    Each task's examples run through the agent set to that task, and when task
    labels are visible at test time (task-incremental) its logits are restricted
    to that task's classes. Returns `(loss, output of the current task's rows)`.
    """
    restrict = current.task_label_at_test
    if task_ids is None:
        out = agent(x, task_id=current.id)
        logits = restrict_to_classes(out, current.classes) if restrict else out
        return F.cross_entropy(logits, y), out
    total = x.new_zeros(())
    out_current = None
    for t in torch.unique(task_ids).tolist():
        rows = (task_ids == t).nonzero().squeeze(1)
        out = agent(x[rows], task_id=int(t))
        classes = (classes_by_task or {}).get(int(t), current.classes if t == current.id else None)
        logits = restrict_to_classes(out, classes) if restrict else out
        total = total + F.cross_entropy(logits, y[rows], reduction="sum")
        if t == current.id:
            out_current = out
    return total / x.shape[0], out_current if out_current is not None else out


def supervised_loss(
    agent: Any,
    batch: Batch,
    task: Any,
    classes_by_task: Mapping[int, Sequence[int] | None] | None = None,
    observed: Batch | None = None,
) -> StepOutput:
    """The cross-entropy step of the supervised learners, for the step driver: `batch` may mix tasks (replay,
    joint); `observed` is the part of it this step newly saw (default: all of it)."""
    ce, out = classification_loss(agent, batch.x, batch.y, batch.extra.get("task_ids"), task, classes_by_task)
    return StepOutput({"ce": ce}, out, batch, observed)
