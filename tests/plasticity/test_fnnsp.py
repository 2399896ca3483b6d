"""FNNSP controller masks: isolation of old tasks, plain-layer equivalence, sparse updates, save + load."""

from __future__ import annotations

import copy

import torch
from torch import nn

from agentlab.wrapping import WrappedLayer
from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.data import Split
from agentlab.evaluate import evaluate
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.task import LazyStream, Task
from agentlab.plasticity.fnnsp import FNNSP, FNNSPConfig, ModularLinear


def pairs_stream(n_tasks: int = 3, d: int = 20, seed: int = 0) -> LazyStream:
    """Binary tasks (labels 0/1 in every task, task label given), each from its own Gaussian pair."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_tasks):
        c = torch.randn(2, d, generator=g) * 2.0
        y = torch.randint(0, 2, (240,), generator=g)
        data.append((c[y] + torch.randn(240, d, generator=g), y))

    def make(i: int) -> Task:
        x, y = data[i]
        return Task(id=i, name=f"pair/{i}", kind="classification", train=Split(x[:180], y[:180]),
                    eval=Split(x[180:], y[180:]), classes=(0, 1), task_label_at_test=True)

    return LazyStream("pairs", "task", n_tasks, make, n_classes=2, input_shape=(d,))


def make_agent(seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    cfg = FNNSPConfig(modules=8, active_modules=3, new_modules_per_task=2, initial_active=6)
    return Agent(net, plasticity=[FNNSP(cfg)], learner=FineTune(SGDConfig(epochs=5, lr=0.01, batch_size=32)))


def train(agent: Agent, task: Task) -> None:
    agent.start_task(task)
    agent.learner.fit(agent, task, FitContext(generator=torch.Generator().manual_seed(task.id), task_index=task.id, n_tasks=3))
    agent.end_task(task)


def test_no_task_state_is_the_plain_layer():
    agent = make_agent()
    x = torch.randn(5, 20)
    assert sum(isinstance(m, WrappedLayer) and isinstance(m.transform("fnnsp"), ModularLinear) for m in agent.backbone) == 3
    plain = nn.Sequential(*[m.base_layer if isinstance(m, WrappedLayer) else m for m in agent.backbone])
    assert torch.equal(agent(x, task_id=None), plain(x))
    assert torch.equal(agent(x, task_id=7), plain(x))


def test_old_tasks_bit_identical_and_few_weights_updated():
    agent, stream = make_agent(), pairs_stream()
    train(agent, stream[0])
    x = stream[0].eval.x
    agent.eval()
    before = agent(x, task_id=0).clone()
    acc0 = evaluate(agent, stream[0]).acc
    for i in (1, 2):
        train(agent, stream[i])
    agent.eval()
    assert torch.equal(agent(x, task_id=0), before)
    assert evaluate(agent, stream[0]).acc == acc0
    fnnsp = agent.plasticity[0]
    assert acc0 > 0.9 and evaluate(agent, stream[2]).acc > 0.9
    assert 0 < fnnsp.frac_updated[2] < fnnsp.frac_updated[0]  # later tasks train only a few modules
    gates = fnnsp.activation_matrix()
    assert gates.shape == (3, 16) and (gates.sum(1) == 6).all()  # 3 modules on per layer and task
    owned = [int((l.owner >= 0).sum()) for l in fnnsp.hidden]
    assert all(3 <= o <= 3 + 2 * 2 for o in owned)  # task 0 specialises <= 3, later tasks <= 2 each


def test_state_dict_load_into_fresh_agent():
    agent, stream = make_agent(), pairs_stream()
    for i in (0, 1):
        train(agent, stream[i])
    fresh = make_agent(seed=1)
    fresh.load_state_dict(copy.deepcopy(agent.state_dict()))
    agent.eval(), fresh.eval()
    x = stream[1].eval.x
    for t in (0, 1):
        assert torch.equal(agent(x, task_id=t), fresh(x, task_id=t))
    assert fresh.plasticity[0].trained == [0, 1]
    assert fresh.plasticity[0].state_bytes() == agent.plasticity[0].state_bytes()


def test_images_and_scalars():
    agent, stream = make_agent(), pairs_stream()
    for i in (0, 1):
        train(agent, stream[i])
    imgs = agent.plasticity[0].images()
    assert set(imgs) == {"module_activation", "module_correlation"}
    assert all(im.ndim == 3 and im.shape[-1] == 3 for im in imgs.values())
    s = agent.plasticity[0].scalars()
    assert 0 < s["frac_weights_updated"] < 1
