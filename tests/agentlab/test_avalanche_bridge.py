"""The Avalanche bridge both ways: streams, agent as strategy, baselines as learners, equal metrics."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agentlab import metrics as M
from agentlab import recipe as recipes
from agentlab.agent import Agent
from agentlab.avalanche_bridge import AgentStrategy, from_avalanche, to_avalanche
from agentlab.backbones.mlp import MLP
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.runner import run_recipe
from agentlab.scenarios.mnist import split_mnist


def small(data_root, scenario="class", n=60, n_eval=40):
    return split_mnist(data_root, scenario=scenario, max_per_task=n, max_eval_per_task=n_eval)


def test_round_trip(data_root):
    s = small(data_root, "task")
    back = from_avalanche(to_avalanche(s))
    assert len(back) == 5 and back.scenario == "task" and back.n_classes == 10 and back.input_shape == (1, 28, 28)
    for a, b in zip(s, back):
        assert a.classes == b.classes
        assert torch.equal(a.train.all()[0], b.train.all()[0]) and torch.equal(a.train.all()[1], b.train.all()[1])
        assert torch.equal(a.eval.all()[0], b.eval.all()[0])


def test_scenario_inferred(data_root):
    assert from_avalanche(to_avalanche(small(data_root, "class"))).scenario == "class"
    assert from_avalanche(to_avalanche(small(data_root, "domain"))).scenario == "domain"


def test_avalanche_classic_benchmark(data_root):
    from avalanche.benchmarks.classic import SplitMNIST

    bm = SplitMNIST(5, dataset_root=str(data_root), fixed_class_order=list(range(10)))
    s = from_avalanche(bm, name="avalanche-split-mnist")
    assert len(s) == 5 and s.scenario == "class"
    t = s[0]
    assert t.classes == (0, 1) and len(t.train) == 12665 and set(t.train.y.tolist()) == {0, 1}


def _agent(seed=0):
    torch.manual_seed(seed)
    return Agent(MLP(784, [64], 10), learner=FineTune(SGDConfig(lr=0.01, batch_size=20, epochs=1)))


def test_agent_as_strategy_with_evaluation_plugin(data_root):
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import BaseLogger
    from avalanche.training.plugins import EvaluationPlugin

    class Collect(BaseLogger):
        def __init__(self):
            super().__init__()
            self.names = []

        def log_single_metric(self, name, value, x_plot):
            self.names.append(name)

    log = Collect()
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True), loss_metrics(minibatch=True), loggers=[log])
    agent = _agent()
    calls = []
    agent.start_task = lambda task, f=agent.start_task: (calls.append(("start", task.id)), f(task))[1]
    agent.end_task = lambda task, f=agent.end_task: (calls.append(("end", task.id)), f(task))[1]
    bench = to_avalanche(small(data_root, "task"), tasks=[0, 1])
    strategy = AgentStrategy(agent=agent, evaluator=ev, task_incremental=True)
    for exp in bench.train_stream:
        strategy.train(exp)
    res = strategy.eval(bench.test_stream)
    assert calls == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert 0.5 < res["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0
    assert any(n.startswith("Loss_MB/train_phase") for n in log.names)
    assert any(n.startswith("Top1_Acc_Epoch/train_phase") for n in log.names)


def _avalanche_values(metrics, prefix):
    """{exp index: [values in evaluation order]} for per-experience metrics named `prefix.../ExpNNN`."""
    out = {}
    for name, (_, values) in metrics.items():
        if name.startswith(prefix):
            out[int(re.search(r"Exp(\d+)$", name).group(1))] = list(values)
    return out


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_metrics_equal_avalanches(data_root, scenario):
    """On one run, our accuracy matrix, average accuracy, BWT and forgetting equal Avalanche's metrics."""
    table = {
        "stream": {"name": "split-mnist", "scenario": scenario, "max_per_task": 80, "max_eval_per_task": 50},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {"naive": {"backbone": {"name": "mlp", "hidden": [64]},
                             "learner": {"name": "avalanche", "strategy": "naive", "lr": 0.01, "batch_size": 20, "avalanche_eval": True}}},
    }
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(recipes.resolve("eq", table), run_dir=Path(d) / "run", data_root=data_root)
    r = results["naive"]
    learner_metrics = LAST["learner"].evaluator.get_all_metrics()
    acc = _avalanche_values(learner_metrics, "Top1_Acc_Exp/eval_phase/test_stream")
    T = r.R.shape[0]
    R_av = np.full((T, T), np.nan)
    for j, vals in acc.items():
        assert len(vals) == T - j  # evaluated after tasks j..T-1
        R_av[j:, j] = vals
    np.testing.assert_allclose(np.tril(r.R), np.tril(R_av), atol=1e-9)
    stream_acc = learner_metrics["Top1_Acc_Stream/eval_phase/test_stream"][1][-1]
    assert r.metrics["avg_acc"] == pytest.approx(stream_acc, abs=1e-9)  # equal eval sizes: the mean is the pooled accuracy
    forg = learner_metrics["StreamForgetting/eval_phase/test_stream"][1][-1]
    F = M.avalanche_forgetting_matrix(r.R)
    assert forg == pytest.approx(F[-1, :-1].mean(), abs=1e-9)
    assert r.metrics["bwt"] == pytest.approx(-forg, abs=1e-9)
    assert r.metrics["bwt"] == pytest.approx(learner_metrics["StreamBWT/eval_phase/test_stream"][1][-1], abs=1e-9)
    exp_forg = _avalanche_values(learner_metrics, "ExperienceForgetting/eval_phase/test_stream")
    for k in range(T - 1):
        assert exp_forg[k][-1] == pytest.approx(r.R[k, k] - r.R[-1, k], abs=1e-9)
    # Our (Chaudhry) forgetting takes the best earlier accuracy, so it is at least Avalanche's
    assert r.metrics["forgetting"] >= forg - 1e-12


