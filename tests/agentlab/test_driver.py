"""The step driver: one hook order for every learner, the modules' loss terms in every learner's loss, passes and stops."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.data import Batch, Split
from agentlab.driver import StepDriver, StepOutput
from agentlab.optim import Schedule
from agentlab.protocols import PlasticityModule
from agentlab.task import Task


class Logged(nn.Module):
    """A linear backbone that records its forward passes."""

    def __init__(self, log: list, n_in: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.log, self.lin = log, nn.Linear(n_in, n_out)

    def forward(self, x):
        self.log.append("forward")
        return self.lin(x.flatten(1))


class Penalty(PlasticityModule):
    """A module with a parameter of its own that only its loss term moves, recording every hook it sees."""

    name = "penalty"

    def __init__(self, log: list | None = None, size: int = 3) -> None:
        super().__init__()
        self.log = log if log is not None else []
        self.w = nn.Parameter(torch.ones(size))

    def extra_loss(self, batch, output):
        self.log.append("extra_loss")
        return {"l2": self.w.pow(2).sum()}

    def after_step(self, step):
        self.log.append(f"after_step {step}")

    def after_epoch(self, epoch):
        self.log.append(f"after_epoch {epoch}")


class Recording(Schedule):
    def __init__(self, log: list, stop_after: int | None = None) -> None:
        self.log, self.stop_after, self.means = log, stop_after, []

    def after_step(self, loss):
        self.log.append("schedule.after_step")

    def after_epoch(self, epoch, loss):
        self.log.append(f"schedule.after_epoch {epoch}")
        self.means.append(loss)
        return self.stop_after is not None and epoch >= self.stop_after


def _ctx(log: list | None = None) -> FitContext:
    logged = (lambda tag, v, s: log.append("log") if tag == "losses/total" else None) if log is not None else (lambda *a: None)
    return FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1, log_every=1, log_scalar=logged)


def _record_views(agent, module, method):
    """The task every module is set to (`agent.current_task_view`) whenever `module.<method>` runs."""
    views, original = [], getattr(module, method)

    def recorded(*a, **k):
        views.append(agent.current_task_view)
        return original(*a, **k)

    setattr(module, method, recorded)
    return views


def _ce(agent, batch, task_id=0):
    out = agent(batch.x, task_id)
    return StepOutput({"ce": nn.functional.cross_entropy(out, batch.y)}, out, batch)


def test_one_step_runs_the_hooks_in_order_and_every_pass_ends_with_after_epoch():
    log: list = []
    agent = Agent(Logged(log), plasticity=[Penalty(log)])
    opt = torch.optim.SGD(agent.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda *a: log.append("optimizer.step"))
    agent.backbone.lin.weight.register_hook(lambda g: log.append("backward"))
    driver = StepDriver(agent, opt, _ctx(log), schedule=Recording(log))
    batches = [Batch(torch.randn(5, 4), torch.randint(0, 3, (5,)), 0) for _ in range(2)]
    steps = driver.run(lambda epoch: batches, lambda b: _ce(agent, b), epochs=2)
    one_step = ["forward", "extra_loss", "backward", "optimizer.step", "after_step {}", "schedule.after_step", "log"]
    expected = []
    for epoch in range(2):
        for s in range(2):
            expected += [e.format(2 * epoch + s) for e in one_step]
        expected += [f"after_epoch {epoch}", f"schedule.after_epoch {epoch}"]
    assert steps == 4 and log == expected


def test_logged_figures_hold_every_term_the_total_and_the_learners_logs():
    agent = Agent(Logged([]), plasticity=[Penalty()])
    driver = StepDriver(agent, torch.optim.SGD(agent.parameters(), lr=0.1), _ctx())
    b = Batch(torch.randn(5, 4), torch.randint(0, 3, (5,)), 0)

    def compute():
        out = _ce(agent, b)
        return StepOutput(out.losses, out.output, b, logs={"acc": 0.5})

    logged = driver.step(compute)
    assert set(logged) == {"ce", "penalty/l2", "total", "acc"}
    assert logged["total"] == pytest.approx(logged["ce"] + logged["penalty/l2"]) and logged["penalty/l2"] == pytest.approx(3.0)
    assert driver.ctx.global_step == 1


def test_a_schedule_that_stops_ends_the_task_after_that_pass(monkeypatch):
    import agentlab.learners.finetune as ft
    from agentlab.learners.sgd import SGDConfig

    log: list = []
    schedule = Recording(log, stop_after=1)
    monkeypatch.setattr(ft, "make_schedule", lambda optimizer, cfg, steps: schedule)
    task = Task(id=0, name="toy", kind="classification", train=Split(torch.randn(20, 4), torch.randint(0, 3, (20,))),
                eval=None, classes=(0, 1, 2))
    agent = Agent(Logged([]), learner=ft.FineTune(SGDConfig(epochs=10, batch_size=5)))
    ctx = _ctx()
    agent.learner.fit(agent, task, ctx)
    assert ctx.global_step == 2 * 4  # two passes of 4 steps, not ten
    assert [e for e in log if e.startswith("schedule.after_epoch")] == ["schedule.after_epoch 0", "schedule.after_epoch 1"]
    assert len(schedule.means) == 2 and all(m > 0 for m in schedule.means)  # each pass's mean total loss


def test_max_steps_and_until_cut_a_pass_which_still_ends_and_a_pass_with_no_step_is_not_ended():
    agent = Agent(Logged([]), plasticity=[Penalty()])
    b = Batch(torch.randn(5, 4), torch.randint(0, 3, (5,)), 0)
    driver = StepDriver(agent, torch.optim.SGD(agent.parameters(), lr=0.1), _ctx())
    assert driver.run(lambda e: [b] * 3, lambda x: _ce(agent, x), epochs=4, max_steps=5) == 5
    assert [e for e in agent.plasticity[0].log if e.startswith("after_epoch")] == ["after_epoch 0", "after_epoch 1"]

    agent = Agent(Logged([]), plasticity=[Penalty()])
    driver = StepDriver(agent, torch.optim.SGD(agent.parameters(), lr=0.1), _ctx())
    assert driver.run(lambda e: [b] * 2, lambda x: _ce(agent, x), epochs=4, until=lambda: driver.steps >= 4) == 4
    assert [e for e in agent.plasticity[0].log if e.startswith("after_epoch")] == ["after_epoch 0", "after_epoch 1"]


def test_replay_trains_on_the_mixed_batch_and_tells_after_step_only_the_new_examples():
    from agentlab.learners.replay import Replay, ReplayConfig

    seen = []
    agent = Agent(Logged([]), learner=Replay(ReplayConfig(batch_size=4, buffer_size=50)))
    agent.after_step = lambda step, observed=None: seen.append((len(observed), observed.y.clone()))
    for i in range(2):
        task = Task(id=i, name=f"t{i}", kind="classification", train=Split(torch.randn(8, 4), torch.full((8,), i)),
                    eval=None, classes=(i,))
        agent.learner.fit(agent, task, _ctx())
    assert [n for n, _ in seen] == [4, 4, 4, 4]  # the buffer's examples join the loss of task 1, not `observed`
    assert all((y == 1).all() for _, y in seen[2:])


def test_protonet_minimises_the_modules_loss_terms():
    from agentlab.learners.protonet import ProtoNet, ProtoNetConfig
    from agentlab.scenarios.episodes import ClassPool, EpisodeSampler

    torch.manual_seed(0)
    pool = ClassPool(torch.rand(24, 1, 2, 2), torch.arange(24) % 4)
    task = Task(id=3, name="toy", kind="episode", train=EpisodeSampler(pool, 2, 1, 1), eval=None, meta={"shots": 1})
    penalty = Penalty()
    agent = Agent(Logged([]), plasticity=[penalty], learner=ProtoNet(ProtoNetConfig(episodes=5, train_ways=3, train_queries=2, lr=0.05)))
    tags = []
    ctx = _ctx()
    ctx.log_scalar = lambda tag, v, s: tags.append(tag)
    views = _record_views(agent, agent.backbone, "forward")
    agent.start_task(task)
    agent.learner.fit(agent, task, ctx)
    assert "losses/penalty/l2" in tags and "losses/train_episode_acc" in tags
    assert (penalty.w < 1).all()  # only the term's gradient moves w
    assert views == [3] * 5  # every episode embedded with the modules set to the task
    agent.learner.predict_episode(agent, task.train.sample(torch.Generator().manual_seed(0)))
    assert views[-1] == 3  # and so are the episodes it answers


def test_memtrans_minimises_the_modules_loss_terms_and_runs_the_backbone_set_to_the_task():
    from agentlab.backbones.memtrans import MemTransNet, MemTransNetConfig
    from agentlab.learners.memtrans import MemTransLearner, MemTransLearnerConfig
    from agentlab.memory.memory_transformer import MemoryTransformerConfig

    torch.manual_seed(0)
    net = MemTransNet(MemTransNetConfig(ways=3, channels=8, memory=MemoryTransformerConfig(in_features=1, dim=16, heads=2, layers=1, slots=20)))
    penalty = Penalty()
    agent = Agent(net, plasticity=[penalty], learner=MemTransLearner(MemTransLearnerConfig(episodes=4, batch=2, protocol="standard", shots=[1], queries=1)))

    def episode(g, ways, shots, queries):
        return SimpleNamespace(protocol="standard", support_x=torch.rand(ways * shots, 1, 28, 28),
                               support_y=torch.arange(ways).repeat_interleave(shots),
                               query_x=torch.rand(ways * queries, 1, 28, 28), query_y=torch.arange(ways).repeat_interleave(queries))

    tags = []
    ctx = _ctx()
    ctx.log_scalar = lambda tag, v, s: tags.append(tag)
    task = Task(id=7, name="toy", kind="episode", train=SimpleNamespace(sample=episode), eval=None)
    views = _record_views(agent, net, "run")
    agent.learner.fit(agent, task, ctx)
    assert ctx.global_step == 2 and "losses/penalty/l2" in tags and "losses/episode_acc" in tags
    assert (penalty.w < 1).all()
    assert views == [7, 7] and agent.current_task_view is None  # the backbone run inside the task's context, restored
    agent.start_task(task)
    agent.learner.predict_episode(agent, episode(None, 3, 1, 1))
    assert views[-1] == 7  # episodes are answered with the modules set to the task trained last


def test_sequence_learner_ends_a_pass_every_epoch_steps():
    from agentlab.backbones.sequence import LSTMSequenceModel
    from agentlab.learners.sequence import SequenceConfig, SequenceLearner
    from agentlab.scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    task = algorithmic_stream(AlgorithmicConfig(tasks=["copy"], bits=4, min_len=1, max_len=3, n_eval=4))[0]
    for epoch_steps, passes in ((2, ["after_epoch 0", "after_epoch 1", "after_epoch 2"]), (0, ["after_epoch 0"])):
        penalty = Penalty()
        agent = Agent(LSTMSequenceModel(6, 4, 8), plasticity=[penalty],
                      learner=SequenceLearner(SequenceConfig(steps=5, batch_size=2, epoch_steps=epoch_steps)))
        ctx = _ctx()
        agent.learner.fit(agent, task, ctx)
        assert ctx.global_step == 5 and agent.learner.steps_done == 5
        assert [e for e in penalty.log if e.startswith("after_epoch")] == passes


def test_set_rewires_under_the_sequence_learner_with_its_default_per_pass_rewiring():
    from agentlab.backbones.sequence import LSTMSequenceModel
    from agentlab.learners.sequence import SequenceConfig, SequenceLearner
    from agentlab.plasticity.set import SET, SETConfig
    from agentlab.scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    task = algorithmic_stream(AlgorithmicConfig(tasks=["copy"], bits=4, min_len=1, max_len=3, n_eval=4))[0]
    torch.manual_seed(0)
    set_module = SET(SETConfig(layers=["out"], epsilon=2.0))
    agent = Agent(LSTMSequenceModel(6, 4, 16), plasticity=[set_module],
                  learner=SequenceLearner(SequenceConfig(steps=7, batch_size=2, epoch_steps=3)))
    agent.start_task(task)
    agent.learner.fit(agent, task, _ctx())
    assert set_module.cfg.rewire_every == 0 and set_module.rewirings == 2  # after the first step of passes 1 and 2
