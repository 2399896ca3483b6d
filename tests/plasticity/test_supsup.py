"""SupSup supermasks: bit packing, isolation, base-layer equivalence, task inference, save + load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.data import Split
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.task import LazyStream, Task
from agentlab.plasticity.bitpack import pack_bits, packed_size, unpack_bits
from agentlab.plasticity.supermask_layers import SupermaskLayer, TaskBatchNorm
from agentlab.plasticity.supsup import SupSup, SupSupConfig
from agentlab.plasticity.task_inference import alpha_gradient
from agentlab.wrapping import WrappedLayer
from tests_helpers import permuted_stream


def toy_stream(n_tasks: int = 3, n: int = 240, d: int = 20, seed: int = 0) -> LazyStream:
    """Each task: 2 Gaussian clusters at task-specific places; labels 2t, 2t+1 (class-incremental)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_tasks, 2, d, generator=g) * 3.0
    data = []
    for t in range(n_tasks):
        y = torch.randint(0, 2, (n,), generator=g)
        x = centers[t, y] + torch.randn(n, d, generator=g)
        data.append((x, y + 2 * t))

    def make(i: int) -> Task:
        x, y = data[i]
        return Task(id=i, name=f"toy/{i}", kind="classification", train=Split(x[:180], y[:180]),
                    eval=Split(x[180:], y[180:]), classes=(2 * i, 2 * i + 1))

    return LazyStream("toy", "class", n_tasks, make, n_classes=2 * n_tasks, input_shape=(d,))


def mlp(d: int = 20, out: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False), nn.ReLU(),
                         nn.Linear(64, out, bias=False))


def make_agent(cfg: SupSupConfig = SupSupConfig(), seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    sup = SupSup(cfg, seed=seed)
    return Agent(mlp(), plasticity=[sup], learner=FineTune(SGDConfig(epochs=8, lr=0.01, batch_size=32)))


def train(agent: Agent, task: Task) -> None:
    agent.start_task(task)
    agent.learner.fit(agent, task, FitContext(generator=torch.Generator().manual_seed(task.id), task_index=task.id, n_tasks=3))
    agent.end_task(task)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (13, 5), (3, 4, 3, 3)])
def test_bitpack_round_trip(shape):
    m = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    p = pack_bits(m)
    assert p.dtype == torch.uint8 and p.numel() == packed_size(m.numel())
    assert torch.equal(unpack_bits(p, shape), m)


def test_no_task_state_is_the_plain_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    sup = SupSup(SupSupConfig())
    sup.attach(net)
    assert isinstance(net[0], WrappedLayer) and isinstance(net[0].transform("supsup"), SupermaskLayer)
    assert isinstance(net[1], TaskBatchNorm)
    plain = nn.Sequential(net[0].base_layer, net[1].base_layer, net[2], net[3], net[4].base_layer)
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    sup.set_task(None)
    assert torch.equal(net(x), plain(x))
    sup.set_task(3)  # a task never trained: no state, so the base layers again
    assert torch.equal(net(x), plain(x))
    sup.on_task_start(Task(id=0, name="t", kind="classification", train=None, eval=None))
    assert not torch.equal(net(x), plain(x))  # task 0 has a mask now


def test_only_scores_train_and_masks_pack_to_one_bit():
    agent = make_agent()
    stream = toy_stream()
    agent.start_task(stream[0])
    trainable = [n for n, p in agent.named_parameters() if p.requires_grad]
    assert trainable and all(".scores." in n for n in trainable)
    agent.end_task(stream[0])
    assert not any(p.requires_grad for p in agent.parameters())
    weights = sum(l.weight.numel() for l in agent.plasticity[0]._layers.values())
    assert agent.plasticity[0].state_bytes() == {0: sum(packed_size(l.weight.numel()) for l in agent.plasticity[0]._layers.values())}
    assert agent.plasticity[0].state_bytes()[0] <= weights / 8 + 3


def test_task0_outputs_bit_identical_after_training_task1():
    agent, stream = make_agent(), toy_stream()
    train(agent, stream[0])
    x = stream[0].eval.x
    agent.eval()
    before = agent(x, task_id=0).clone()
    train(agent, stream[1])
    agent.eval()
    assert torch.equal(agent(x, task_id=0), before)
    assert not torch.equal(agent(x, task_id=1), before)


def test_superposition_at_one_hot_alpha_is_that_task():
    agent, stream = make_agent(), toy_stream()
    for i in range(2):
        train(agent, stream[i])
    sup, x = agent.plasticity[0], stream[0].eval.x
    agent.eval()
    with torch.no_grad():
        want = agent(x, task_id=1)
        sup.ctx.mode, sup.ctx.tasks = "superpose", [0, 1]
        sup.ctx.alpha = torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)
        got = agent.backbone(x)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("method,group,threshold", [("oneshot", 0, 1.0), ("binary", 0, 1.0), ("entropy", 1, 0.85),
                                                    ("oneshot", 1, 0.6), ("binary", 1, 0.6)])
def test_task_inference_picks_the_right_task(method, group, threshold):
    """Permuted toy tasks: per batch the entropy gradient finds every task; per example it beats chance (1/3)."""
    torch.manual_seed(0)
    agent = Agent(mlp(20, 4), plasticity=[SupSup(SupSupConfig(infer=method, infer_group=group))],
                  learner=FineTune(SGDConfig(epochs=10, lr=0.003, batch_size=32)))
    stream = permuted_stream()
    for i in range(3):
        train(agent, stream[i])
    agent.eval()
    right = total = 0
    for t in range(3):
        x = stream[t].eval.x
        guess = agent.infer_task(x)
        right += int((guess == t).sum())
        total += x.shape[0]
    assert right / total >= threshold, (method, group, right / total)