LAST: dict = {}


@pytest.fixture(autouse=True)
def _capture_learner(monkeypatch):
    """Keep the last `avalanche` learner built, to read its Avalanche evaluator after the run."""
    from agentlab.learners import avalanche_baseline as ab

    orig = ab.AvalancheBaseline.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        LAST["learner"] = self

    monkeypatch.setattr(ab.AvalancheBaseline, "__init__", init)


@pytest.mark.parametrize("strategy", ["naive", "ewc", "si", "lwf", "replay", "gem", "agem"])
def test_baseline_learner_trains(data_root, strategy):
    table = {
        "stream": {"name": "split-mnist", "scenario": "task", "max_per_task": 30, "max_eval_per_task": 10},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {strategy: {"backbone": {"name": "mlp", "hidden": [32]},
                              "learner": {"name": "avalanche", "strategy": strategy, "batch_size": 10, "max_steps": 2,
                                          "mem_size": 20, "patterns_per_exp": 10, "sample_size": 10}}},
    }
    resolved = recipes.resolve("b", table)
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(resolved, run_dir=Path(d) / "run", data_root=data_root)
    r = results[strategy]
    assert r.completed, r.message
    assert r.R.shape == (5, 5) and np.isfinite(np.diag(r.R)).all()
    strat = LAST["learner"].strategy
    assert strat.clock.train_iterations == 5 * 2  # max_steps=2 per task, counted by Avalanche's clock
    assert len(r.history) == 5


