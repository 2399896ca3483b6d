"""Joint training: at task i, train on the union of tasks 0..i (the upper bound of a stream).

The last row of its accuracy matrix is the usual "joint" upper bound
(van de Ven & Tolias 2019); earlier rows show the cumulative curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentlab.data import concat_splits
from agentlab.errors import CannotForget
from agentlab.learners.finetune import FineTune, require_classification, train_split
from agentlab.learners.sgd import SGDConfig
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class JointConfig(SGDConfig):
    """Cumulative joint training over all tasks seen so far (same fields as fine-tuning)."""


class Joint(FineTune):
    name = "joint"

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        seen = ctx.seen_tasks()
        union = concat_splits([t.train for t in seen], [t.id for t in seen])
        classes = {t.id: t.classes for t in seen}
        train_split(agent, task, union, self.cfg, ctx, classes_by_task=classes, optimizers=self.optimizers)

    def forget_task(self, task_id: int) -> int:
        raise CannotForget(f"learner 'joint' trains every task on the data of all tasks before it: task {task_id}'s "
                           "examples shaped every later task's training")


@register("learner", "joint", JointConfig)
def build_joint(cfg: JointConfig, env: BuildEnv) -> Joint:
    """Joint training on all tasks seen so far (upper bound)."""
    return Joint(cfg)
