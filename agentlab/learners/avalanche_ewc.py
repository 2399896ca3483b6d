"""EWC with the per-example Fisher: Avalanche's `EWCPlugin`, its importance estimate replaced.

Kirkpatrick et al. (2017) weigh each parameter by the diagonal of the Fisher
information, F_i = E_x[(d log p(y|x) / d theta_i)^2]: the square of each
*example's* gradient, averaged. Avalanche's `EWCPlugin.compute_importances`
squares the gradient of each *mini-batch mean* loss instead; for mostly
independent per-example gradients that is about 1/B of the Fisher (B = batch
size), so a lambda tuned on the real Fisher (van de Ven & Tolias's Permuted MNIST
lambda = 100, with batch 128) acts about 128 times weaker. This plugin keeps
everything else of Avalanche's EWC (separate or online penalties, the saved
parameters, the penalty term) and computes F as the papers do. Where every
trainable parameter belongs to an `nn.Linear` called once per forward on (B, in)
inputs (MLPs), the per-example squares come in closed form from one backward pass:
the gradient of example i for W is delta_i a_i^T, so sum_i of its square is
(delta^2)^T (a^2), a single matrix product; otherwise `torch.func` computes one
vectorised gradient per example (no Python loop over examples). Both are exact.

`labels = "predicted"` takes y as the network's own most likely class, as van de
Ven & Tolias's code does by default (the "true Fisher" at its mode);
`labels = "true"` uses the data's labels (the empirical Fisher). `outputs =
"trained"` takes p(y | x) over the output units the task trains on (its own classes
when task-incremental, the classes seen so far with `active_outputs`), as their code's
`allowed_classes`; `"all"` over every unit.

Note on scale: Avalanche's penalty is lambda * sum F (theta - theta*)^2; the
reference code's is lambda * 1/2 * sum F (theta - theta*)^2, so its lambda
corresponds to half of it here.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.agent import restrict_to_classes

ClassesFor = Callable[[int], Sequence[int] | None]


def per_example_fisher(
    model: torch.nn.Module, batches: Any, *, labels: Literal["predicted", "true"] = "predicted",
    max_examples: int = 0, device: str | torch.device = "cpu", classes: ClassesFor | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of `model` (name -> tensor shaped like the parameter) from `(x, y, task_ids)` batches:
    the mean over examples of each example's squared gradient of -log p(y | x); parameters without
    `requires_grad` get zeros. `max_examples` > 0 stops after that many examples (0 = all). `classes(task)`
    names the output units p(y | x) spans for that task's examples (None: all)."""
    from torch.func import functional_call, grad, vmap

    classes = classes or (lambda task: None)

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    names = list(params)
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}

    def nll(p: dict[str, Tensor], x: Tensor, y: Tensor, task: int) -> Tensor:
        out = functional_call(model, {**p, **frozen, **buffers}, (x.unsqueeze(0),), {"task_id": task})
        out = restrict_to_classes(out, classes(task))
        target = out.detach().argmax(1) if labels == "predicted" else y.unsqueeze(0)
        return F.cross_entropy(out, target)

    seen = 0
    was_training = model.training
    model.eval()
    linear_ok = True
    try:
        for x, y, task_ids in batches:
            if max_examples and seen >= max_examples:
                break
            if max_examples:
                x, y, task_ids = x[: max_examples - seen], y[: max_examples - seen], task_ids[: max_examples - seen]
            x, y, task_ids = x.to(device), y.to(device), torch.as_tensor(task_ids)
            for t in torch.unique(task_ids).tolist():  # the agent takes one task id per call
                rows = (task_ids == t).nonzero().squeeze(1).to(device)
                if linear_ok:
                    linear_ok = _add_linear_fisher(model, fisher, names, x[rows], y[rows], int(t), labels, classes(int(t)))
                if not linear_ok:
                    per_example = vmap(grad(nll), in_dims=(None, 0, 0, None))(params, x[rows], y[rows], int(t))
                    for n in names:
                        fisher[n] += per_example[n].pow(2).sum(0)
            seen += len(x)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("EWC's Fisher needs at least one training example; the experience's dataset is empty")
    return {n: f / seen for n, f in fisher.items()}