def test_per_task_lwf_distils_every_previous_head():
    from agentlab.learners.avalanche_lwf import per_task_lwf_plugin

    torch.manual_seed(0)
    prev_model = torch.nn.Linear(6, 4)
    x, out = torch.randn(5, 6), torch.randn(5, 4)
    reg = per_task_lwf_plugin(1.0, 2.0).lwf
    reg.prev_model = prev_model
    reg.prev_classes_by_task.update({0: {0, 1}, 1: {2, 3}})  # task-IL: two previous heads
    with torch.no_grad():
        prev = prev_model(x)

    def kd(cols):
        logp = torch.log_softmax(out[:, cols] / 2.0, 1)
        return torch.nn.functional.kl_div(logp, torch.softmax(prev[:, cols] / 2.0, 1), reduction="batchmean")

    expected = (kd([0, 1]) + kd([2, 3])) / 2
    assert torch.allclose(reg._lwf_penalty(out, x, None), expected)
    # Avalanche's own regulariser keys the single-head output under task 0 and distils task 0's head alone.
    from avalanche.training.regularization import LearningWithoutForgetting

    theirs = LearningWithoutForgetting(1.0, 2.0)
    theirs.prev_model = prev_model
    theirs.prev_classes_by_task.update({0: {0, 1}, 1: {2, 3}})
    assert torch.allclose(theirs._lwf_penalty(out, x, None), kd([0, 1]))


def _kd(out, prev, cols, old_cols, T=2.0):
    log_p = torch.log_softmax(out[:, cols] / T, 1)
    q = torch.nn.functional.pad(torch.softmax(prev[:, old_cols] / T, 1), (0, len(cols) - len(old_cols)))
    return -(q * log_p).sum(1).mean() + (q * torch.log(q.clamp_min(1e-30))).sum(1).mean()  # KL(q || p) by hand


def test_reference_lwf_pads_the_current_classes_in_class_il():
    from agentlab.learners.avalanche_lwf import reference_lwf_plugin

    torch.manual_seed(0)
    prev_model = torch.nn.Linear(6, 6)
    x = torch.randn(5, 6)
    with torch.no_grad():
        prev = prev_model(x)

    def penalty(mode, class_mean=False):
        out = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)).requires_grad_()
        reg = reference_lwf_plugin(1.0, 2.0, mode=mode, class_mean=class_mean).lwf
        reg.prev_model = prev_model
        reg.prev_classes_by_task.update({0: {0, 1, 2, 3}})  # class-IL: two previous tasks, one task label
        reg.current_classes_by_task = {0: {4, 5}}
        loss = reg._lwf_penalty(out, x, None)
        loss.backward()
        return loss, out

    ref, out = penalty("reference")
    assert torch.allclose(ref, _kd(out.detach(), prev, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]))
    # Target 0 on the new classes: the distillation pushes their logits down; over the old classes alone it cannot.
    assert (out.grad[:, 4:] > 0).all()
    per_task, out_pt = penalty("per_task")
    assert torch.allclose(per_task, _kd(out_pt.detach(), prev, [0, 1, 2, 3], [0, 1, 2, 3]))
    assert (out_pt.grad[:, 4:] == 0).all() and not torch.allclose(ref, per_task)
    mean, _ = penalty("reference", class_mean=True)
    assert torch.allclose(mean, ref / 6)  # the early loss_fn_kd: averaged over the softmax's 6 classes


def test_reference_lwf_equals_per_task_when_the_current_classes_are_old_or_another_task():
    from agentlab.learners.avalanche_lwf import reference_lwf_plugin

    torch.manual_seed(0)
    prev_model, x, out = torch.nn.Linear(6, 4), torch.randn(5, 6), torch.randn(5, 4)
    values = []
    for mode, current in [("per_task", {}), ("reference", {0: {0, 1}}), ("reference", {2: {2, 3}})]:
        reg = reference_lwf_plugin(1.0, 2.0, mode=mode).lwf
        reg.prev_model = prev_model
        reg.prev_classes_by_task.update({0: {0, 1}, 1: {2, 3}})
        reg.current_classes_by_task = current  # domain-IL: old classes again; task-IL: a new task label
        values.append(reg._lwf_penalty(out, x, None))
    assert torch.allclose(values[0], values[1]) and torch.allclose(values[0], values[2])


