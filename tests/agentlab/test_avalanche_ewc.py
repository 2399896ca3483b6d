"""EWC's per-example Fisher: equal to a loop over single examples, and used by the `avalanche` learner."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agentlab import recipe as recipes
from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.learners.avalanche_ewc import per_example_fisher
from agentlab.runner import run_recipe


def _loop_fisher(agent, x, y, labels, units=None):
    """The definition, one example at a time (van de Ven & Tolias's code computes it with batch size 1), over the
    output `units` (their `allowed_classes`; None: all)."""
    total = {n: torch.zeros_like(p) for n, p in agent.named_parameters()}
    for i in range(len(x)):
        agent.zero_grad()
        out = agent(x[i : i + 1], task_id=0)
        if units is not None:
            out = out[:, units]
        target = out.argmax(1) if labels == "predicted" else y[i : i + 1]
        if units is not None and labels == "true":
            target = torch.tensor([units.index(int(y[i]))])
        F.cross_entropy(out, target).backward()
        for n, p in agent.named_parameters():
            total[n] += p.grad.pow(2)
    return {n: t / len(x) for n, t in total.items()}


class _NormedMLP(torch.nn.Module):
    """Has a trainable LayerNorm, so the Linear-only closed form does not apply (the torch.func path runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 5))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("labels", ["predicted", "true"])
@pytest.mark.parametrize("path", ["closed_form", "vmap"])
def test_per_example_fisher_equals_the_one_example_loop(labels, path, monkeypatch):
    import agentlab.learners.avalanche_ewc as ewc

    calls = []
    closed_form = ewc._add_linear_fisher
    monkeypatch.setattr(ewc, "_add_linear_fisher", lambda *a: calls.append(closed_form(*a)) or calls[-1])
    torch.manual_seed(0)
    agent = Agent(MLP(12, [16], 5) if path == "closed_form" else _NormedMLP())
    x, y = torch.randn(23, 12), torch.randint(0, 5, (23,))
    batches = [(x[i : i + 10], y[i : i + 10], torch.zeros(len(x[i : i + 10]), dtype=torch.long)) for i in range(0, 23, 10)]
    got = per_example_fisher(agent, batches, labels=labels)
    want = _loop_fisher(agent, x, y, labels)
    assert set(got) == set(want)
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-7, rtol=1e-5), n
    assert calls and all(calls) == (path == "closed_form")
    # Avalanche's estimate squares mini-batch means: far smaller than the Fisher on the same data.
    agent.zero_grad()
    F.cross_entropy(agent(x, task_id=0), y).backward()
    w = "backbone.layers.0.weight" if path == "closed_form" else "backbone.body.0.weight"
    assert agent.get_parameter(w).grad.pow(2).sum() < 0.5 * got[w].sum()


@pytest.mark.parametrize("labels", ["predicted", "true"])
@pytest.mark.parametrize("path", ["closed_form", "vmap"])
def test_per_example_fisher_over_the_trained_units_equals_the_loop_over_a_slice(labels, path):
    torch.manual_seed(1)
    agent = Agent(MLP(12, [16], 5) if path == "closed_form" else _NormedMLP())
    units = [1, 3]
    x, y = torch.randn(17, 12), torch.tensor(units)[torch.randint(0, 2, (17,))]
    got = per_example_fisher(agent, [(x, y, torch.zeros(17, dtype=torch.long))], labels=labels, classes=lambda t: units)
    want = _loop_fisher(agent, x, y, labels, units)
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-7, rtol=1e-5), n
    everything = per_example_fisher(agent, [(x, y, torch.zeros(17, dtype=torch.long))], labels=labels)
    assert not torch.allclose(everything["backbone.layers.0.weight" if path == "closed_form" else "backbone.body.0.weight"],
                              got["backbone.layers.0.weight" if path == "closed_form" else "backbone.body.0.weight"])


def test_trained_classes_follow_the_strategy():
    from types import SimpleNamespace

    from agentlab.learners.avalanche_ewc import trained_classes

    task_il = SimpleNamespace(task_incremental=True, classes_by_label={0: (0, 1), 1: (2, 3)})
    assert trained_classes(task_il)(1) == (2, 3)
    active = SimpleNamespace(task_incremental=False, active_outputs=True, seen_classes={5, 0, 3})
    assert trained_classes(active)(0) == [0, 3, 5]
    assert trained_classes(SimpleNamespace(task_incremental=False, active_outputs=False, seen_classes={1})) is None


