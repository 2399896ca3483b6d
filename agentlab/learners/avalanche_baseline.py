"""Avalanche's baselines as one of our learners: Naive, EWC, SI, LwF, Replay, GEM, A-GEM.

    [agents.ewc]
    backbone = { name = "mlp", hidden = [400, 400] }
    learner = { name = "avalanche", strategy = "ewc", ewc_lambda = 5000, epochs = 1, lr = 0.001 }

Each task of our stream is handed to an `AgentStrategy` (our agent inside
Avalanche's `SupervisedTemplate`) carrying Avalanche's own plugin for the
method, so the algorithm is Avalanche's code, unchanged, while our loop
evaluates, logs and reports it exactly like our own learners (same accuracy
matrix, TensorBoard tags and summary.json). With `avalanche_eval = true` the
strategy also evaluates every seen task with Avalanche's `EvaluationPlugin`
after each task (`learner.evaluator` then holds Avalanche's figures; the
metric-equality test compares them with ours).

Limits: the strategy's state (EWC importances, SI paths, replay buffers) is not
in our checkpoints, so `--resume` restarts it empty; `state_bytes` counts the
examples held by replay-style plugins only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.learners.finetune import require_classification
from agentlab.learners.sgd import SGDConfig
from agentlab.registry import BuildEnv, register

STRATEGIES = ("naive", "ewc", "si", "lwf", "replay", "gem", "agem")


@dataclass(frozen=True)
class AvalancheConfig(SGDConfig):
    """One of Avalanche's baseline strategies, run by Avalanche's template on our streams."""

    strategy: Literal["naive", "ewc", "si", "lwf", "replay", "gem", "agem"] = "naive"
    """which Avalanche baseline: naive (fine-tuning), ewc, si, lwf, replay, gem, agem"""
    ewc_lambda: float = 5000.0
    """EWC: weight of the quadratic penalty (Kirkpatrick et al. 2017)"""
    ewc_mode: Literal["separate", "online"] = "separate"
    """EWC: one penalty per task, or online EWC's single running one (Schwarz et al. 2018)"""
    ewc_decay: float = 1.0
    """online EWC: decay (gamma) of the old importances"""
    ewc_fisher: Literal["minibatch", "per_example"] = "minibatch"
    """EWC: `minibatch` is Avalanche's estimate (squared gradients of mini-batch means, about 1/batch of the Fisher);
    `per_example` is the papers' diagonal Fisher (mean of squared per-example gradients; agentlab.learners.avalanche_ewc)"""
    ewc_fisher_labels: Literal["predicted", "true"] = "predicted"
    """EWC with the per-example Fisher: gradients of log p(predicted class) (van de Ven & Tolias) or of the true label"""
    ewc_fisher_outputs: Literal["trained", "all"] = "trained"
    """EWC with the per-example Fisher: p(y | x) over the output units the task trains on (its classes when
    task-incremental, the seen classes with `active_outputs`; van de Ven & Tolias's `allowed_classes`) or over all"""
    si_lambda: float = 1.0
    """SI: weight c of the surrogate loss (Zenke et al. 2017)"""
    si_eps: float = 0.1
    """SI: damping xi of the importance denominator (van de Ven & Tolias 2019 use 0.1)"""
    si_clip: float = 0.001
    """SI: clamp of each importance when a task ends; 0.001 is Avalanche's fixed value, 0 removes it (the paper's SI;
    agentlab.learners.avalanche_si)"""
    lwf_alpha: float = 1.0
    """LwF: weight of the distillation loss (Li & Hoiem 2017)"""
    lwf_temperature: float = 2.0
    """LwF: softmax temperature of the distillation"""
    lwf_weighting: Literal["constant", "vandeven"] = "constant"
    """LwF: `constant` adds lwf_alpha * distillation (Avalanche); `vandeven` weighs the current loss 1/t and the
    T^2-scaled distillation 1 - 1/t on task t (van de Ven & Tolias 2019)"""
    active_outputs: bool = False
    """without task labels, train over the output units of the classes seen so far (van de Ven & Tolias 2019)"""
    lwf_distill: Literal["avalanche", "per_task", "reference"] = "avalanche"
    """LwF: `avalanche` (task-IL: only task 0's classes are distilled; class-IL: a softmax over the old classes),
    `per_task` (each previous task's classes on their own softmax, averaged) or `reference` (per_task, and in
    class-IL the softmax spans the current classes too, with target 0: van de Ven & Tolias's code;
    agentlab.learners.avalanche_lwf)"""
    lwf_class_mean: bool = False
    """LwF: divide the distillation by the number of classes in its softmax (an early version of van de Ven &
    Tolias's `loss_fn_kd`, which averaged over classes as well as the batch)"""
    mem_size: int = 200
    """Replay: examples in Avalanche's class-balanced-by-experience buffer"""
    patterns_per_exp: int = 256
    """GEM / A-GEM: examples stored per task"""
    memory_strength: float = 0.5
    """GEM: gamma, the margin added to the projected gradient (Lopez-Paz & Ranzato 2017)"""
    sample_size: int = 256
    """A-GEM: memory examples drawn to compute the reference gradient (Chaudhry et al. 2019)"""
    avalanche_eval: bool = False
    """also evaluate every seen task with Avalanche's EvaluationPlugin after each task"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ewc_lambda >= 0, "ewc_lambda", self.ewc_lambda, "a number >= 0")
        check(0 <= self.ewc_decay <= 1, "ewc_decay", self.ewc_decay, "in [0, 1]")
        check(self.ewc_fisher in ("minibatch", "per_example"), "ewc_fisher", self.ewc_fisher, "'minibatch' or 'per_example'")
        check(self.ewc_fisher_labels in ("predicted", "true"), "ewc_fisher_labels", self.ewc_fisher_labels, "'predicted' or 'true'")
        check(self.ewc_fisher_outputs in ("trained", "all"), "ewc_fisher_outputs", self.ewc_fisher_outputs, "'trained' or 'all'")
        check(self.si_lambda >= 0, "si_lambda", self.si_lambda, "a number >= 0")
        check(self.si_eps > 0, "si_eps", self.si_eps, "a number > 0")
        check(self.si_clip >= 0, "si_clip", self.si_clip, "a number >= 0 (0 = no clamp)")
        check(self.lwf_alpha >= 0, "lwf_alpha", self.lwf_alpha, "a number >= 0")
        check(self.lwf_temperature > 0, "lwf_temperature", self.lwf_temperature, "a number > 0")
        check(self.lwf_weighting in ("constant", "vandeven"), "lwf_weighting", self.lwf_weighting, "'constant' or 'vandeven'")
        check(self.lwf_distill in ("avalanche", "per_task", "reference"), "lwf_distill", self.lwf_distill,
              "'avalanche', 'per_task' or 'reference'")
        check(not (self.lwf_class_mean and self.lwf_distill == "avalanche"), "lwf_class_mean", self.lwf_class_mean,
              "false with lwf_distill = 'avalanche' (set lwf_distill to 'per_task' or 'reference')")
        check(self.mem_size >= 1, "mem_size", self.mem_size, "an integer >= 1")
        check(self.patterns_per_exp >= 1, "patterns_per_exp", self.patterns_per_exp, "an integer >= 1")
        check(self.memory_strength >= 0, "memory_strength", self.memory_strength, "a number >= 0")
        check(self.sample_size >= 1, "sample_size", self.sample_size, "an integer >= 1")


def lwf_alphas(cfg: AvalancheConfig, n_tasks: int) -> float | list[float]:
    """The distillation weight Avalanche's LwF plugin gets: one number, or one per task.

    van de Ven & Tolias (2019) train task t (1-based) on (1/t) CE + (1 - 1/t) T^2 KD. Multiplied by t that is
    CE + (t - 1) T^2 KD, i.e. Avalanche's CE + alpha KD with alpha = (t - 1) T^2 on its experience t - 1. The
    factor t changes only the loss scale within a task, which Adam does not see (rebuilt per task), or sees for
    about a thousand steps while its second moments (beta2 0.999) catch up (kept across tasks)."""
    if cfg.lwf_weighting == "constant":
        return cfg.lwf_alpha
    return [cfg.lwf_alpha * cfg.lwf_temperature**2 * e for e in range(max(n_tasks, 1))]


def ewc_plugin(cfg: AvalancheConfig) -> Any:
    """Avalanche's EWC plugin, with its Fisher estimate or the per-example one (`cfg.ewc_fisher`)."""
    from avalanche.training.plugins import EWCPlugin

    from agentlab.learners.avalanche_ewc import per_example_ewc_plugin

    decay = cfg.ewc_decay if cfg.ewc_mode == "online" else None
    if cfg.ewc_fisher == "per_example":
        return per_example_ewc_plugin(cfg.ewc_lambda, mode=cfg.ewc_mode, decay_factor=decay, labels=cfg.ewc_fisher_labels,
                                      outputs=cfg.ewc_fisher_outputs)
    return EWCPlugin(cfg.ewc_lambda, mode=cfg.ewc_mode, decay_factor=decay)