def test_lwf_class_mean_needs_a_reference_distillation():
    from agentlab.config import ConfigError
    from agentlab.learners.avalanche_baseline import AvalancheConfig

    with pytest.raises(ConfigError, match="lwf_class_mean"):
        AvalancheConfig(strategy="lwf", lwf_class_mean=True)
    with pytest.raises(ConfigError, match="lwf_distill"):
        AvalancheConfig(strategy="lwf", lwf_distill="soft")
    AvalancheConfig(strategy="lwf", lwf_class_mean=True, lwf_distill="reference")


def test_reference_lwf_reads_each_experiences_classes(data_root, monkeypatch):
    from agentlab.learners import avalanche_lwf

    seen: list[dict] = []
    orig = avalanche_lwf.reference_lwf_plugin

    def spy(*a, **k):
        plugin = orig(*a, **k)
        hook = plugin.before_training_exp

        def record(strategy, **kw):
            hook(strategy, **kw)
            seen.append(dict(plugin.lwf.current_classes_by_task))
        plugin.before_training_exp = record
        return plugin

    monkeypatch.setattr(avalanche_lwf, "reference_lwf_plugin", spy)
    table = {
        "stream": {"name": "split-mnist", "scenario": "class", "max_per_task": 30, "max_eval_per_task": 10},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {"lwf": {"backbone": {"name": "mlp", "hidden": [32]},
                           "learner": {"name": "avalanche", "strategy": "lwf", "batch_size": 10, "max_steps": 2,
                                       "lwf_distill": "reference", "lwf_class_mean": True, "active_outputs": True}}},
    }
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(recipes.resolve("b", table), run_dir=Path(d) / "run", data_root=data_root)
    assert results["lwf"].completed, results["lwf"].message
    assert seen == [{0: {2 * i, 2 * i + 1}} for i in range(5)]


def test_active_outputs_leave_units_of_unseen_classes_untouched(data_root):
    from agentlab.context import FitContext
    from agentlab.learners.avalanche_baseline import AvalancheBaseline, AvalancheConfig

    stream = split_mnist(data_root, scenario="class", max_per_task=40, max_eval_per_task=10)
    torch.manual_seed(0)
    agent = Agent(MLP(784, [16], 10))
    agent.learner = AvalancheBaseline(AvalancheConfig(strategy="naive", batch_size=20, max_steps=3, lr=0.01, active_outputs=True))
    last = agent.backbone.layers[-1]
    before = last.weight.detach().clone()
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=5)
    task0 = stream[0]
    agent.start_task(task0)
    agent.learner.fit(agent, task0, ctx)
    seen = list(task0.classes)
    unseen = [c for c in range(10) if c not in seen]
    assert torch.equal(last.weight[unseen], before[unseen])  # -inf logits: zero gradient, Adam leaves them
    assert not torch.equal(last.weight[seen], before[seen])


@pytest.mark.parametrize("keep", [True, False])
def test_keep_optimizer_carries_one_optimizer_across_tasks(data_root, keep):
    from agentlab.context import FitContext
    from agentlab.learners.avalanche_baseline import AvalancheBaseline, AvalancheConfig

    stream = split_mnist(data_root, scenario="class", max_per_task=20, max_eval_per_task=10)
    agent = Agent(MLP(784, [8], 10))
    agent.learner = AvalancheBaseline(AvalancheConfig(strategy="naive", batch_size=10, max_steps=1, keep_optimizer=keep))
    optimizers = []
    for i in range(2):
        ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=i, n_tasks=2)
        agent.start_task(stream[i])
        agent.learner.fit(agent, stream[i], ctx)
        agent.end_task(stream[i])
        optimizers.append(agent.learner.strategy.optimizer)
    assert (optimizers[0] is optimizers[1]) == keep
    assert optimizers[1].state  # the second task's steps updated the optimizer that is kept
