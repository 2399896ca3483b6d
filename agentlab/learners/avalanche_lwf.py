"""LwF's distillation as van de Ven & Tolias (2019) compute it, on Avalanche's `LwFPlugin`.

Avalanche's `LearningWithoutForgetting`, on a model that is not an Avalanche
`MultiTaskModule` (ours: one output layer, restricted to a task's classes when the
task is given), keys the previous model's output under task 0 only, and distils the
softmax over the previous classes alone. Their reference code differs in two ways
that change results:

* task-incremental: every previous task's head gets its own temperature softmax and
  the distillation is the mean over those tasks (`per_task`);
* class-incremental: the softmax runs over all classes seen so far, the current
  task's included, and the previous model's probabilities are padded with zeros on
  the current classes (`reference`). The distillation then also keeps the new
  classes' logits from rising above the old ones on the new images; Avalanche's
  softmax over the old classes alone cannot see the new logits, so its LwF ends at
  fine-tuning's level in class-IL.

`class_mean` divides each distillation term by the number of classes in its
softmax. An early version of their `loss_fn_kd` averaged the cross-entropy over
batch *and* classes (`.mean()` of the whole matrix) where the later one sums over
classes; the option reproduces the earlier, n-times weaker distillation.
"""

from __future__ import annotations

from typing import Any, Literal

DistillMode = Literal["avalanche", "per_task", "reference"]


def per_task_lwf_plugin(alpha: float | list[float], temperature: float) -> Any:
    """An Avalanche `LwFPlugin` whose regulariser distils each previous task's classes on their own."""
    return reference_lwf_plugin(alpha, temperature, mode="per_task")


def reference_lwf_plugin(
    alpha: float | list[float], temperature: float, mode: DistillMode = "reference", class_mean: bool = False
) -> Any:
    """An Avalanche `LwFPlugin` distilling as van de Ven & Tolias: one softmax per previous task label, the mean
    over them; with `mode="reference"` the current experience's classes join their task label's softmax with
    target 0; `class_mean` divides each term by its softmax's width."""
    import torch
    from avalanche.training.plugins import LwFPlugin
    from avalanche.training.regularization import LearningWithoutForgetting

    class ReferenceLwF(LearningWithoutForgetting):
        def __init__(self, alpha: float | list[float], temperature: float) -> None:
            super().__init__(alpha, temperature)
            self.current_classes_by_task: dict[int, set[int]] = {}  # set by the plugin when an experience starts

        def _group_loss(self, out: torch.Tensor, prev: torch.Tensor, old: set[int], new: set[int]) -> torch.Tensor:
            old_cols = sorted(old)
            cols = old_cols + sorted(new - old)  # the old classes first: the zero-padded targets follow them
            log_p = torch.log_softmax(out[:, cols] / self.temperature, dim=1)
            q = torch.softmax(prev[:, old_cols] / self.temperature, dim=1)
            q = torch.nn.functional.pad(q, (0, len(cols) - len(old_cols)))
            # KL(q || p) = cross-entropy - entropy(q): the same gradient as their cross-entropy; kl_div's xlogy
            # makes the padded zeros contribute nothing.
            loss = torch.nn.functional.kl_div(log_p, q, reduction="batchmean")
            return loss / len(cols) if class_mean else loss

        def _lwf_penalty(self, out: torch.Tensor, x: torch.Tensor, curr_model: Any) -> Any:
            if self.prev_model is None or not self.prev_classes_by_task:
                return 0
            with torch.no_grad():
                prev = self.prev_model(x)
            current = self.current_classes_by_task if mode == "reference" else {}
            groups = [(old, current.get(label, set())) for label, old in self.prev_classes_by_task.items()]
            return sum(self._group_loss(out, prev, old, new) for old, new in groups) / len(groups)

    class ReferenceLwFPlugin(LwFPlugin):
        def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            # The current experience's classes by task label, read as Avalanche's post_adapt reads them.
            data = strategy.experience.dataset
            self.lwf.current_classes_by_task = {
                int(t): set(data.task_set[t].targets.uniques) for t in data.targets_task_labels.uniques
            }

    if mode == "avalanche" and not class_mean:
        return LwFPlugin(alpha, temperature)
    if mode == "avalanche":
        raise ValueError("lwf_class_mean applies to lwf_distill 'per_task' or 'reference', not 'avalanche'")
    plugin = ReferenceLwFPlugin(alpha, temperature)
    plugin.lwf = ReferenceLwF(alpha, temperature)
    return plugin