def test_alpha_gradient_is_per_example():
    """Example b's gradient must not depend on the other examples of the batch."""
    agent, stream = make_agent(), toy_stream()
    for i in range(2):
        train(agent, stream[i])
    sup, x = agent.plasticity[0], stream[1].eval.x[:6]
    alpha = torch.full((6, 2), 0.5)
    whole = alpha_gradient(agent.backbone, x, sup.ctx, [0, 1], alpha)
    alone = alpha_gradient(agent.backbone, x[2:3], sup.ctx, [0, 1], alpha[2:3])
    assert torch.allclose(whole[2:3], alone, atol=1e-6)


def test_state_dict_load_into_fresh_agent_gives_identical_outputs():
    agent, stream = make_agent(SupSupConfig(hopfield=True)), toy_stream()
    for i in range(2):
        train(agent, stream[i])
    state = copy.deepcopy(agent.state_dict())
    fresh = make_agent(SupSupConfig(hopfield=True), seed=0)
    fresh.load_state_dict(state)
    agent.eval(), fresh.eval()
    x = stream[1].eval.x
    for t in (0, 1):
        assert torch.equal(agent(x, task_id=t), fresh(x, task_id=t))
    assert torch.equal(agent.infer_task(x), fresh.infer_task(x))
    assert fresh.plasticity[0].state_bytes() == agent.plasticity[0].state_bytes()
    assert len(fresh.plasticity[0].store) == 2


def test_per_task_batchnorm_keeps_old_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2, bias=False))
    sup = SupSup(SupSupConfig())
    sup.attach(net)
    t0 = Task(id=0, name="a", kind="classification", train=None, eval=None)
    t1 = Task(id=1, name="b", kind="classification", train=None, eval=None)
    sup.on_task_start(t0)
    net.train()
    net(torch.randn(16, 4))
    sup.on_task_end(t0)
    stats = net[1].per_task["0"].running_mean.clone()
    sup.on_task_start(t1)
    net(torch.randn(16, 4) + 5)
    assert torch.equal(net[1].per_task["0"].running_mean, stats)


def test_figures_hopfield_store_and_confusion():
    agent, stream = make_agent(SupSupConfig(hopfield=True, infer="hopfield", hopfield_steps=5)), toy_stream()
    for i in range(2):
        train(agent, stream[i])
    sup = agent.plasticity[0]
    agent.eval()
    guess = agent.infer_task(stream[0].eval.x)
    assert set(guess.tolist()) <= {0, 1}  # recovery lands on a stored task
    agent.observe_inference(0, guess)
    s = sup.scalars()
    assert s["hopfield/patterns"] == 2 and s["hopfield/recall_exact"] == 1.0
    assert s["hopfield/d"] == 64 * 6 and s["hopfield/bytes"] == (64 * 6) ** 2 * 4 == sup.shared_bytes()
    assert all(s[f"density/{n}"] == 0.5 for n in ("0", "2", "4"))
    imgs = sup.images()
    assert set(imgs) == {"mask_overlap", "task_inference_confusion"}


def test_config_errors_name_the_key():
    from agentlab.config import ConfigError
    from agentlab.errors import UserError

    with pytest.raises(ConfigError, match="density"):
        SupSupConfig(density=0.0)
    with pytest.raises(ConfigError, match="infer"):
        SupSupConfig(infer="hopfield", hopfield=False)
    with pytest.raises(ConfigError, match="layers"):
        SupSupConfig(layers="nothing")  # a list of patterns, not one string
    with pytest.raises(UserError, match=r"supsup.layers=\['nothing'\].*matches no Linear/Conv2d layer.*0, 2, 4"):
        SupSup(SupSupConfig(layers=["nothing"])).attach(mlp())


def test_stacked_masked_weights_give_the_same_inference_and_stay_in_budget():
    """Task inference with the masked weights kept across batches equals unpacking every mask each time;
    the cache holds no more than its budget and forgets stacks when the candidate tasks change."""
    stream = permuted_stream()
    agents = {}
    for mb in (0.0, 1.0, 0.02):  # none, all, about one chunk of 64x20 + 64x64 + 64x4 floats per layer
        torch.manual_seed(0)
        agent = Agent(mlp(20, 4), plasticity=[SupSup(SupSupConfig(infer="oneshot", stack_cache_mb=mb))],
                      learner=FineTune(SGDConfig(epochs=2, lr=0.003, batch_size=32)))
        for i in range(3):
            train(agent, stream[i])
        agent.eval()
        agents[mb] = agent
    x = stream[2].eval.x
    guesses = {mb: [a.infer_task(x), a.infer_task(x)] for mb, a in agents.items()}
    for mb in (1.0, 0.02):
        assert torch.equal(guesses[mb][0], guesses[0.0][0]) and torch.equal(guesses[mb][1], guesses[0.0][0])
    for mb, agent in agents.items():
        for layer in agent.plasticity[0]._layers.values():
            held = sum(v.numel() * v.element_size() for v in layer._stacks.values())
            assert held <= mb * 2**20
            if mb == 1.0:
                assert list(layer._stacks) == [(0, 1, 2)]  # one chunk of all three tasks, kept
            if mb == 0.0:
                assert not layer._stacks
    # A fourth task changes the candidates: the old stacks go.
    agent = agents[1.0]
    train(agent, Task(id=3, name="perm/3", kind="classification", train=stream[1].train, eval=stream[1].eval,
                      classes=(0, 1, 2, 3)))
    agent.eval()
    agent.infer_task(x)
    for layer in agent.plasticity[0]._layers.values():
        assert list(layer._stacks) == [(0, 1, 2, 3)]


def test_stack_cache_budget_is_checked():
    with pytest.raises(Exception, match="stack_cache_mb"):
        SupSupConfig(stack_cache_mb=-1.0)
