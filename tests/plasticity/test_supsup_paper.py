"""SupSup as the reference runs Permuted MNIST: masks by score >= 0, seeds, the G objective, standardised pixels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.task import Task
from agentlab.plasticity.supermask_layers import binary_mask
from agentlab.plasticity.supsup import SupSup, SupSupConfig
from agentlab.plasticity.task_inference import g_objective
from agentlab.scenarios.mnist import MNIST_MEAN, MNIST_STD, PermutePixels
from tests_helpers import permuted_stream


def test_threshold_mask_is_score_sign_with_straight_through_gradient():
    s = torch.randn(30, 40, requires_grad=True)
    m = binary_mask(s, "threshold", 0.5)
    assert torch.equal(m, (s.detach() >= 0).float())
    (m * torch.arange(40.0)).sum().backward()
    assert torch.equal(s.grad, torch.arange(40.0).expand(30, 40))  # passed straight through, not through abs()


@pytest.mark.parametrize("seed", [0, 3])
def test_task_scores_are_not_drawn_from_the_weights_seed(seed):
    """Score signs must be independent of weight signs (seeding both alike made 75% of them disagree)."""
    net = nn.Sequential(nn.Linear(784, 300, bias=False))
    sup = SupSup(SupSupConfig(rule="threshold"), seed=seed)
    sup.attach(net)
    sup.on_task_start(Task(id=0, name="t", kind="classification", train=None, eval=None))
    layer = net[0].transform("supsup")
    agree = float(((layer.weight > 0) == (layer.scores["0"] >= 0)).float().mean())
    assert 0.48 < agree < 0.52, agree


def test_g_objective_gradient_only_through_superfluous_units():
    z = torch.randn(3, 7, requires_grad=True)
    g = g_objective(real=4)(z)
    assert torch.allclose(g, torch.logsumexp(z, 1))
    (grad,) = torch.autograd.grad(g.sum(), z)
    assert torch.all(grad[:, :4] == 0) and torch.all(grad[:, 4:] > 0)


def test_task_inference_with_the_g_objective():
    """4 real classes and 4 superfluous outputs: G finds every permuted toy task from a batch, most from one example."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False), nn.ReLU(),
                        nn.Linear(64, 8, bias=False))
    cfg = SupSupConfig(rule="threshold", scale_fan=False, objective="g", real_outputs=4)
    agent = Agent(net, plasticity=[SupSup(cfg)], learner=FineTune(SGDConfig(epochs=10, lr=0.003, batch_size=32)))
    stream = permuted_stream()
    for t in range(3):
        agent.start_task(stream[t])
        agent.learner.fit(agent, stream[t], FitContext(generator=torch.Generator().manual_seed(t), task_index=t, n_tasks=3))
        agent.end_task(stream[t])
    agent.eval()
    sup = agent.plasticity[0]
    per_example = right_batches = 0
    for t in range(3):
        x = stream[t].eval.x
        per_example += int((agent.infer_task(x) == t).sum())
        sup.cfg = SupSupConfig(**{**cfg.__dict__, "infer_group": 0})
        right_batches += int((agent.infer_task(x) == t).all())
        sup.cfg = cfg
    assert right_batches == 3
    assert per_example / (3 * stream[0].eval.x.shape[0]) >= 0.6


def test_permute_pixels_standardises_with_mnist_statistics():
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    perm = torch.randperm(784)
    plain, std = PermutePixels(perm)(x), PermutePixels(perm, normalize=True)(x)
    assert torch.allclose(std, (plain - MNIST_MEAN) / MNIST_STD)


@pytest.mark.parametrize("name,overrides", [
    ("supsup-pmnist", []),
    ("supsup-pmnist", ["backbone.hidden=[300, 300]", "backbone.out_features=100", 'plasticity.0.objective="entropy"']),
    ("supsup-pmnist", ["backbone.hidden=[300, 100]", "backbone.out_features=100", 'plasticity.0.objective="g"']),
    ("fnnsp", []),
])
def test_recipes_resolve_with_the_paper_settings(name, overrides):
    from agentlab import recipe as recipes

    n, table = recipes.read_recipe(name)
    resolved = recipes.resolve(n, recipes.apply_overrides(table, overrides))
    recipes.check_components(resolved)
    if name == "supsup-pmnist":
        assert resolved.table["stream"]["normalize"] is True
