"""`keep_optimizer`: one optimizer across tasks for our SGD learners, its moments in the checkpoint."""

import numpy as np
import pytest
import torch

from agentlab import recipe as recipes
from agentlab.checkpoint import flatten_state, unflatten_state
from agentlab.learners.sgd import SGDConfig
from agentlab.optim import KeptOptimizer
from agentlab.runner import run_recipe


def _adam_steps(opt: torch.optim.Optimizer) -> float:
    return float(next(iter(opt.state.values()))["step"])


def _train(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()


def test_kept_optimizer_carries_moments_and_rebuilds_when_told_or_when_parameters_change():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    kept, fresh = KeptOptimizer(), KeptOptimizer()
    keep_cfg, fresh_cfg = SGDConfig(keep_optimizer=True), SGDConfig()
    for _ in range(2):  # two "tasks" of 3 steps
        _train(kept.for_task(params, keep_cfg), params, 3)
        _train(fresh.for_task(params, fresh_cfg), params, 3)
    assert _adam_steps(kept.optimizer) == 6 and _adam_steps(fresh.optimizer) == 3
    grown = params + [torch.nn.Parameter(torch.ones(1))]  # a module added parameters: a fresh optimizer
    old = kept.optimizer
    new = kept.for_task(grown, keep_cfg)
    assert new is not old and not new.state


def test_kept_optimizer_state_survives_a_checkpoint_tree():
    params = [torch.nn.Parameter(torch.ones(4))]
    kept = KeptOptimizer()
    _train(kept.for_task(params, SGDConfig(keep_optimizer=True)), params, 5)
    tensors, tree = flatten_state(kept.state_dict())  # string keys only, or this raises
    restored = KeptOptimizer()
    restored.load_state_dict(unflatten_state(tree, tensors))
    opt = restored.for_task(params, SGDConfig(keep_optimizer=True))
    assert _adam_steps(opt) == 5
    torch.testing.assert_close(opt.state[params[0]]["exp_avg_sq"], kept.optimizer.state[params[0]]["exp_avg_sq"])


def _resolved(overrides):
    name, table = recipes.read_recipe("digits-split")
    base = ["learner.epochs=1", "learner.batch_size=64", "learner.keep_optimizer=true"]
    return recipes.resolve(name, recipes.apply_overrides(table, base + overrides))


def test_resumed_run_with_a_kept_optimizer_equals_the_uninterrupted_one(tmp_path):
    # Without the optimizer's moments in the checkpoint, task 2 would start from a fresh Adam and differ.
    for name in ("finetune", "replay"):
        _, full = run_recipe(_resolved([]), run_dir=tmp_path / "full", only=[name])
        part_dir, part = run_recipe(_resolved(["loop.stop_after_tasks=2"]), run_dir=tmp_path / "part", only=[name])
        assert part[name].status == "interrupted"
        _, res = run_recipe(_resolved([]), run_dir=part_dir, resume=True, only=[name])
        np.testing.assert_array_equal(res[name].R, full[name].R)


def test_kept_and_fresh_optimizers_give_different_runs(tmp_path):
    name, table = recipes.read_recipe("digits-split")
    fresh = recipes.resolve(name, recipes.apply_overrides(table, ["learner.epochs=1", "learner.batch_size=64"]))
    _, a = run_recipe(fresh, run_dir=tmp_path / "fresh", only=["finetune"])
    _, b = run_recipe(_resolved([]), run_dir=tmp_path / "kept", only=["finetune"])
    assert not np.array_equal(a["finetune"].R, b["finetune"].R)


def test_learner_without_kept_optimizer_support_says_so(tmp_path):
    from agentlab.data import Split
    from agentlab.learners.finetune import train_split

    with pytest.raises(ValueError, match="keep_optimizer = true is not supported by this learner"):
        train_split(None, None, Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)), SGDConfig(keep_optimizer=True), None)
