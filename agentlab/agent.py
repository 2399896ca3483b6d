"""The agent: a backbone composed with plasticity modules and memory modules.

An agent is assembled, not subclassed:

    agent = Agent(mlp, plasticity=[SupSup(...)], memory=[], learner=FineTune(...))

It calls the modules' hooks in one fixed order (see `agentlab.protocols`):

    build      attached memories are sized for their point (a concatenating one widens the
               read-out), then attach(backbone) for each plasticity module in list order
               (so stacked wrappers apply in that order), then the memories' hooks go on
    task start plasticity.on_task_start in list order, then memory.on_task_start;
               memories that reset per task start afresh
    forward    plasticity.set_task(task_id), then the backbone; each attached memory reads
               and fuses at its point (agentlab.attachment), its state threaded by the agent
    loss       extra_loss of plasticity then memory, each term named `<module>/<term>`
    step       after_step of plasticity then memory; stores are written with the
               features, labels and task ids of the examples the step newly saw
    epoch      after_epoch of plasticity
    task end   plasticity.on_task_end in reverse list order, then memory.on_task_end
    predict    with a task label: as forward; without one, the task is inferred per
               example by the first module that answers, memories (in list order)
               before plasticity modules (in list order)

Memory modules the backbone holds (a DNC core, a memory transformer) are found
in it and called by it; memories passed in `memory=[...]` are attached to it
(`AttachedMemory`; registry-built memories are) or, for a plain `MemoryModule`,
kept beside it with their task hooks only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from agentlab.attachment import AttachedMemory
from agentlab.ports import MemoryPorts
from agentlab.protocols import MemoryModule, PlasticityModule


def restrict_to_classes(logits: Tensor, classes: Sequence[int] | None) -> Tensor:
    """Logits with every class outside `classes` set to -inf: a multi-head read-out by masking.

    This is how task-incremental learning uses one shared output layer
    (van de Ven & Tolias 2019, "Three scenarios for continual learning").
    """
    if classes is None:
        return logits
    mask = torch.full_like(logits, float("-inf"))
    mask[..., list(classes)] = 0.0
    return logits + mask


class Agent(nn.Module):
    """A backbone plus plasticity and memory modules, trained by a learner."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        plasticity: Sequence[PlasticityModule] = (),
        memory: Sequence[MemoryModule] = (),
        learner: Any = None,
        label: str = "agent",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.label = label
        self.backbone = backbone
        self.plasticity = nn.ModuleList(plasticity)
        names = [p.name for p in self.plasticity]
        if len(set(names)) != len(names):
            raise ValueError(f"two plasticity modules share a name in {names}; give each a distinct `name`")
        inside = [m for m in backbone.modules() if isinstance(m, MemoryModule)]
        self.extra_memory = nn.ModuleList([m for m in memory if all(m is not i for i in inside)])
        self.learner = learner
        attached = [m for m in self.extra_memory if isinstance(m, AttachedMemory)]
        self.ports = MemoryPorts(self.backbone, attached, input_shape)  # sizes them: before plasticity wraps layers
        for p in self.plasticity:
            p.attach(self.backbone)
        self.ports.hook(self.backbone)
        # Found once: memories() is called on every training step (after_step, loss_terms).
        self._memories = [m for m in self.backbone.modules() if isinstance(m, MemoryModule)] + list(self.extra_memory)
        self.current_task: int | None = None
        self.current_task_view: int | None = None  # the task every module is set to now
        self._answering: int | None = None  # the task an evaluator asks episode predictions for (predicting_for)
        self.task_classes: dict[int, tuple[int, ...] | None] = {}  # the classes each task trained, for inferred tasks

    # ------------------------------------------------------------------ structure
    def memories(self) -> list[MemoryModule]:
        """Every memory module: those inside the backbone, then those passed in."""
        return list(self._memories)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer should update now (plasticity modules freeze what they protect)."""
        return (p for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ task hooks
    def start_task(self, task: Any) -> None:
        self.current_task = task.id
        classes = getattr(task, "classes", None)
        self.task_classes[int(task.id)] = tuple(int(c) for c in classes) if classes is not None else None
        self.ports.reset("task")
        for p in self.plasticity:
            p.on_task_start(task)
        for m in self.memories():
            m.on_task_start(task)

    def reset_memory(self, done: Tensor | None = None) -> None:
        """Episodes ended: memories that reset per episode start afresh (only the rows `done` marks, if given)."""
        self.ports.reset("episode", done)

    def end_task(self, task: Any) -> None:
        for p in reversed(self.plasticity):
            p.on_task_end(task)
        for m in self.memories():
            m.on_task_end(task)

    def after_step(self, step: int, observed: Any = None) -> None:
        """After every optimiser step: plasticity then memory modules. `observed` is the batch this step newly
        saw (the current task's examples, without replayed ones); memories with a store are written with it."""
        for p in self.plasticity:
            p.after_step(step)
        for m in self.memories():
            m.after_step(step)
        if observed is not None:
            ids = observed.extra.get("task_ids") if observed.extra else None
            if ids is None:
                tid = observed.task_id if observed.task_id is not None else self.current_task
                ids = torch.full((observed.x.shape[0],), -1 if tid is None else int(tid), dtype=torch.long, device=observed.x.device)
            with self.task_context(self.current_task):
                self.ports.write(self.backbone, observed.x, observed.y, ids)
            for m in self._memories:
                if m not in self.ports.memories:
                    m.observe(None, observed.y, ids)

    def after_epoch(self, epoch: int) -> None:
        for p in self.plasticity:
            p.after_epoch(epoch)

    # ------------------------------------------------------------------ computing
    def set_task(self, task_id: int | None) -> None:
        self.current_task_view = task_id
        for p in self.plasticity:
            p.set_task(task_id)

    @contextmanager
    def task_context(self, task_id: int | None) -> Iterator[None]:
        """Every module set to `task_id` for code that calls the backbone's own methods (episode learners call
        `agent.backbone.run(...)`); the previous task is restored after."""
        before = self.current_task_view
        self.set_task(task_id)
        try:
            yield
        finally:
            self.set_task(before)

    @property
    def prediction_task(self) -> int | None:
        """The task whose modules a learner's own predictions use (episode learners: `predict_episode`): the task an
        evaluator named with `predicting_for`, else the task the agent trained last."""
        return self._answering if self._answering is not None else self.current_task

    @contextmanager
    def predicting_for(self, task_id: int | None) -> Iterator[None]:
        """Predictions inside answer for `task_id` (an old task's episodes use that task's modules, not the last
        task's); None = the task trained last."""
        before = self._answering
        self._answering = task_id
        try:
            yield
        finally:
            self._answering = before

    def forward(self, x: Tensor, task_id: int | None = None) -> Tensor:
        """Backbone output with every plasticity module set to `task_id` (None: no task state)."""
        self.set_task(task_id)
        return self.backbone(x)

    def infer_task(self, x: Tensor) -> Tensor | None:
        """Task ids (B,) from the first module that can tell (memories, then plasticity modules), else None."""
        with self.task_context(None):  # a memory reads task-free features
            guess = self.ports.infer_task(self.backbone, x)
        if guess is not None:
            return guess
        for p in self.plasticity:
            guess = p.infer_task(x, self.backbone)
            if guess is not None:
                return guess
        return None

    def observe_inference(self, true_task: int, guess: Tensor) -> None:
        """Tell the plasticity modules the true task of examples whose task was inferred (evaluation only)."""
        for p in self.plasticity:
            p.observe_inference(true_task, guess)

    def predict(self, x: Tensor, task_id: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Outputs for `x`; without a task label, tasks are inferred where a module can.

        Returns `(outputs, inferred_task_ids or None)`. Examples are grouped by
        their inferred task so each group runs through its own sub-network, and its
        logits are restricted to that task's classes where the task named them when it
        trained: once the task is known, so are its classes (a multi-head read-out).
        """
        if task_id is not None:
            return self(x, task_id), None
        guess = self.infer_task(x)
        if guess is None:
            fallback = self.current_task if self.plasticity else None
            return self(x, fallback), None
        out: Tensor | None = None
        for t in torch.unique(guess).tolist():
            rows = (guess == t).nonzero().squeeze(1)
            y = self(x[rows], int(t))
            classes = self.task_classes.get(int(t))
            if classes is not None and isinstance(y, Tensor):
                y = restrict_to_classes(y, classes)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[rows] = y
        assert out is not None
        return out, guess

    def loss_terms(self, batch: Any, output: Tensor) -> dict[str, Tensor]:
        """Extra named loss terms from every module, as `<module>/<term>`."""
        terms: dict[str, Tensor] = {}
        for mod in [*self.plasticity, *self.memories()]:
            for k, v in mod.extra_loss(batch, output).items():
                terms[f"{mod.name}/{k}"] = v
        return terms

    def held_state_bytes(self, memory: MemoryModule) -> int:
        """Bytes of the recurrent state the agent keeps between calls for an attached memory (0 when it resets per call)."""
        for i, m in enumerate(self.ports.memories):
            if m is memory:
                return self.ports.state_bytes(i)
        return 0

    def get_extra_state(self) -> dict[str, Any]:
        return {"memory_states": self.ports.get_state(),
                "task_classes": {str(t): (list(c) if c is not None else None) for t, c in self.task_classes.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.ports.set_state(state.get("memory_states", {}))
        self.task_classes = {int(t): (tuple(c) if c is not None else None) for t, c in state.get("task_classes", {}).items()}

    # ------------------------------------------------------------------ reporting
    def scalars(self) -> dict[str, float]:
        """Module figures, tagged `plasticity/<module>/<figure>` and `memory/<module>/<figure>`."""
        out: dict[str, float] = {}
        for p in self.plasticity:
            out.update({f"plasticity/{p.name}/{k}": float(v) for k, v in p.scalars().items()})
        for m in self.memories():
            out.update({f"memory/{m.name}/{k}": float(v) for k, v in m.scalars().items()})
        return out

    def images(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for p in self.plasticity:
            out.update({f"plasticity/{p.name}/{k}": v for k, v in p.images().items()})
        for m in self.memories():
            out.update({f"memory/{m.name}/{k}": v for k, v in m.images().items()})
        return out

    def histograms(self) -> dict[str, Tensor]:
        """Value sets for TensorBoard histograms (weight magnitudes, DNC slot usage...)."""
        out: dict[str, Tensor] = {}
        for kind, mods in (("plasticity", self.plasticity), ("memory", self.memories())):
            for m in mods:
                out.update({f"{kind}/{m.name}/{k}": v for k, v in m.histograms().items()})
        return out
