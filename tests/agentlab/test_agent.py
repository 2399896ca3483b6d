"""The agent calls module hooks in the documented order and routes inferred tasks."""

import pytest
import torch
from torch import nn

from agentlab.agent import Agent, restrict_to_classes
from agentlab.data import Batch
from agentlab.protocols import MemoryModule, PlasticityModule
from agentlab.task import Task


class Recorder(PlasticityModule):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def attach(self, backbone):
        self.log.append(f"{self.name}.attach")

    def on_task_start(self, task):
        self.log.append(f"{self.name}.start")

    def on_task_end(self, task):
        self.log.append(f"{self.name}.end")

    def set_task(self, task_id):
        self.log.append(f"{self.name}.set{task_id}")

    def extra_loss(self, batch, output):
        return {"reg": output.sum() * 0}

    def after_step(self, step):
        self.log.append(f"{self.name}.step")

    def state_bytes(self):
        return {0: 10}


class Mem(MemoryModule):
    name = "mem"

    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_task_start(self, task):
        self.log.append("mem.start")

    def on_task_end(self, task):
        self.log.append("mem.end")


def _task(i=0):
    return Task(id=i, name="t", kind="classification", train=None, eval=None, classes=(0, 1))


def test_hook_order():
    log = []
    a = Agent(nn.Linear(4, 2), plasticity=[Recorder("p", log), Recorder("q", log)], memory=[Mem(log)])
    assert log == ["p.attach", "q.attach"]
    log.clear()
    a.start_task(_task())
    out = a(torch.zeros(3, 4), task_id=0)
    terms = a.loss_terms(Batch(torch.zeros(3, 4), torch.zeros(3)), out)
    a.after_step(1)
    a.end_task(_task())
    assert log == ["p.start", "q.start", "mem.start", "p.set0", "q.set0", "p.step", "q.step", "q.end", "p.end", "mem.end"]
    assert set(terms) == {"p/reg", "q/reg"}


def test_duplicate_module_names_refused():
    with pytest.raises(ValueError, match="share a name"):
        Agent(nn.Linear(2, 2), plasticity=[Recorder("p", []), Recorder("p", [])])


def test_memory_inside_backbone_is_found_once():
    log = []
    m = Mem(log)
    backbone = nn.Sequential(nn.Linear(2, 2))
    backbone.add_module("mem", m)
    a = Agent(backbone, memory=[m])
    assert a.memories() == [m]


def test_restrict_to_classes():
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0]])
    r = restrict_to_classes(logits, (1, 3))
    assert r.argmax(-1).item() == 1 and torch.isinf(r[0, 0])


class Inferer(PlasticityModule):
    """Tells the task by the sign of the first feature; adds the task id to the output."""

    name = "inf"

    def __init__(self):
        super().__init__()
        self.task = None

    def set_task(self, task_id):
        self.task = task_id

    def infer_task(self, x, forward):
        return (x[:, 0] > 0).long()


class AddTask(nn.Module):
    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x):
        return x[:, :1] * 0 + float(self.mod.task)


def test_predict_groups_examples_by_inferred_task():
    inf = Inferer()
    a = Agent(AddTask(inf), plasticity=[inf])
    x = torch.tensor([[1.0], [-1.0], [2.0]])
    out, guess = a.predict(x)
    assert guess.tolist() == [1, 0, 1]
    assert out.squeeze(1).tolist() == [1.0, 0.0, 1.0]
