"""SupSup through the Avalanche bridge: an agent with supermasks trains as an Avalanche strategy."""

from __future__ import annotations

import torch

from agentlab.agent import Agent
from agentlab.avalanche_bridge import AgentStrategy, to_avalanche
from agentlab.backbones.mlp import MLP
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.plasticity.supsup import SupSup, SupSupConfig
from agentlab.scenarios.mnist import split_mnist


def test_supsup_agent_as_avalanche_strategy(data_root):
    torch.manual_seed(0)
    agent = Agent(MLP(784, [64], 10, bias=False), plasticity=[SupSup(SupSupConfig())],
                  learner=FineTune(SGDConfig(lr=0.01, batch_size=20, epochs=1)))
    stream = split_mnist(data_root, scenario="task", max_per_task=100, max_eval_per_task=50)
    bench = to_avalanche(stream, tasks=[0, 1])
    # Before the first task SupSup has nothing to train; the strategy builds its optimizer once the scores exist.
    strategy = AgentStrategy(agent=agent, task_incremental=True)
    exps = list(bench.train_stream)
    strategy.train(exps[0])
    x = stream[0].eval.x.float() / 255
    agent.eval()
    before = agent(x, task_id=0).clone()
    strategy.train(exps[1])
    agent.eval()
    assert torch.equal(agent(x, task_id=0), before)  # task 0's supermask is frozen bits
    assert agent.plasticity[0].tasks == [0, 1]
    res = strategy.eval(bench.test_stream)
    acc = [v for k, v in res.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    assert acc and acc[0] > 0.6
