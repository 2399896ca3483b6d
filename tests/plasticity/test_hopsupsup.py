"""HopSupSup: Storkey storage and keyed recall, the store as the only per-task state (isolation, bytes), recall
degrading past capacity, task inference through the store, checkpoint round trip, bad configuration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.config import ConfigError
from agentlab.context import FitContext
from agentlab.errors import UserError
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.ledger import ledger
from agentlab.plasticity.hopfield_mask_store import HopfieldMaskStore
from agentlab.plasticity.hopsupsup import HopSupSup, HopSupSupConfig
from agentlab.plasticity.unit_gates import UnitGate
from agentlab.data import Split
from agentlab.task import LazyStream, Task
from agentlab.wrapping import WrappedLayer


def toy_stream(n_tasks: int = 3, n: int = 240, d: int = 20, seed: int = 0) -> LazyStream:
    """Class-incremental blobs: task t separates two Gaussian clusters of its own, labelled 2t and 2t + 1."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_tasks, 2, d, generator=g) * 3.0
    data = []
    for t in range(n_tasks):
        y = torch.randint(0, 2, (n,), generator=g)
        data.append((centers[t, y] + torch.randn(n, d, generator=g), y + 2 * t))

    def make(i: int) -> Task:
        x, y = data[i]
        return Task(id=i, name=f"toy/{i}", kind="classification", train=Split(x[:180], y[:180]),
                    eval=Split(x[180:], y[180:]), classes=(2 * i, 2 * i + 1))

    return LazyStream("toy", "class", n_tasks, make, n_classes=2 * n_tasks, input_shape=(d,))


def pm1(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return (torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(seed)) * 2 - 1).float()


def mlp(d: int = 20, hidden: int = 48, out: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(), nn.Linear(hidden, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, out, bias=False))


def make_agent(cfg: HopSupSupConfig = HopSupSupConfig(), *, hidden: int = 48, epochs: int = 6) -> Agent:
    torch.manual_seed(0)
    return Agent(mlp(hidden=hidden), plasticity=[HopSupSup(cfg, seed=0)],
                 learner=FineTune(SGDConfig(epochs=epochs, lr=0.05, batch_size=32, optimizer="adam")))


def train(agent: Agent, task: Task) -> None:
    agent.start_task(task)
    agent.learner.fit(agent, task, FitContext(generator=torch.Generator().manual_seed(task.id), task_index=task.id, n_tasks=3))
    agent.end_task(task)


def bare(t: int) -> Task:
    return Task(id=t, name=str(t), kind="classification", train=None, eval=None)


# ---------------------------------------------------------------------------- the store


def test_storkey_rule_by_hand_and_planted_patterns_are_fixed_points():
    d = 64
    store = HopfieldMaskStore(d)
    P = pm1(2, d)
    W = torch.zeros(d, d)
    for x in P:  # Storkey 1997: h = W x; W += (x xᵀ - x hᵀ - h xᵀ) / d, zero diagonal
        h = W @ x
        dW = torch.outer(x, x) - torch.outer(x, h) - torch.outer(h, x)
        dW.fill_diagonal_(0)
        W = W + dW / d
        store.write(x)
    assert torch.allclose(store.W, W) and torch.equal(store.W, store.W.T) and bool((store.W.diagonal() == 0).all())
    assert torch.equal(store.recall(P), P)


