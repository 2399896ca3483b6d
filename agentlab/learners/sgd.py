"""The shared supervised loss and settings of the SGD-style learners (fine-tuning, replay, joint...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.agent import restrict_to_classes
from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepOutput
from agentlab.optim import OptimizerConfig


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
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """learning rate over a task: constant, or cosine-annealed from `lr` to 0 over the task's steps"""
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
        check(self.lr_schedule in ("constant", "cosine"), "lr_schedule", self.lr_schedule, "'constant' or 'cosine'")


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
