"""Prototypical networks: prototypes and distances by hand, the sequential read-out, conv-4, the embedding cache."""

from __future__ import annotations

import pytest
import torch

from agentlab.agent import Agent
from agentlab.backbones.conv4 import Conv4
from agentlab.context import FitContext
from agentlab.learners.protonet import ProtoNet, ProtoNetConfig, neg_sq_dist, prototypes, sequential_logits
from agentlab.task import Task
from agentlab.scenarios.episode_eval import evaluate_episodes
from agentlab.scenarios.episodes import ClassPool, EpisodeSampler, EpisodeSet


def test_prototypes_and_distances_by_hand():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])
    c = prototypes(z, y, 3)
    assert c.tolist() == [[1.0, 0.0], [0.0, 4.0], [1.0, 1.0]]
    q = torch.tensor([[1.0, 2.0]])
    # squared distances: to (1,0): 4; to (0,4): 1 + 4 = 5; to (1,1): 1
    assert neg_sq_dist(q, c).tolist() == [[-4.0, -5.0, -1.0]]


def test_sequential_logits_use_only_earlier_labels():
    z = torch.tensor([[0.0], [10.0], [1.0], [9.0], [2.0]])
    y = torch.tensor([0, 1, 0, 1, 0])
    out = sequential_logits(z, y, 2)
    assert out[0].tolist() == [0.0, 0.0]  # nothing seen yet
    assert out[1, 0] == -100.0 and out[1, 1] == float("-inf")  # class 1 first seen at step 1: no prototype yet
    assert out[2].tolist() == [-1.0, -81.0]  # prototypes 0 and 10
    assert out[4].tolist() == pytest.approx([-(2 - 0.5) ** 2, -(2 - 9.5) ** 2])  # class 0 mean of 0, 1; class 1 of 10, 9


def test_conv4_embeds_28x28_to_64():
    net = Conv4(in_channels=1)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 64)
    assert len([m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    assert Conv4(in_channels=1, out_features=7, embed_dim=64)(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def _toy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8 * 6, 1, 28, 28, generator=g)
    y = torch.arange(48) % 8
    return ClassPool(x, y, rotations=(0, 1))


def test_embedding_cache_equals_direct_embedding():
    torch.manual_seed(0)
    pool = _toy()
    learner = ProtoNet(ProtoNetConfig())
    agent = Agent(Conv4(in_channels=1), learner=learner).eval()
    ep = EpisodeSampler(pool, 4, 2, 3).sample(torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = learner.predict_episode(agent, ep)
        with learner.embedding_cache(agent, pool):
            cached = learner.predict_episode(agent, ep)
    assert torch.allclose(direct, cached, atol=1e-4)


def test_fit_counts_steps_and_learns_a_separable_toy():
    torch.manual_seed(0)
    # classes differ by brightness: an easy task on which a few episodes must beat chance clearly
    x = torch.cat([torch.full((10, 1, 28, 28), v) + 0.05 * torch.rand(10, 1, 28, 28) for v in torch.linspace(0, 1, 6)])
    y = torch.arange(6).repeat_interleave(10)
    pool = ClassPool(x, y)
    task = Task(id=0, name="toy", kind="episode", train=EpisodeSampler(pool, 3, 1, 3),
                eval=EpisodeSet(pool, 20, seed=0, ways=3, shots=1, queries=3), meta={"shots": 1})
    learner = ProtoNet(ProtoNetConfig(episodes=15, train_ways=6, train_queries=3, lr=3e-3))
    agent = Agent(Conv4(in_channels=1), learner=learner)
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1)
    learner.fit(agent, task, ctx)
    assert ctx.global_step == 15 and learner.episodes_done == 15
    assert evaluate_episodes(agent, task.eval).mean > 0.8  # chance is 1/3
