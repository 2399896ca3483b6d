"""Fine-tuning: train on each task in turn with nothing to protect the old ones (the lower baseline)."""

from __future__ import annotations

from typing import Any

from agentlab.data import Split
from agentlab.errors import CannotForget
from agentlab.learners.sgd import SGDConfig, supervised_step
from agentlab.optim import KeptOptimizer, make_optimizer, make_schedule
from agentlab.registry import BuildEnv, register
from agentlab.learners.base import StatelessLearner


def require_classification(task: Any, learner: str) -> None:
    if task.kind != "classification":
        raise ValueError(
            f"learner {learner!r} trains classification tasks; task {task.name!r} is a {task.kind!r} task: "
            "choose a learner for that kind (see `agentlab list`)"
        )


def train_split(
    agent: Any, task: Any, split: Split, cfg: Any, ctx: Any, *, step_fn: Any = None, classes_by_task: Any = None,
    on_epoch: Any = None, optimizers: KeptOptimizer | None = None,
) -> None:
    """Epochs of supervised steps over `split`; `step_fn(batch, optimizer)` may replace the plain step (replay);
    `on_epoch(epoch)` runs after each epoch (early stopping bookkeeping); `optimizers` keeps one optimizer across
    tasks when `cfg.keep_optimizer` (learners that support it pass theirs)."""
    if optimizers is not None:
        optimizer = optimizers.for_task(agent.trainable_parameters(), cfg)
    elif cfg.keep_optimizer:
        raise ValueError(
            "keep_optimizer = true is not supported by this learner (it builds a fresh optimizer for every task); "
            "learners that keep one: finetune, replay, joint, avalanche"
        )
    else:
        optimizer = make_optimizer(agent.trainable_parameters(), cfg)
    per_epoch = -(-len(split) // cfg.batch_size)
    schedule = make_schedule(optimizer, cfg, cfg.epochs * per_epoch)
    steps = 0
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        for batch in split.batches(cfg.batch_size, shuffle=True, generator=ctx.generator, task_id=task.id):
            batch = batch.to(ctx.device)
            if step_fn is not None:
                losses = step_fn(batch, optimizer)
            else:
                losses = supervised_step(agent, batch, optimizer, cfg, task, classes_by_task)
            agent.after_step(ctx.global_step, batch)
            ctx.step(losses, len(batch))
            schedule.after_step(losses["total"])
            total, n = total + losses["total"], n + 1
            steps += 1
            if cfg.max_steps and steps >= cfg.max_steps:
                break
        agent.after_epoch(epoch)
        if on_epoch is not None:
            on_epoch(epoch)
        stop = schedule.after_epoch(epoch, total / max(n, 1))
        if stop or (cfg.max_steps and steps >= cfg.max_steps):
            break


class FineTune(StatelessLearner):
    name = "finetune"

    def __init__(self, cfg: SGDConfig) -> None:
        self.cfg = cfg
        self.optimizers = KeptOptimizer()

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        train_split(agent, task, task.train, self.cfg, ctx, optimizers=self.optimizers)

    def state_dict(self) -> dict[str, Any]:
        """Nothing, or the kept optimizer's moments with `keep_optimizer`."""
        return {"optimizer": self.optimizers.state_dict()} if self.cfg.keep_optimizer else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizers.load_state_dict(state.get("optimizer", {}))

    def forget_task(self, task_id: int) -> int:
        """Nothing per task, unless one optimizer is kept across tasks: its moments mix every task's gradients."""
        if self.cfg.keep_optimizer:
            raise CannotForget(f"learner {self.name!r} keeps one optimizer across tasks (keep_optimizer = true): its "
                               f"moments mix task {task_id}'s gradients into every later task's steps")
        return 0


@register("learner", "finetune", SGDConfig)
def build_finetune(cfg: SGDConfig, env: BuildEnv) -> FineTune:
    """Plain fine-tuning on each task in turn (lower baseline)."""
    return FineTune(cfg)