def _add_linear_fisher(model: torch.nn.Module, fisher: dict[str, Tensor], names: list[str], x: Tensor, y: Tensor,
                       task: int, labels: str, allowed: Sequence[int] | None = None) -> bool:
    """Add the batch's per-example squared gradients to `fisher` in closed form; False (nothing added) unless every
    trainable parameter is the weight or bias of an `nn.Linear` called exactly once on 2-D inputs."""
    linears = {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    covered = {f"{n}.weight" for n, m in linears.items() if m.weight.requires_grad}
    covered |= {f"{n}.bias" for n, m in linears.items() if m.bias is not None and m.bias.requires_grad}
    if not linears or set(names) != covered:
        return False
    inputs: dict[str, list[Tensor]] = {n: [] for n in linears}
    outputs: dict[str, list[Tensor]] = {n: [] for n in linears}

    def keep(name: str) -> Any:
        def hook(module: Any, args: tuple, out: Tensor) -> None:
            inputs[name].append(args[0].detach())
            outputs[name].append(out)
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in linears.items()]
    try:
        out = restrict_to_classes(model(x, task_id=task), allowed)
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 1 or v[0].dim() != 2 for v in inputs.values()):
        return False  # a layer shared within the forward, or not used, or applied over a sequence
    target = out.detach().argmax(1) if labels == "predicted" else y
    # Summed over examples, the gradient at each layer's output row i is example i's own (examples are independent
    # in eval mode), so squares of per-example weight gradients are (delta^2)^T (a^2).
    deltas = torch.autograd.grad(F.cross_entropy(out, target, reduction="sum"), [outputs[n][0] for n in linears])
    for (n, m), delta in zip(linears.items(), deltas):
        d2, a2 = delta.pow(2), inputs[n][0].pow(2)
        if m.weight.requires_grad:
            fisher[f"{n}.weight"] += d2.T @ a2
        if m.bias is not None and m.bias.requires_grad:
            fisher[f"{n}.bias"] += d2.sum(0)
    return True


def per_example_ewc_plugin(ewc_lambda: float, *, mode: str = "separate", decay_factor: float | None = None,
                           labels: Literal["predicted", "true"] = "predicted",
                           outputs: Literal["trained", "all"] = "trained") -> Any:
    """Avalanche's `EWCPlugin` whose importances are the per-example Fisher of `per_example_fisher`, over the
    output units the strategy trains (`outputs = "trained"`; our `AgentStrategy`'s task classes or seen classes)
    or over all of them."""
    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.utils import ParamData
    from torch.utils.data import DataLoader

    class PerExampleEWC(EWCPlugin):
        def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            self.classes = trained_classes(strategy) if outputs == "trained" else None
            super().after_training_exp(strategy, **kwargs)

        def compute_importances(self, model: Any, criterion: Any, optimizer: Any, dataset: Any, device: Any,
                                batch_size: int, num_workers: int = 0) -> dict[str, Any]:
            collate = getattr(dataset, "collate_fn", None)
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
            batches = ((b[0], b[1], b[-1]) for b in loader)
            fisher = per_example_fisher(model, batches, labels=labels, device=device, classes=getattr(self, "classes", None))
            return {n: ParamData(n, f.shape, device=f.device, init_tensor=f) for n, f in fisher.items()}

    return PerExampleEWC(ewc_lambda, mode=mode, decay_factor=decay_factor)


def trained_classes(strategy: Any) -> ClassesFor | None:
    """The output units `strategy` trains each task's examples on: the task's classes when task-incremental, the
    classes seen so far with `active_outputs` (van de Ven & Tolias's "active classes"), else None (all units)."""
    if getattr(strategy, "task_incremental", False):
        by_label = strategy.classes_by_label
        return lambda task: by_label.get(task)
    if getattr(strategy, "active_outputs", False) and strategy.seen_classes:
        seen = sorted(strategy.seen_classes)
        return lambda task: seen
    return None
