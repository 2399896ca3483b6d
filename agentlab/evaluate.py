"""Evaluation by task kind: one function per kind returning an accuracy in [0, 1].

Other kinds (sequence, episode, env, personalization) register their evaluator
with `register_evaluator(kind)`; the loop calls `evaluate(agent, task)` for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from agentlab.agent import restrict_to_classes


@dataclass
class EvalResult:
    acc: float
    n: int
    extra: dict[str, float] = field(default_factory=dict)


Evaluator = Callable[..., EvalResult]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(kind: str) -> Callable[[Evaluator], Evaluator]:
    def deco(fn: Evaluator) -> Evaluator:
        if kind in _EVALUATORS:
            raise ValueError(f"an evaluator for task kind {kind!r} is already registered")
        _EVALUATORS[kind] = fn
        return fn

    return deco


def evaluate(agent: Any, task: Any, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    if task.kind not in _EVALUATORS:
        raise ValueError(f"no evaluator for task kind {task.kind!r}; registered: {sorted(_EVALUATORS)}")
    return _EVALUATORS[task.kind](agent, task, batch_size=batch_size, device=device)


@register_evaluator("classification")
def evaluate_classification(agent: Any, task: Any, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    """Top-1 accuracy on `task.eval`. With the task label given, predictions are restricted
    to the task's classes; without it, the agent infers the task where a module can."""
    was_training = agent.training
    agent.eval()
    correct = total = inferred_right = inferred = 0
    given = task.id if task.task_label_at_test else None
    for batch in task.eval.batches(batch_size):
        x, y = batch.x.to(device), batch.y.to(device)
        with torch.no_grad() if given is not None else torch.enable_grad():
            out, guess = agent.predict(x, given)
        out = out.detach()
        if given is not None:
            out = restrict_to_classes(out, task.classes)
        correct += int((out.argmax(-1) == y).sum())
        total += y.shape[0]
        if guess is not None:
            inferred += y.shape[0]
            inferred_right += int((guess == task.id).sum())
            agent.observe_inference(task.id, guess)
    agent.train(was_training)
    extra = {"task_inference_acc": inferred_right / inferred} if inferred else {}
    return EvalResult(correct / max(total, 1), total, extra)
