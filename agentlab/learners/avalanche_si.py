"""Synaptic Intelligence on Avalanche's `SynapticIntelligencePlugin`, with two fixes: copies on the CPU, and the clip.

Zenke et al. (2017) accumulate, for each parameter, the path integral
W = -sum_t g_t (theta_t+1 - theta_t) over a task, and weigh the parameter by
Omega = sum over tasks of W / (Delta^2 + xi) in the surrogate loss
c * sum Omega (theta - theta*)^2.

1. Copies. Avalanche 0.6 stores the parameter snapshots it needs (theta before and
   after each step, theta* at the start of a task) as `param.detach().cpu().flatten()`.
   On a GPU `.cpu()` copies; on the CPU it returns the parameter itself, so every
   snapshot is a view of the live weights, the optimizer's in-place update moves them
   all, theta_t+1 - theta_t and theta - theta* are zero, and SI does nothing at all
   (measured here: every importance 0 after training on the CPU). The hooks below are
   Avalanche's with each snapshot copied.
2. Clip. Avalanche clamps every Omega at 0.001 when a task ends; the papers do not.
   `clip` = 0 removes the clamp; any other value clamps at it (0.001 is Avalanche's).

Scale: Avalanche's surrogate loss is lambda / 2 * sum Omega (theta - theta*)^2 and
van de Ven & Tolias's c * sum Omega (theta - theta*)^2, so their c is half of our lambda.
"""

from __future__ import annotations

from typing import Any


def si_plugin(si_lambda: float, *, eps: float, clip: float) -> Any:
    """Avalanche's SI plugin with copied snapshots, its importances clamped at `clip` (0: not clamped)."""
    import torch
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import SynapticIntelligencePlugin as SI

    clip_to = float("inf") if clip == 0 else clip

    @torch.no_grad()
    def snapshot(model: Any, target: Any, excluded: Any, grads: bool = False) -> None:
        for name, param in SI.allowed_parameters(model, excluded):
            src = param.grad if grads else param
            target[name].data = src.detach().flatten().to("cpu", copy=True)

    class CopyingSI(SI):
        def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            SupervisedPlugin.before_training_exp(self, strategy, **kwargs)
            SI.create_syn_data(strategy.model, self.ewc_data, self.syn_data, self.excluded_parameters)
            snapshot(strategy.model, self.ewc_data[0], self.excluded_parameters)  # theta* of this task
            for trajectory in self.syn_data["trajectory"].values():
                trajectory.data.fill_(0.0)

        def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            SupervisedPlugin.before_training_iteration(self, strategy, **kwargs)
            snapshot(strategy.model, self.syn_data["old_theta"], self.excluded_parameters)

        @torch.no_grad()
        def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            SupervisedPlugin.after_training_iteration(self, strategy, **kwargs)
            syn = self.syn_data
            snapshot(strategy.model, syn["new_theta"], self.excluded_parameters)
            snapshot(strategy.model, syn["grad"], self.excluded_parameters, grads=True)
            for name in syn["trajectory"]:
                syn["trajectory"][name].data += syn["grad"][name].data * (syn["new_theta"][name].data - syn["old_theta"][name].data)

        def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            SupervisedPlugin.after_training_exp(self, strategy, **kwargs)
            # Avalanche's own update (it clones theta* at the end), with our clamp instead of its fixed 0.001.
            SI.update_ewc_data(strategy.model, self.ewc_data, self.syn_data, clip_to, self.excluded_parameters, 1, eps=self.eps)

    return CopyingSI(si_lambda, eps=eps)
