"""AgentStrategy with any agent: the optimizer is built once the task's modules exist, a user's optimizer keeps its
class and settings (or is refused with a reason), a plain module is refused."""

from __future__ import annotations

import pytest
import torch

from agentlab.agent import Agent
from agentlab.avalanche_bridge import AgentStrategy, to_avalanche
from agentlab.backbones.mlp import MLP
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.optim import optimizes_exactly
from agentlab.plasticity.supsup import SupSup, SupSupConfig
from agentlab.scenarios.mnist import split_mnist


def _supsup_agent(optimizer: str = "adam") -> Agent:
    torch.manual_seed(0)
    return Agent(MLP(784, [32], 10, bias=False), plasticity=[SupSup(SupSupConfig())],
                 learner=FineTune(SGDConfig(optimizer=optimizer, lr=0.01, batch_size=20, epochs=1)))


def _experiences(data_root, n=2):
    stream = split_mnist(data_root, scenario="task", max_per_task=40, max_eval_per_task=10)
    return list(to_avalanche(stream, tasks=list(range(n))).train_stream)


def test_supsup_agent_trains_an_experience_with_the_learners_optimizer(data_root):
    agent = _supsup_agent()
    strategy = AgentStrategy(agent=agent, task_incremental=True)  # no scores exist yet: nothing to optimise
    exp = _experiences(data_root, 1)[0]
    strategy.train(exp)
    supsup = agent.plasticity[0]
    assert supsup.tasks == [0]
    assert isinstance(strategy.optimizer, torch.optim.Adam) and strategy.optimizer.param_groups[0]["lr"] == 0.01
    assert strategy.clock.train_iterations == 2 and strategy.optimizer.state  # it stepped


def test_a_users_optimizer_keeps_its_class_and_settings_over_each_experiences_parameters(data_root):
    agent = _supsup_agent()  # the learner would build Adam 0.01: it must not replace the user's SGD 0.1
    from avalanche.core import SupervisedPlugin

    class Trained(SupervisedPlugin):
        """What the agent trains during each experience (SupSup freezes a task's scores when it ends)."""

        def __init__(self):
            super().__init__()
            self.params = []

        def before_training_epoch(self, strategy, **kwargs):
            self.params.append(list(agent.trainable_parameters()))

    user = torch.optim.SGD(agent.parameters(), lr=0.1, momentum=0.5)
    trained = Trained()
    strategy = AgentStrategy(agent=agent, optimizer=user, task_incremental=True, plugins=[trained])
    built = []
    for exp in _experiences(data_root, 2):
        strategy.train(exp)
        opt = strategy.optimizer
        built.append(opt)
        assert type(opt) is torch.optim.SGD
        assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.5
        assert optimizes_exactly(opt, trained.params[-1]) and trained.params[-1]  # this task's scores
    assert built[0] is not built[1] and not set(map(id, trained.params[0])) & set(map(id, trained.params[1]))


def test_a_users_optimizer_over_exactly_the_trained_parameters_is_used_itself(data_root):
    torch.manual_seed(0)
    agent = Agent(MLP(784, [16], 10), learner=FineTune(SGDConfig(batch_size=20)))
    user = torch.optim.SGD(agent.parameters(), lr=0.05)
    strategy = AgentStrategy(agent=agent, optimizer=user, task_incremental=True)
    strategy.train(_experiences(data_root, 1)[0])
    assert strategy.optimizer is user


def test_a_plain_module_is_refused_with_the_way_to_wrap_it():
    with pytest.raises(TypeError, match=r"wrap it in agentlab\.Agent"):
        AgentStrategy(agent=MLP(784, [16], 10))


def test_optimizers_that_cannot_be_rebuilt_are_refused_with_the_reason():
    agent = _supsup_agent()
    placeholder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    with pytest.raises(ValueError, match="not parameters of the agent"):
        AgentStrategy(agent=agent, optimizer=placeholder)
    plain = Agent(MLP(784, [16], 10))
    layers = plain.backbone.layers
    groups = torch.optim.SGD([{"params": layers[0].parameters(), "lr": 0.1}, {"params": layers[2].parameters(), "lr": 0.01}])
    with pytest.raises(ValueError, match="2 parameter groups with different settings"):
        AgentStrategy(agent=plain, optimizer=groups)
    same = torch.optim.SGD([{"params": layers[0].parameters()}, {"params": layers[2].parameters()}], lr=0.1)
    assert AgentStrategy(agent=plain, optimizer=same)._rebuild[1]["lr"] == 0.1  # groups of one setting are fine
