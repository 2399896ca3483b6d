"""LwF distilled head by head: Avalanche's `LwFPlugin` with the distillation of van de Ven & Tolias (2019).

Avalanche's `LearningWithoutForgetting`, on a model that is not an Avalanche
`MultiTaskModule` (ours: one output layer, restricted to a task's classes when the
task is given), keys the previous model's output under task 0 only. In
task-incremental streams (experiences labelled 0, 1, 2, ...) it therefore distils
task 0's classes and none of the later tasks' heads. Here every previous task's
classes get their own temperature softmax and the distillation is the mean over
those tasks, as in van de Ven & Tolias's multi-head LwF. Where all experiences carry
task label 0 (domain- and class-incremental) there is one group of classes and this
equals Avalanche's loss.
"""

from __future__ import annotations

from typing import Any


def per_task_lwf_plugin(alpha: float | list[float], temperature: float) -> Any:
    """An Avalanche `LwFPlugin` whose regulariser distils each previous task's classes on their own."""
    import torch
    from avalanche.training.plugins import LwFPlugin
    from avalanche.training.regularization import LearningWithoutForgetting

    class PerTaskLwF(LearningWithoutForgetting):
        def _lwf_penalty(self, out: torch.Tensor, x: torch.Tensor, curr_model: Any) -> Any:
            if self.prev_model is None or not self.prev_classes_by_task:
                return 0
            with torch.no_grad():
                prev = self.prev_model(x)
            groups = list(self.prev_classes_by_task.values())  # one set of classes per previous task label
            return sum(self._distillation_loss(out, prev, classes) for classes in groups) / len(groups)

    plugin = LwFPlugin(alpha, temperature)
    plugin.lwf = PerTaskLwF(alpha, temperature)
    return plugin