def method_plugins(cfg: AvalancheConfig, n_tasks: int = 1) -> list[Any]:
    """Avalanche's plugin for `cfg.strategy` (Avalanche's strategy classes are the template plus these)."""
    from avalanche.training import plugins as P

    from agentlab.learners.avalanche_lwf import reference_lwf_plugin
    from agentlab.learners.avalanche_si import si_plugin

    return {
        "naive": lambda: [],
        "ewc": lambda: [ewc_plugin(cfg)],
        "si": lambda: [si_plugin(cfg.si_lambda, eps=cfg.si_eps, clip=cfg.si_clip)],
        "lwf": lambda: [reference_lwf_plugin(lwf_alphas(cfg, n_tasks), cfg.lwf_temperature, cfg.lwf_distill, cfg.lwf_class_mean)],
        "replay": lambda: [P.ReplayPlugin(mem_size=cfg.mem_size)],
        "gem": lambda: [P.GEMPlugin(cfg.patterns_per_exp, cfg.memory_strength)],
        "agem": lambda: [P.AGEMPlugin(cfg.patterns_per_exp, cfg.sample_size)],
    }[cfg.strategy]()


def default_evaluator(with_metrics: bool) -> Any:
    """Silent Avalanche evaluator: accuracy and forgetting per experience and stream, or nothing."""
    import warnings

    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin

    metrics = [] if not with_metrics else [
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
    ]
    with warnings.catch_warnings():  # "no loggers": our loop does the logging
        warnings.simplefilter("ignore")
        return EvaluationPlugin(*metrics, loggers=[])


