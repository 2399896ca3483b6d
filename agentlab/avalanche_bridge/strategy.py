"""Any agentlab `Agent` as an Avalanche strategy (a `SupervisedTemplate` subclass).

    strategy = AgentStrategy(agent=agent, evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[...]),
                             plugins=[EWCPlugin(ewc_lambda=100)])
    for exp in benchmark.train_stream:
        strategy.train(exp)
        strategy.eval(benchmark.test_stream)

Why a template subclass and not a plugin: the template owns the forward pass, and
the agent needs the forward (task id, multi-head masking, task inference) and
the loss (its modules' named extra terms) to be its own. Everything else is
Avalanche's: its data loaders, its training iterations and callbacks, so a
user's `EvaluationPlugin`, loggers and method plugins (EWC, SI, LwF, replay,
GEM, A-GEM) see the usual `mb_output`, `mb_y`, `loss` and experiences.

The agent's hooks are called where our loop calls them:

    _before_training_exp       agent.start_task(task)      (then the optimizer is built over what the agent trains)
    criterion (training)       cross-entropy + sum of agent.loss_terms(batch, output)
    _after_training_iteration  agent.after_step(step, observed)
    _after_training_epoch      agent.after_epoch(epoch)
    _after_training_exp        agent.end_task(task)

The update rule is the template's SGD step (Avalanche's plugins, GEM's gradient projection among them, hook in
between its backward and update, so the template keeps its own loop; our learners' loops go through
`agentlab.driver`, in the same hook order). The optimizer is built at the start of each experience, after
`agent.start_task` has created that task's parameters (SupSup's scores...), over `agent.trainable_parameters()`:

* no optimizer given: the agent's learner settings (`agent.learner.cfg`: optimizer, lr, ...; SGDConfig's defaults
  without a learner), as our learners build theirs;
* a user's optimizer: its class and hyper-parameters are kept, and it is rebuilt over the new parameters at each
  experience (the object itself is used while it still updates exactly those parameters and has not stepped, or
  always with `keep_optimizer`). One with several parameter groups of different settings, or over tensors that
  are not the agent's, is refused with a message: it cannot be rebuilt faithfully.

A learner's own extra machinery (our replay buffer) is replaced by Avalanche's plugins. With
`task_incremental=True` the task label of each example selects the agent's task and restricts its logits to that
task's classes, as our evaluator does (van de Ven & Tolias 2019's multi-head by masking); otherwise the agent
predicts without a label (inferring the task where a module can). `agent.after_step` gets the minibatch rows of
the experience's own classes (and task label): Avalanche does not mark replayed rows, so in a domain-incremental
stream, where every experience has every class, replayed rows pass too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.nn import CrossEntropyLoss

from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from agentlab.agent import Agent, restrict_to_classes
from agentlab.data import Batch
from agentlab.learners.sgd import SGDConfig
from agentlab.optim import make_optimizer, optimizes_exactly, with_terms
from agentlab.task import Task


def optimizer_recipe(optimizer: torch.optim.Optimizer, agent: Agent) -> tuple[type, dict[str, Any]]:
    """(class, hyper-parameters) that rebuild `optimizer` over other parameters of `agent`; a ValueError saying why
    when that cannot be done faithfully (several groups with different settings, tensors that are not the agent's)."""
    groups = optimizer.param_groups
    settings = [{k: v for k, v in g.items() if k in optimizer.defaults} for g in groups]
    name = type(optimizer).__name__
    if any(s != settings[0] for s in settings[1:]):
        raise ValueError(
            f"the {name} optimizer has {len(groups)} parameter groups with different settings; AgentStrategy rebuilds "
            "the optimizer over the agent's trainable parameters at every experience (plasticity modules create and "
            "freeze parameters per task) and cannot tell which new parameter belongs to which group: pass an optimizer "
            "with one setting for all parameters, or none (the learner's settings)"
        )
    mine = {id(p) for p in agent.parameters()}
    foreign = sum(1 for g in groups for p in g["params"] if id(p) not in mine)
    if foreign:
        raise ValueError(
            f"the {name} optimizer updates {foreign} tensor(s) that are not parameters of the agent; AgentStrategy "
            "builds the optimizer at every experience, after the task's modules exist, with this optimizer's class "
            "and settings: pass one over the agent's parameters (or none: the learner's settings), not a placeholder"
        )
    return type(optimizer), settings[0]


class AgentStrategy(SupervisedTemplate):
    """Runs `agent` inside Avalanche's training and evaluation loops; see the module docstring."""

    def __init__(
        self,
        *,
        agent: Any,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: Any = None,
        train_mb_size: int | None = None,
        train_epochs: int | None = None,
        eval_mb_size: int = 1000,
        device: str = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: Any = default_evaluator,
        task_incremental: bool = False,
        on_step: Callable[[float, int], None] | None = None,
        max_steps: int = 0,
        active_outputs: bool = False,
        keep_optimizer: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(agent, Agent):
            raise TypeError(
                f"AgentStrategy runs an agentlab Agent; got {type(agent).__name__}: wrap it in agentlab.Agent "
                "(agent = Agent(model, plasticity=[...], learner=...)) and pass that"
            )
        self.agent = agent
        self.sgd_cfg = getattr(agent.learner, "cfg", None) or SGDConfig()
        self._rebuild = optimizer_recipe(optimizer, agent) if optimizer is not None else None
        super().__init__(
            model=agent,
            optimizer=optimizer,  # type: ignore[arg-type]  # None: built at the first experience (make_optimizer)
            criterion=criterion or CrossEntropyLoss(),
            train_mb_size=train_mb_size or self.sgd_cfg.batch_size,
            train_epochs=train_epochs or self.sgd_cfg.epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator,
            **kwargs,
        )
        self.task_incremental = task_incremental
        self.classes_by_label: dict[int, tuple[int, ...]] = {}
        self.on_step = on_step
        self.max_steps = max_steps
        # Without task labels, train over the classes seen so far only (van de Ven & Tolias's "active" units).
        self.active_outputs = active_outputs
        self.seen_classes: set[int] = set()
        # One optimizer (Adam's moments included) over the whole stream, as van de Ven & Tolias's code does by default.
        self.keep_optimizer = keep_optimizer
        self._task: Task | None = None
        self._steps_this_exp = 0

    # ------------------------------------------------------------------ experiences as tasks
    def _label(self, exp: Any) -> int:
        from agentlab.avalanche_bridge.streams import _task_label

        return _task_label(exp)

    def task_of(self, exp: Any) -> Task:
        """The agentlab view of an experience: id = task label (task-incremental) or experience index."""
        from agentlab.avalanche_bridge.streams import _classes

        classes = _classes(exp)
        tid = self._label(exp) if self.task_incremental else int(exp.current_experience)
        return Task(
            id=tid, name=f"avalanche/exp{int(exp.current_experience):03d}", kind="classification",
            train=None, eval=None, classes=classes, task_label_at_test=self.task_incremental,
        )

    # ------------------------------------------------------------------ forward and loss
    def _per_label(self, x: torch.Tensor, labels: torch.Tensor, restrict: bool) -> torch.Tensor:
        """Each example through the agent set to its task label; logits restricted to that task's classes."""
        out = None
        for t in torch.unique(labels).tolist():
            rows = (labels == t).nonzero().squeeze(1)
            y = self.agent(x[rows], task_id=int(t))
            if restrict:
                y = restrict_to_classes(y, self.classes_by_label.get(int(t)))
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[rows] = y
        assert out is not None
        return out

    def forward(self) -> torch.Tensor:
        """Training: raw logits (so distillation sees every head); evaluation: the agent's prediction."""
        x, labels = self.mb_x, self.mb_task_id
        if self.is_training:
            assert self._task is not None
            if self.task_incremental:  # replayed examples keep their own task
                return self._per_label(x, labels, restrict=False)
            return self.agent(x, task_id=self._task.id)
        if self.task_incremental:
            return self._per_label(x, labels, restrict=True)
        with torch.enable_grad():  # task inference may need gradients (SupSup's one-shot)
            out, _ = self.agent.predict(x, None)
        return out.detach()

    def criterion(self) -> torch.Tensor:
        """Cross-entropy (over each example's own task's classes when task-incremental) + the agent's terms."""
        logits = self.mb_output
        if self.is_training and self.task_incremental:
            mask = torch.full_like(logits, float("-inf"))
            for t in torch.unique(self.mb_task_id).tolist():
                rows = (self.mb_task_id == t).nonzero()
                cols = torch.tensor(self.classes_by_label[int(t)], device=logits.device)
                mask[rows, cols] = 0.0
            logits = logits + mask
        elif self.is_training and self.active_outputs and self.seen_classes:
            unseen = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            unseen[torch.tensor(sorted(self.seen_classes), device=logits.device)] = False
            logits = logits.masked_fill(unseen, float("-inf"))
        loss = self._criterion(logits, self.mb_y)
        if self.is_training and self._task is not None:
            terms = self.agent.loss_terms(Batch(self.mb_x, self.mb_y, self._task.id), self.mb_output)
            if terms:
                loss, _ = with_terms({"ce": loss}, terms)
        return loss

    def make_optimizer(self, **kwargs: Any) -> None:
        """The optimizer over what the agent trains now (plasticity modules create and freeze parameters per task):
        the current one while it updates exactly those parameters and has not stepped (or with `keep_optimizer`),
        else a fresh one, with the user's optimizer class and settings or the learner's (module docstring)."""
        params = list(self.agent.trainable_parameters())
        self.optimized_param_id = {n: p for n, p in self.agent.named_parameters()}
        current = self.optimizer
        if current is not None and optimizes_exactly(current, params) and (self.keep_optimizer or not current.state):
            return
        if self._rebuild is None:
            self.optimizer = make_optimizer(params, self.sgd_cfg)
        elif not params:
            raise ValueError("the agent has no trainable parameters for this task; check the plasticity modules' freezing")
        else:
            cls, settings = self._rebuild
            self.optimizer = cls(params, **settings)

    # ------------------------------------------------------------------ the agent's hooks
    def _before_training_exp(self, **kwargs: Any) -> None:
        self._task = self.task_of(self.experience)
        self.seen_classes.update(self._task.classes or ())
        self._steps_this_exp = 0
        self._stop_training = False  # a max_steps stop must not leak into this experience
        if self.task_incremental:
            self.classes_by_label[self._label(self.experience)] = self._task.classes
        self.agent.start_task(self._task)
        super()._before_training_exp(**kwargs)

    def _observed(self) -> Batch:
        """The minibatch rows of this experience's own classes (and task label when task-incremental): the
        examples the step newly saw, as far as Avalanche's minibatch tells (replayed rows are not marked)."""
        assert self._task is not None
        keep = torch.ones_like(self.mb_y, dtype=torch.bool)
        if self._task.classes is not None:
            keep &= torch.isin(self.mb_y, torch.tensor(self._task.classes, device=self.mb_y.device))
        if self.task_incremental:
            keep &= self.mb_task_id == self._label(self.experience)
        if bool(keep.all()):
            return Batch(self.mb_x, self.mb_y, self._task.id)
        return Batch(self.mb_x[keep], self.mb_y[keep], self._task.id)

    def _after_training_iteration(self, **kwargs: Any) -> None:
        self.agent.after_step(self.clock.train_iterations, self._observed())
        self._steps_this_exp += 1
        if self.on_step is not None:
            self.on_step(float(self.loss.detach()), int(self.mb_x.shape[0]))
        if self.max_steps and self._steps_this_exp >= self.max_steps:
            self.stop_training()
        super()._after_training_iteration(**kwargs)

    def _after_training_epoch(self, **kwargs: Any) -> None:
        self.agent.after_epoch(self.clock.train_exp_epochs)
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        assert self._task is not None
        self.agent.end_task(self._task)
        super()._after_training_exp(**kwargs)

    def _before_eval_exp(self, **kwargs: Any) -> None:
        super()._before_eval_exp(**kwargs)
        if self.task_incremental:
            from agentlab.avalanche_bridge.streams import _classes

            self.classes_by_label.setdefault(self._label(self.experience), _classes(self.experience))
