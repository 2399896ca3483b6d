"""Fine-tuning: train on each task in turn with nothing to protect the old ones (the lower baseline)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from agentlab.data import Batch, Split
from agentlab.driver import StepDriver, StepOutput
from agentlab.errors import CannotForget
from agentlab.learners.base import StatelessLearner
from agentlab.learners.sgd import SGDConfig, supervised_loss
from agentlab.optim import KeptOptimizer, make_optimizer, make_schedule
from agentlab.registry import BuildEnv, register


def require_classification(task: Any, learner: str) -> None:
    if task.kind != "classification":
        raise ValueError(
            f"learner {learner!r} trains classification tasks; task {task.name!r} is a {task.kind!r} task: "
            "choose a learner for that kind (see `agentlab list`)"
        )


def train_split(
    agent: Any, task: Any, split: Split, cfg: Any, ctx: Any, *, step_fn: Callable[[Batch], StepOutput] | None = None,
    classes_by_task: Any = None, on_step: Callable[[dict[str, float]], None] | None = None,
    on_epoch: Callable[[int], None] | None = None, optimizers: KeptOptimizer | None = None,
    schedules: dict[str, Any] | None = None,
) -> StepDriver:
    """Epochs of steps over `split`, driven by the step driver (`agentlab.driver`): `step_fn(batch)` gives a step's
    loss (default: cross-entropy, `supervised_loss`; replay mixes its buffer in); `on_step(logged)` and
    `on_epoch(epoch)` run after every step and pass (early-stopping bookkeeping); `optimizers` keeps one optimizer
    across tasks when `cfg.keep_optimizer` (learners that support it pass theirs); `schedules[str(task.id)]`
    receives the schedule's state at the end (LRPO's fits and decisions, for the learner's checkpoint). Stops after
    `cfg.epochs` passes, `cfg.max_steps` steps, or when the schedule (`cfg.lr_schedule`) says so."""
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
    driver = StepDriver(agent, optimizer, ctx, grad_clip=cfg.grad_clip, schedule=schedule)

    def batches(epoch: int) -> Iterator[Batch]:
        for batch in split.batches(cfg.batch_size, shuffle=True, generator=ctx.generator, task_id=task.id):
            yield batch.to(ctx.device)

    compute = step_fn if step_fn is not None else (lambda batch: supervised_loss(agent, batch, task, classes_by_task))
    driver.run(batches, compute, epochs=cfg.epochs, max_steps=cfg.max_steps, on_step=on_step, on_epoch=on_epoch,
               steps=cfg.epochs * per_epoch)
    if schedules is not None:
        schedules[str(task.id)] = schedule.state_dict()
    return driver


class FineTune(StatelessLearner):
    name = "finetune"

    def __init__(self, cfg: SGDConfig) -> None:
        self.cfg = cfg
        self.optimizers = KeptOptimizer()
        self.schedules: dict[str, Any] = {}  # task id -> its schedule's state (LRPO's fits and decisions)

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        train_split(agent, task, task.train, self.cfg, ctx, optimizers=self.optimizers, schedules=self.schedules)

    def state_dict(self) -> dict[str, Any]:
        """The kept optimizer's moments with `keep_optimizer`; each task's schedule state when it has one (lrpo)."""
        state: dict[str, Any] = {"optimizer": self.optimizers.state_dict()} if self.cfg.keep_optimizer else {}
        if any(self.schedules.values()):
            state["schedules"] = {k: v for k, v in self.schedules.items() if v}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizers.load_state_dict(state.get("optimizer", {}))
        self.schedules = dict(state.get("schedules", {}))

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
