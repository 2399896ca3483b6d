"""What `agentlab forget` verifies about an agent that forgot a task: accuracy, leftovers, bit identity.

    accuracies(agent, stream)          every task's accuracy now (the forgotten one included)
    leftovers(agent, task_id)          what each module, memory and the learner still holds of the task
                                       (their `forget_task` run on a copy must free 0 bytes)
    same_state(a, b)                   whether two agents (and their learners) are equal bit for bit,
                                       and the first difference when not

A module that cannot tell what it holds of a task (its `forget_task` refuses) is reported
as not checkable, with its reason, never as clean.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from agentlab.errors import CannotForget
from agentlab.evaluate import evaluate


def accuracies(agent: Any, tasks: list[Any], *, device: str = "cpu", batch_size: int = 1000) -> list[float]:
    """Accuracy of `agent` on each task, as the loop measures it."""
    return [float(evaluate(agent, t, batch_size=batch_size, device=device).acc) for t in tasks]


def parts(agent: Any) -> list[tuple[str, Any]]:
    """(label, object) of everything that may keep per-task state: plasticity modules, memories, the learner."""
    out = [(f"plasticity/{p.name}", p) for p in agent.plasticity]
    out += [(f"memory/{m.name}", m) for m in agent.memories()]
    if agent.learner is not None:
        out.append((f"learner/{agent.learner.name}", agent.learner))
    return out


def forget_in(obj: Any, task_id: int) -> int:
    """`obj.forget_task(task_id)`; a learner without the method refuses."""
    fn = getattr(obj, "forget_task", None)
    if fn is None:
        raise CannotForget(f"{type(obj).__name__} has no forget_task: it keeps no per-task record of its state")
    return int(fn(task_id))


def leftovers(agent: Any, task_id: int) -> dict[str, Any]:
    """Per part: bytes it still holds of `task_id` (0 = none), or the reason it cannot say."""
    probe = copy.deepcopy(agent)
    out: dict[str, Any] = {}
    for label, obj in parts(probe):
        if not getattr(obj, "checkpoint_complete", True):
            out[label] = "not checkable: its state is not in checkpoints (rebuilt by the retraining)"
            continue
        try:
            out[label] = forget_in(obj, task_id)
        except CannotForget as e:
            out[label] = f"not checkable: {e}"
    if task_id in probe.task_classes:
        out["agent/task_classes"] = "the agent still records the task's classes"
    return out


def leftover_bytes(report: dict[str, Any]) -> int:
    """Bytes of the task still held, summed over the parts that can tell (-1 when one records more than bytes)."""
    total = 0
    for v in report.values():
        if isinstance(v, int):
            total += v
        elif isinstance(v, str) and not v.startswith("not checkable"):
            return -1
    return total


def _first_difference(a: Any, b: Any, path: str) -> str | None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path}: a tensor and a {type(b if isinstance(a, torch.Tensor) else a).__name__}"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: shape/dtype {tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}"
        if not torch.equal(a.cpu(), b.cpu()):
            diff = (a.double().cpu() - b.double().cpu()).abs().max().item() if a.is_floating_point() else float("nan")
            return f"{path}: values differ (max |difference| {diff:.3g})"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            only = sorted(map(str, set(a) ^ set(b)))[:4]
            return f"{path}: keys differ ({', '.join(only)})"
        for k in a:
            d = _first_difference(a[k], b[k], f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def same_state(a: Any, b: Any) -> tuple[bool, str]:
    """(equal, first difference or '') over both agents' state (every tensor bit for bit) and their learners'."""
    d = _first_difference(a.state_dict(), b.state_dict(), "agent")
    if d is None and a.learner is not None and b.learner is not None:
        d = _first_difference(a.learner.state_dict(), b.learner.state_dict(), "learner")
    return d is None, d or ""