def test_per_example_fisher_respects_max_examples_and_refuses_no_data():
    agent = Agent(MLP(4, [3], 2))
    x, y, t = torch.randn(8, 4), torch.randint(0, 2, (8,)), torch.zeros(8, dtype=torch.long)
    first3 = per_example_fisher(agent, [(x, y, t)], max_examples=3)
    want = per_example_fisher(agent, [(x[:3], y[:3], t[:3])])
    assert all(torch.allclose(first3[n], want[n]) for n in want)
    with pytest.raises(ValueError, match="at least one training example"):
        per_example_fisher(agent, [])


def test_avalanche_learner_runs_ewc_with_the_per_example_fisher(data_root):
    table = {
        "stream": {"name": "split-mnist", "scenario": "domain", "max_per_task": 30, "max_eval_per_task": 10},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {"ewc": {"backbone": {"name": "mlp", "hidden": [32]},
                           "learner": {"name": "avalanche", "strategy": "ewc", "ewc_fisher": "per_example",
                                       "ewc_lambda": 100.0, "batch_size": 10, "max_steps": 2}}},
    }
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(recipes.resolve("b", table), run_dir=Path(d) / "run", data_root=data_root)
    r = results["ewc"]
    assert r.completed, r.message
    assert r.R.shape == (5, 5) and np.isfinite(np.diag(r.R)).all()


def test_ewc_fisher_option_picks_the_plugin_and_is_checked():
    from avalanche.training.plugins import EWCPlugin

    from agentlab.learners.avalanche_baseline import AvalancheConfig, ewc_plugin

    assert type(ewc_plugin(AvalancheConfig(strategy="ewc"))) is EWCPlugin
    per_example = ewc_plugin(AvalancheConfig(strategy="ewc", ewc_fisher="per_example", ewc_lambda=50.0))
    assert type(per_example).__name__ == "PerExampleEWC" and per_example.ewc_lambda == 50.0

    with pytest.raises(ValueError, match="ewc_fisher"):
        AvalancheConfig(strategy="ewc", ewc_fisher="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ewc_fisher_outputs"):
        AvalancheConfig(strategy="ewc", ewc_fisher_outputs="some")  # type: ignore[arg-type]


@pytest.mark.parametrize("outputs", ["trained", "all"])
def test_task_il_fisher_spans_the_task_units_only_when_trained(data_root, monkeypatch, outputs):
    # The plugin reads the strategy's classes after each task: with "trained" the output rows of every class
    # outside the last task get no gradient, so their Fisher is exactly 0; with "all" they are not.
    import agentlab.learners.avalanche_baseline as ab

    captured = {}
    orig = ab.AvalancheBaseline.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        captured["learner"] = self

    monkeypatch.setattr(ab.AvalancheBaseline, "__init__", init)
    table = {
        "stream": {"name": "split-mnist", "scenario": "task", "max_per_task": 30, "max_eval_per_task": 10},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {"ewc": {"backbone": {"name": "mlp", "hidden": [16]},
                           "learner": {"name": "avalanche", "strategy": "ewc", "ewc_fisher": "per_example",
                                       "ewc_fisher_outputs": outputs, "ewc_lambda": 100.0, "batch_size": 10, "max_steps": 2}}},
    }
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(recipes.resolve("b", table), run_dir=Path(d) / "run", data_root=data_root)
    assert results["ewc"].completed, results["ewc"].message
    (plugin,) = [p for p in captured["learner"].strategy.plugins if type(p).__name__ == "PerExampleEWC"]
    last = max(plugin.importances)
    head = next(v.data for k, v in plugin.importances[last].items() if k.endswith("layers.2.weight"))  # (10, 16)
    own = list(captured["learner"].strategy.classes_by_label.values())[-1]
    others = [c for c in range(10) if c not in own]
    assert head[list(own)].sum() > 0
    assert (head[others].abs().sum() == 0) == (outputs == "trained")