class AvalancheBaseline:
    """Our learner protocol (`fit(agent, task, ctx)`) around an `AgentStrategy` with a method plugin."""

    name = "avalanche"
    # The strategy's plugin state is not in our checkpoints (see the module docstring): a retraining that must
    # reproduce a run exactly (`agentlab forget`) starts from the untrained agent, never from a later checkpoint.
    checkpoint_complete = False

    def __init__(self, cfg: AvalancheConfig, evaluator: Any = None) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.strategy: Any = None

    def __deepcopy__(self, memo: dict) -> "AvalancheBaseline":
        # Copies of the agent (the loop's untrained snapshot, LwF's previous model) share the
        # learner: a copy of the strategy would copy its plugins, loggers and data loaders.
        return self

    def _build(self, agent: Any, task: Any, ctx: Any) -> Any:
        from agentlab.avalanche_bridge.strategy import AgentStrategy

        if self.evaluator is None:
            self.evaluator = default_evaluator(self.cfg.avalanche_eval)
        return AgentStrategy(
            agent=agent, plugins=method_plugins(self.cfg, ctx.n_tasks), evaluator=self.evaluator, device=ctx.device,
            task_incremental=bool(task.task_label_at_test), max_steps=self.cfg.max_steps, active_outputs=self.cfg.active_outputs,
            keep_optimizer=self.cfg.keep_optimizer,
        )

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        from agentlab.avalanche_bridge.streams import experience_of

        require_classification(task, self.name)
        if self.strategy is None:
            self.strategy = self._build(agent, task, ctx)
        self.strategy.on_step = lambda loss, n: ctx.step({"ce": loss, "total": loss}, n)
        self.strategy.train(experience_of(task, "train"), eval_streams=[])
        if self.cfg.avalanche_eval:
            self.strategy.eval([experience_of(t, "eval") for t in ctx.seen_tasks()])

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def forget_task(self, task_id: int) -> int:
        """Refused once the strategy has trained: its penalties, distillation targets or buffers carry every task."""
        if self.strategy is None:
            return 0
        raise CannotForget(f"learner 'avalanche' (strategy {self.cfg.strategy!r}) keeps task {task_id}'s regularisation "
                           "terms, distillation targets or examples in one strategy state that acted on every later task")

    def state_bytes(self) -> int:
        """Bytes of the examples that replay-style plugins hold (0 for the regularisers)."""
        if self.strategy is None:
            return 0
        total = 0
        for p in self.strategy.plugins:
            buf = getattr(getattr(p, "storage_policy", None), "buffer", None)
            if buf is not None and len(buf):
                x0 = buf[0][0]
                total += len(buf) * x0.numel() * x0.element_size()
            mem = getattr(p, "memory_x", None)
            if isinstance(mem, dict):
                total += sum(v.numel() * v.element_size() for v in mem.values())
        return total


@register("learner", "avalanche", AvalancheConfig)
def build_avalanche(cfg: AvalancheConfig, env: BuildEnv) -> AvalancheBaseline:
    """Avalanche's baselines (naive, ewc, si, lwf, replay, gem, agem) run by Avalanche's template."""
    return AvalancheBaseline(cfg)
