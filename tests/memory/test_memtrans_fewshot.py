"""The memtrans few-shot learner on tiny synthetic episodes: shapes, query independence, label timing, a training step."""

from types import SimpleNamespace

import torch

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.task import Task
from agentlab.memory.memory_transformer import MemoryTransformerConfig
from agentlab.backbones.memtrans import MemTransNet, MemTransNetConfig
from agentlab.learners.memtrans import MemTransLearner, MemTransLearnerConfig


def _agent(**kw):
    torch.manual_seed(0)
    net = MemTransNet(MemTransNetConfig(ways=3, channels=8, memory=MemoryTransformerConfig(in_features=1, dim=16, heads=2, layers=1, slots=20)))
    return Agent(net, learner=MemTransLearner(MemTransLearnerConfig(episodes=4, batch=2, **kw)))


def _episode(shots=2, queries=2, ways=3):
    return SimpleNamespace(protocol="standard", support_x=torch.rand(ways * shots, 1, 28, 28),
                           support_y=torch.arange(ways).repeat_interleave(shots), query_x=torch.rand(ways * queries, 1, 28, 28),
                           query_y=torch.arange(ways).repeat_interleave(queries))


def _sequential(t=9, ways=3):
    y = torch.arange(t) % ways
    prev = torch.zeros(t, ways)
    prev[1:] = torch.nn.functional.one_hot(y[:-1], ways).float()
    return SimpleNamespace(protocol="sequential", x=torch.rand(t, 1, 28, 28), y=y, prev_label=prev)


def test_standard_logits_shape_and_queries_answered_independently():
    agent = _agent()
    agent.eval()
    ep = _episode()
    with torch.no_grad():
        a = agent.learner.predict_episode(agent, ep)
        ep2 = _episode()
        ep2.support_x, ep2.query_x = ep.support_x, ep.query_x.clone()
        ep2.query_x[0] = torch.rand(1, 28, 28)  # change the first query only
        b = agent.learner.predict_episode(agent, ep2)
    assert a.shape == (6, 3)
    assert torch.allclose(a[1:], b[1:], atol=1e-5) and not torch.allclose(a[0], b[0])


def test_sequential_step_ignores_its_own_future_label():
    agent = _agent()
    agent.eval()
    ep = _sequential()
    with torch.no_grad():
        a = agent.learner.predict_episode(agent, ep)
        ep.prev_label[5:] = 0  # labels revealed from step 5 on are removed
        b = agent.learner.predict_episode(agent, ep)
    assert a.shape == (9, 3)
    assert torch.allclose(a[:5], b[:5], atol=1e-5)


def test_fit_runs_steps_and_updates_parameters():
    agent = _agent(protocol="both", shots=[1], queries=2, per_class=3)
    sampler = SimpleNamespace(sample=lambda g, ways, shots, queries: _episode(shots, queries, ways),
                              sequential=lambda g, ways, per_class: _sequential(ways * per_class, ways))
    before = agent.backbone.head.weight.clone()
    steps = []
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1)
    ctx.progress = lambda info: steps.append(info)
    agent.learner.fit(agent, Task(id=0, name="toy", kind="episode", train=sampler, eval=None), ctx)
    assert len(steps) == 2 and agent.learner.episodes_done == 4
    assert not torch.equal(before, agent.backbone.head.weight)


def test_batched_episodes_equal_one_at_a_time():
    agent = _agent()
    agent.eval()
    net, learner = agent.backbone, agent.learner
    for eps in ([_episode(), _episode()], [_sequential(), _sequential()]):
        with torch.no_grad():
            both, _ = learner.batch_loss(net, eps, "cpu")
            single = sum(learner.batch_loss(net, [ep], "cpu")[0] for ep in eps) / 2
        assert torch.allclose(both, single, atol=1e-5)
