"""Episode streams on real data and the `episode` evaluator on toys."""

from __future__ import annotations

import pytest
import torch

from agentlab.agent import Agent
from agentlab.evaluate import evaluate
from agentlab.protocols import MemoryModule
from agentlab.registry import BuildEnv, build
from agentlab.task import Task
from agentlab.scenarios.episode_eval import evaluate_episodes
from agentlab.scenarios.episodes import ClassPool, EpisodeSet


def test_omniglot_episode_stream(data_root):
    s = build("stream", {"name": "omniglot-episodes", "ways": 5, "shots": 1, "queries": 2, "eval_episodes": 3,
                         "n_tasks": 2}, BuildEnv(data_root=data_root))
    assert s.scenario == "fewshot" and len(s) == 2 and s.input_shape == (1, 28, 28)
    assert s.meta["train_classes"] == 4800 and s.meta["test_classes"] == 423 * 4
    t0, t1 = s[0], s[1]
    assert t0.kind == "episode" and t0.meta["ways"] == 5
    assert len(t0.eval) == 3 and not t0.eval[0].query_x.equal(t1.eval[0].query_x)  # consecutive episodes, not repeats
    assert s[0].eval[2].query_x.equal(t0.eval[2].query_x)  # a task is rebuilt equal
    ep = t0.train.sample(torch.Generator().manual_seed(0), ways=60, shots=1, queries=5)
    assert ep.support_x.shape == (60, 1, 28, 28) and ep.query_x.shape == (300, 1, 28, 28)


def test_mnist_held_out_classes(data_root):
    s = build("stream", {"name": "mnist-episodes", "ways": 5, "shots": 2, "queries": 3, "eval_episodes": 2},
              BuildEnv(data_root=data_root))
    t = s[0]
    assert t.train.pool.n_classes == 5 and t.eval.pool.n_classes == 5
    ep = t.eval[0]
    assert ep.support_x.shape == (10, 1, 28, 28) and float(ep.support_x.max()) <= 1.0
    assert sorted(ep.classes.tolist()) == [0, 1, 2, 3, 4]  # pool ids of the held-out classes 5..9


class _Oracle:
    """A toy episode learner: cheats with the labels (perfect) or answers label 0 always."""

    name = "oracle"

    def __init__(self, perfect: bool) -> None:
        self.perfect = perfect

    def predict_episode(self, agent, ep, device="cpu"):
        y = ep.query_y if ep.protocol == "standard" else ep.y
        out = torch.zeros(y.shape[0], ep.ways)
        out[torch.arange(y.shape[0]), y if self.perfect else torch.zeros_like(y)] = 1.0
        return out


class _CountingMemory(MemoryModule):
    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def _toy_task(protocol: str) -> Task:
    x = torch.rand(60, 1, 4, 4)
    y = torch.arange(60) % 6
    eps = EpisodeSet(ClassPool(x, y), 4, seed=0, ways=3, shots=1, queries=2, protocol=protocol, per_class=3)
    return Task(id=0, name="toy", kind="episode", train=None, eval=eps)


@pytest.mark.parametrize("protocol", ["standard", "sequential"])
def test_episode_evaluator_on_toys(protocol):
    mem = _CountingMemory()
    good = Agent(torch.nn.Identity(), memory=[mem], learner=_Oracle(True))
    res = evaluate(good, _toy_task(protocol))
    assert res.acc == 1.0 and res.n == 4 and res.extra["ci95"] == 0.0
    assert mem.resets == 4  # memory reset before every episode
    bad = Agent(torch.nn.Identity(), learner=_Oracle(False))
    assert evaluate(bad, _toy_task(protocol)).acc == pytest.approx(1 / 3)
    if protocol == "sequential":
        rep = evaluate_episodes(good, _toy_task(protocol).eval)
        assert rep.by_sighting() == [1.0, 1.0, 1.0] and "acc_sighting_03" in res.extra


def test_evaluator_names_a_learner_without_predict_episode():
    class Plain:
        name = "finetune"

    with pytest.raises(ValueError, match="finetune.*predict_episode"):
        evaluate(Agent(torch.nn.Identity(), learner=Plain()), _toy_task("standard"))


def test_omniglot_to_mnist_cross_domain(data_root):
    s = build("stream", {"name": "omniglot-episodes", "eval_source": "fashion", "eval_classes": [0, 6, 2, 4],
                         "ways": 3, "queries": 2, "eval_episodes": 2}, BuildEnv(data_root=data_root))
    t = s[0]
    assert s.name == "omniglot-to-fashion" and t.train.pool.n_classes == 4800 and t.eval.pool.n_classes == 4
    assert t.eval[0].query_x.shape == (6, 1, 28, 28)


class _TaskRecorder:
    """A toy episode learner that records which task the agent's predictions answer for."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[int | None] = []

    def predict_episode(self, agent, ep, device="cpu"):
        self.seen.append(agent.prediction_task)
        return torch.zeros(ep.query_y.shape[0], ep.ways)


def test_an_old_episode_task_is_answered_with_its_own_modules():
    """After training tasks 0 and 1, task 0's episodes use task 0's modules when the label is given, the last
    task's when it is not."""
    learner = _TaskRecorder()
    agent = Agent(torch.nn.Identity(), learner=learner)
    agent.current_task = 1  # trained last
    old = _toy_task("standard")
    given = Task(id=0, name="toy", kind="episode", train=None, eval=old.eval, task_label_at_test=True)
    evaluate(agent, given)
    assert set(learner.seen) == {0}
    learner.seen.clear()
    evaluate(agent, old)  # no label at test (the default)
    assert set(learner.seen) == {1}
    assert agent.prediction_task == 1  # the evaluator's choice does not outlive it
