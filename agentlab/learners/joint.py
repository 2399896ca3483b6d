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

    def __init__(self, cfg: SGDConfig) -> None:
        super().__init__(cfg)
        self.trained: list[int] = []  # task ids in training order (forget_task needs them)

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        self.trained = [t for t in self.trained if t != task.id] + [task.id]
        seen = ctx.seen_tasks()
        union = concat_splits([t.train for t in seen], [t.id for t in seen])
        classes = {t.id: t.classes for t in seen}
        train_split(agent, task, union, self.cfg, ctx, classes_by_task=classes, optimizers=self.optimizers)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trained": list(self.trained)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trained = [int(t) for t in state.get("trained", [])]

    def forget_task(self, task_id: int) -> int:
        """Nothing is kept; refused when a later task trained on the task's data (joint training revisits it)."""
        later = self.trained[self.trained.index(task_id) + 1:] if task_id in self.trained else []
        if later:
            raise CannotForget(f"learner 'joint' trained tasks {later} on the data of every task before them, "
                               f"task {task_id}'s included")
        return super().forget_task(task_id)


@register("learner", "joint", JointConfig)
def build_joint(cfg: JointConfig, env: BuildEnv) -> Joint:
    """Joint training on all tasks seen so far (upper bound)."""
    return Joint(cfg)
