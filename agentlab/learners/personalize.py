"""The personalization learner: pre-train the population model on task 0, then fit each person's adapter.

Loss (all three heads together, `agentlab.scenarios.traces.objective.trace_losses`):
cross-entropy of the next action + time_weight x Gaussian NLL of the step's
log time + error_weight x binary cross-entropy of each error type.

* a population task (`meta["population"]`): epochs of mini-batches over many
  people's traces; whatever is trainable trains (adapter modules leave the
  backbone trainable and themselves off);
* a person: `steps` full-batch Adam steps on that person's few traces; the
  adapter module has frozen everything but this person's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

from agentlab.config import check
from agentlab.driver import StepDriver, StepOutput
from agentlab.learners.base import StatelessLearner
from agentlab.optim import OptimizerConfig, make_optimizer
from agentlab.plasticity.adapter import is_population_task
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.traces.objective import trace_losses


@dataclass(frozen=True)
class PersonalizeConfig:
    """Population pre-training, then a few full-batch steps per person."""

    population_epochs: int = 6
    """passes over the population task's traces"""
    population_lr: float = 0.002
    """Adam learning rate of pre-training"""
    population_batch_size: int = 256
    """traces per pre-training step"""
    steps: int = 60
    """Adam steps per person (each over all of the person's training traces)"""
    lr: float = 0.01
    """Adam learning rate per person"""
    batch_size: int = 0
    """traces per personal step; 0 = all of them"""
    time_weight: float = 0.5
    """weight of the step-time NLL in the loss"""
    error_weight: float = 1.0
    """weight of the error BCE in the loss"""
    weight_decay: float = 0.0
    """L2 penalty on the trained parameters"""
    grad_clip: float = 1.0
    """clip the gradient norm to this; 0 = off"""

    def __post_init__(self) -> None:
        check(self.population_epochs >= 0, "population_epochs", self.population_epochs, "an integer >= 0")
        check(self.population_lr > 0, "population_lr", self.population_lr, "a number > 0")
        check(self.population_batch_size >= 1, "population_batch_size", self.population_batch_size, "an integer >= 1")
        check(self.steps >= 0, "steps", self.steps, "an integer >= 0")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.batch_size >= 0, "batch_size", self.batch_size, "an integer >= 0")
        check(self.time_weight >= 0, "time_weight", self.time_weight, "a number >= 0")
        check(self.error_weight >= 0, "error_weight", self.error_weight, "a number >= 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a number >= 0")


class Personalize(StatelessLearner):
    name = "personalize"

    def __init__(self, cfg: PersonalizeConfig) -> None:
        self.cfg = cfg

    def _loss(self, agent: Any, task: Any, batch: Any) -> StepOutput:
        out = agent(batch.x, task.id)
        terms = trace_losses(out, batch.y, time_weight=self.cfg.time_weight, error_weight=self.cfg.error_weight)
        figures = {k: float(v.detach()) for k, v in terms.items() if k != "total"}  # the heads, unweighted
        return StepOutput({"trace": terms["total"]}, out, batch, logs=figures)

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        if task.kind != "personalization":
            raise ValueError(f"learner 'personalize' trains personalization tasks; task {task.name!r} is a {task.kind!r} task")
        params = list(agent.trainable_parameters())
        if not params:
            raise ValueError("nothing to train: check the plasticity modules' freezing")
        population = is_population_task(task)
        lr = self.cfg.population_lr if population else self.cfg.lr
        opt = make_optimizer(params, OptimizerConfig(lr=lr, optimizer="adam", weight_decay=self.cfg.weight_decay))
        driver = StepDriver(agent, opt, ctx, grad_clip=self.cfg.grad_clip)
        compute = partial(self._loss, agent, task)
        if population:
            size = self.cfg.population_batch_size

            def batches(epoch: int) -> Iterator[Any]:
                for batch in task.train.batches(size, shuffle=True, generator=ctx.generator, task_id=task.id):
                    yield batch.to(ctx.device)

            driver.run(batches, compute, epochs=self.cfg.population_epochs,
                       steps=self.cfg.population_epochs * -(-len(task.train) // size))
            return
        size = self.cfg.batch_size or len(task.train)

        def cycled(epoch: int) -> Iterator[Any]:
            """`steps` batches of the person's traces, reshuffled each time round when they take several batches."""
            step = 0
            while step < self.cfg.steps:
                for batch in task.train.batches(size, shuffle=size < len(task.train), generator=ctx.generator, task_id=task.id):
                    yield batch.to(ctx.device)
                    step += 1
                    if step >= self.cfg.steps:
                        return

        driver.run(cycled, compute, steps=self.cfg.steps)  # one pass: after_epoch(0) ends the person's training


@register("learner", "personalize", PersonalizeConfig)
def build_personalize(cfg: PersonalizeConfig, env: BuildEnv) -> Personalize:
    """Population pre-training on task 0, then a few full-batch steps of each person's adapter."""
    return Personalize(cfg)