@pytest.mark.parametrize("d", [192, 384])
def test_a_key_recalls_every_planted_pattern_up_to_the_stated_capacity(d):
    store = HopfieldMaskStore(d)
    P = pm1(store.reliable_capacity, d, seed=d)
    for x in P:
        store.write(x)
    where = torch.zeros(d, dtype=torch.bool)
    where[: d // 3] = True  # a third of each pattern is its key (HopSupSup's default: half the gate bits)
    cue = torch.where(where, P, torch.zeros(()))
    assert torch.equal(store.complete(cue, where), P)


def test_keyed_recall_degrades_past_capacity():
    d = 192
    store = HopfieldMaskStore(d)
    P = pm1(4 * store.reliable_capacity, d, seed=3)
    where = torch.zeros(d, dtype=torch.bool)
    where[: d // 3] = True

    def bit_err(n: int) -> float:
        got = store.complete(torch.where(where, P[:n], torch.zeros(())), where)
        return float((got[:, d // 3 :] != P[:n, d // 3 :]).float().mean())

    errs = []
    for n in (store.reliable_capacity, 2 * store.reliable_capacity, 4 * store.reliable_capacity):
        while len(store) < n:
            store.write(P[len(store)])
        errs.append(bit_err(n))
    assert errs[0] == 0.0 < errs[1] < errs[2] and errs[2] > 0.05


# ---------------------------------------------------------------------------- the module


def test_gates_wrap_hidden_layers_only_and_no_task_is_the_plain_network():
    agent = make_agent()
    hop = agent.plasticity[0]
    bb = agent.backbone
    assert isinstance(bb[0], WrappedLayer) and isinstance(bb[0].transform("hopsupsup"), UnitGate)
    assert not isinstance(bb[4], WrappedLayer)  # the read-out is left alone
    assert hop.units == 96 and hop.key_bits == 48 and hop.store.d == 144
    x = torch.randn(5, 20)
    plain = nn.Sequential(bb[0].base_layer, bb[1], bb[2].base_layer, bb[3], bb[4])
    assert torch.equal(agent(x, None), plain(x)) and torch.equal(agent(x, 7), plain(x))
    assert all(not p.requires_grad for p in bb.parameters())  # the weights are fixed


@pytest.mark.parametrize("values", ["binary", "sign"])
def test_store_only_isolation_and_bytes_constant_in_tasks(values):
    """Task 0's outputs are bit-identical after task 1 (the store recalls exactly); nothing is kept per task."""
    agent, stream = make_agent(HopSupSupConfig(values=values)), toy_stream(3)
    hop = agent.plasticity[0]
    x = stream[0].eval.x
    train(agent, stream[0])
    ref = agent(x, 0).detach().clone()
    assert float((agent(x, 0).argmax(1) == stream[0].eval.y).float().mean()) > 0.9  # the gates learned the task
    sizes = [ledger(agent)["modules"]["hopsupsup"]["bytes"]]
    for t in (1, 2):
        train(agent, stream[t])
        sizes.append(ledger(agent)["modules"]["hopsupsup"]["bytes"])
    assert torch.equal(agent(x, 0), ref)
    assert sizes == [hop.store.nbytes()] * 3 == [144 * 144 * 4] * 3
    assert hop.state_bytes() == {0: 0, 1: 0, 2: 0}
    assert [n for n, _ in hop.named_buffers()] == ["store.W", "store.count"]  # no copy of any gate
    assert not any(g.scores for g in hop.layer_transforms())  # scores dropped at each task's end
    s = hop.scalars()
    assert s["hopfield/tasks_stored"] == 3 and s["hopfield/new_recall_bit_err"] == 0 and s["hopfield/key_stable"] == 1


def test_every_forward_uses_the_gates_recalled_from_the_store():
    agent, stream = make_agent(), toy_stream(2)
    hop = agent.plasticity[0]
    train(agent, stream[0])
    x = stream[0].eval.x
    before = agent(x, 0).detach().clone()
    with torch.no_grad():
        hop.store.W.neg_()  # a different store: its attractors are the stored patterns' negations
    hop._cache.clear()
    assert not torch.equal(agent(x, 0), before)


def test_recall_degrades_past_capacity_and_the_figures_show_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32, bias=False), nn.GELU(), nn.Linear(32, 32, bias=False), nn.GELU(), nn.Linear(32, 3))
    hop = HopSupSup(HopSupSupConfig(keep_exact=True), seed=0)
    hop.attach(net)
    cap = hop.store.reliable_capacity  # d = 64 + 32 = 96
    exact, bit_err, stable = [], [], []
    for t in range(4 * cap):
        hop.on_task_start(bare(t))  # random scores: random gate patterns
        hop.on_task_end(bare(t))
        s = hop.scalars()
        exact.append(s["hopfield/mask_recall_acc"])
        bit_err.append(s["hopfield/recall_bit_err"])
        stable.append(s["hopfield/key_stable"])
    assert exact[:cap] == [1.0] * cap and bit_err[:cap] == [0.0] * cap
    assert exact[-1] < 0.5 and bit_err[-1] > 0.05 and stable[-1] < 1.0
    assert hop.scalars()["hopfield/capacity"] == cap == int(96 / math.sqrt(2 * math.log(96))) // 2


def test_task_inference_through_the_store_and_the_exact_gates_agree():
    agent, stream = make_agent(HopSupSupConfig(infer="entropy", infer_group=1, keep_exact=True), hidden=96), toy_stream(3)
    for t in range(3):
        train(agent, stream[t])
    hop = agent.plasticity[0]
    for t in range(3):
        x = stream[t].eval.x
        guess = hop.infer_task(x, agent.backbone)  # each example alone
        assert float((guess == t).float().mean()) > 0.9
        with hop.serving_exact():  # the store recalls exactly: SupSup's entropy rule on the exact gates says the same
            assert torch.equal(hop.infer(x, agent.backbone, "entropy"), guess)
    recovered = hop.infer(stream[0].eval.x[:8], agent.backbone, "recover")  # the paper's recovery lands on a stored task
    assert set(recovered.tolist()) <= {0, 1, 2}


def test_checkpoint_round_trip_with_a_task_in_training():
    agent, stream = make_agent(HopSupSupConfig(keep_exact=True)), toy_stream(3)
    train(agent, stream[0])
    train(agent, stream[1])
    agent.start_task(stream[2])  # task 2 trains: its scores are in the checkpoint
    state = agent.state_dict()
    fresh = make_agent(HopSupSupConfig(keep_exact=True))
    fresh.load_state_dict(state)
    hop, hop2 = agent.plasticity[0], fresh.plasticity[0]
    assert hop2.tasks == [0, 1] and hop2.learning == {2} and torch.equal(hop2.store.W, hop.store.W)
    x = stream[0].eval.x
    for t in (0, 1, 2, None):
        assert torch.equal(agent(x, t), fresh(x, t)), t
    assert torch.equal(hop2.exact_pattern(1), hop.exact_pattern(1))
    hop2.on_task_end(stream[2])
    hop.on_task_end(stream[2])
    assert torch.equal(hop2.store.W, hop.store.W)


def test_bad_configuration_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="key_bits"):
        HopSupSupConfig(key_bits=-1)
    with pytest.raises(ConfigError, match="recover_lr"):
        HopSupSupConfig(recover_lr=0)
    with pytest.raises(UserError, match="hopsupsup.*MiB"):
        HopSupSup(HopSupSupConfig()).attach(nn.Sequential(nn.Linear(4, 6000), nn.Linear(6000, 2)))
    with pytest.raises(UserError, match="only the read-out"):
        HopSupSup(HopSupSupConfig()).attach(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(KeyError, match="keep_exact"):
        with make_agent().plasticity[0].serving_exact():
            pass


@pytest.mark.parametrize("name", ["hopsupsup-split", "hopsupsup-pmnist", "supsup-digits"])
def test_shipped_recipes_resolve(name):
    from agentlab import recipe as recipes

    recipes.check_components(recipes.resolve(*recipes.read_recipe(name)))


def test_resume_after_kill_gives_identical_matrix(tmp_path):
    """A run stopped after 2 tasks and resumed from its checkpoint ends as the uninterrupted run (the store resumes)."""
    import numpy as np

    from agentlab import recipe as recipes
    from agentlab.runner import run_recipe

    def resolved(overrides: list[str]) -> recipes.Resolved:
        table = {"seed": 0, "stream": {"name": "digits-split", "scenario": "task"},
                 "agents": {"hop": {"backbone": {"name": "mlp", "hidden": [64, 64], "bias": False, "activation": "gelu"},
                                    "learner": {"name": "finetune", "epochs": 2, "lr": 0.05, "batch_size": 64},
                                    "plasticity": [{"name": "hopsupsup"}]}}}
        return recipes.resolve("resume", recipes.apply_overrides(table, overrides))

    _, full = run_recipe(resolved([]), run_dir=tmp_path / "full")
    part_dir, part = run_recipe(resolved(["loop.stop_after_tasks=2"]), run_dir=tmp_path / "part")
    assert part["hop"].status == "interrupted"
    _, res = run_recipe(resolved([]), run_dir=part_dir, resume=True)
    np.testing.assert_array_equal(res["hop"].R, full["hop"].R)
    R = full["hop"].R
    for j in range(5):  # task given, gates recalled exactly: no forgetting at all
        assert (R[j:, j] == R[j, j]).all()
    assert len({led["modules"]["hopsupsup"]["bytes"] for led in full["hop"].ledger}) == 1


@pytest.mark.parametrize("conv", [False, True])
def test_per_example_gates_equal_the_task_gates_they_copy(conv):
    """Recovery's per-example path (mode "examples") computes what set_task computes with the same gates."""
    torch.manual_seed(0)
    if conv:
        net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.GELU(), nn.Conv2d(6, 5, 3), nn.GELU(), nn.Flatten(),
                            nn.Linear(5 * 4 * 4, 3))
        x = torch.randn(4, 1, 8, 8)
    else:
        net, x = mlp(), torch.randn(4, 20)
    hop = HopSupSup(HopSupSupConfig(values="sign"), seed=0)
    hop.attach(net)
    net.eval()
    for t in range(2):
        hop.on_task_start(bare(t))
        hop.on_task_end(bare(t))
    hop.set_task(1)
    ref = net(x)
    p = hop.recall([0, 1])  # (2, d)
    hop.ctx.mode, hop.ctx.example_gates = "examples", hop._split(p[[1, 1, 1, 1], hop.key_bits:])
    assert torch.allclose(net(x), ref, atol=1e-6)
    hop.ctx.example_gates = hop._split(p[[0, 1, 0, 1], hop.key_bits:])  # rows differ: each its own task's gates
    mixed = net(x)
    hop.set_task(0)
    assert torch.allclose(mixed[0], net(x)[0], atol=1e-6) and torch.allclose(mixed[1], ref[1], atol=1e-6)
    hop.set_task(None)
    assert set(hop.infer(x, net, "recover").tolist()) <= {0, 1}
