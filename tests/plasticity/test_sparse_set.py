"""SET: density at init, constant connection count under rewiring, frozen-and-grow isolation, export, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.data import Split
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.ledger import ledger
from agentlab.task import Task
from agentlab.plasticity.rewire import cosine_zeta, prune_nearest_zero
from agentlab.plasticity.set import SET, SETConfig
from agentlab.plasticity.sparse_export import export_sparse
from agentlab.plasticity.sparse_layer import SparseLayer, erdos_renyi_density


def _task(i: int, classes: tuple[int, ...], n: int = 64, d: int = 20, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed + i)
    x = torch.randn(n, d, generator=g)
    y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    x[:, : len(classes)] += 2 * torch.nn.functional.one_hot(y % len(classes), len(classes)).float()
    split = Split(x, y)
    return Task(id=i, name=f"t{i}", kind="classification", train=split, eval=split, classes=classes, task_label_at_test=True)


def test_density_after_init_matches_epsilon():
    torch.manual_seed(0)
    mlp = MLP(784, [300, 100], 10)
    s = SET(SETConfig(epsilon=10))
    s.attach(mlp)
    for name, layer in s.layers.items():
        expect = erdos_renyi_density(tuple(layer.owner.shape), 10)
        assert abs(layer.density() - expect) < 1e-3, (name, layer.density(), expect)
        assert isinstance(layer, SparseLayer) and isinstance(layer.base_layer, nn.Linear)
    # the weight is 0 exactly where no connection exists
    l0 = s.layers["layers.0"]
    assert bool((l0.weight[l0.owner < 0] == 0).all())
    assert s.layers["layers.0"].density() < 0.05


def test_rewiring_keeps_active_count_and_moves_connections():
    torch.manual_seed(0)
    mlp = MLP(50, [40, 30], 5)
    s = SET(SETConfig(epsilon=3, zeta=0.3))
    s.attach(mlp)
    with torch.no_grad():
        for l in s.layers.values():
            l.weight.copy_(torch.randn_like(l.weight) * (l.owner >= 0))
    before = {n: l.n_active() for n, l in s.layers.items()}
    owners = {n: l.owner.clone() for n, l in s.layers.items()}
    counts = s.rewire()
    for n, l in s.layers.items():
        assert l.n_active() == before[n]
        pruned, grown = counts[n]
        assert pruned == grown
        if l.density() < 0.5:
            assert pruned > 0 and not torch.equal(owners[n], l.owner)


def test_prune_nearest_zero_takes_each_sign_apart():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, -0.1, -0.5, -0.9, -1.0, 5.0, -5.0])
    cand = torch.ones(10, dtype=torch.bool)
    cand[8:] = False
    removed = prune_nearest_zero(w, cand, 0.5)
    assert removed.tolist() == [True, True, False, False, True, True, False, False, False, False]


def test_cosine_zeta_decays_to_zero():
    assert cosine_zeta(0.3, 0, 10) == pytest.approx(0.3)
    assert cosine_zeta(0.3, 5, 10) == pytest.approx(0.15)
    assert cosine_zeta(0.3, 10, 10) == 0.0


def test_gradient_regrowth_picks_largest_gradient_positions():
    torch.manual_seed(0)
    mlp = MLP(20, [16], 4)
    s = SET(SETConfig(epsilon=2, zeta=0.5, regrowth="gradient", layers=["layers.0"]))
    s.attach(mlp)
    x, y = torch.randn(32, 20), torch.randint(4, (32,))
    torch.nn.functional.cross_entropy(mlp(x), y).backward()
    layer = s.layers["layers.0"]
    g = layer.dense_grad.clone()
    free_before = layer.owner < 0
    (n, grown) = s.rewire()["layers.0"]
    new = (layer.owner >= 0) & free_before
    # every newly grown position has a larger |grad| than every free position left empty
    left = (layer.owner < 0) & free_before
    assert int(new.sum()) == grown > 0
    assert float(g[new].abs().min()) >= float(g[left].abs().max())


def test_frozen_connections_do_not_change_while_later_task_trains():
    torch.manual_seed(0)
    mlp = MLP(20, [32, 32], 6)
    s = SET(SETConfig(epsilon=3, freeze_per_task=True, rewire_every=3))
    agent = Agent(mlp, plasticity=[s], learner=FineTune(SGDConfig(epochs=3, lr=0.01, batch_size=16)))
    ctx = _ctx()
    t0, t1 = _task(0, (0, 1)), _task(1, (2, 3))
    agent.start_task(t0)
    agent.learner.fit(agent, t0, ctx)
    agent.end_task(t0)
    x = t0.eval.x
    with torch.no_grad():
        out0 = agent(x, task_id=0).clone()
    snap = {n: (l.weight.detach().clone(), l.owner.clone()) for n, l in s.layers.items()}
    agent.start_task(t1)
    agent.learner.fit(agent, t1, ctx)
    agent.end_task(t1)
    for n, l in s.layers.items():
        w0, own0 = snap[n]
        frozen = own0 == 0
        assert torch.equal(l.owner[frozen], own0[frozen])  # no task-0 connection was pruned
        assert torch.equal(l.weight.detach()[frozen], w0[frozen])  # nor changed
        assert l.n_active(1) > 0  # task 1 grew its own connections
        assert not bool(((l.owner == 1) & frozen).any())
    with torch.no_grad():
        assert torch.equal(agent(x, task_id=0), out0)  # task 0 outputs bit-identical
    # the last layer grew task 1 only into the rows of its classes
    last = s.layers["layers.4"]
    assert set(torch.nonzero(last.owner == 1)[:, 0].tolist()) <= {2, 3}
    cap = s.capacity()
    assert set(cap) == {0, 1} and all(c > 0 for c in cap.values())


def test_sparse_export_matches_masked_layer():
    torch.manual_seed(0)
    mlp = MLP(30, [20, 20], 5)
    s = SET(SETConfig(epsilon=4))
    s.attach(mlp)
    x = torch.randn(7, 30)
    with torch.no_grad():
        assert torch.allclose(export_sparse(mlp)(x), mlp(x), atol=1e-5)
    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1))
    s2 = SET(SETConfig(epsilon=2))
    s2.attach(conv)
    xi = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(export_sparse(conv)(xi), conv(xi), atol=1e-5)


def test_state_dict_load_into_fresh_module_gives_identical_outputs():
    torch.manual_seed(0)
    cfg = SETConfig(epsilon=3, freeze_per_task=True)
    agent = Agent(MLP(20, [16], 6), plasticity=[SET(cfg)], learner=FineTune(SGDConfig(epochs=2, lr=0.01, batch_size=16)))
    ctx = _ctx()
    for t in (_task(0, (0, 1)), _task(1, (2, 3))):
        agent.start_task(t)
        agent.learner.fit(agent, t, ctx)
        agent.end_task(t)
    state = copy.deepcopy(agent.state_dict())
    torch.manual_seed(123)  # a different init: everything must come from the state dict
    fresh = Agent(MLP(20, [16], 6), plasticity=[SET(cfg, seed=5)], learner=FineTune(SGDConfig()))
    fresh.load_state_dict(state)
    x = torch.randn(9, 20)
    with torch.no_grad():
        for tid in (0, 1):
            assert torch.equal(fresh(x, task_id=tid), agent(x, task_id=tid))
    assert fresh.plasticity[0].capacity() == agent.plasticity[0].capacity()
    assert torch.equal(fresh.plasticity[0].generator.get_state(), agent.plasticity[0].generator.get_state())


def test_ledger_counts_sparse_bytes_not_dense_weights():
    torch.manual_seed(0)
    s = SET(SETConfig(epsilon=5))
    agent = Agent(MLP(100, [100], 10, bias=False), plasticity=[s])
    entry = ledger(agent)
    active = sum(l.n_active() for l in s.layers.values())
    assert entry["backbone_bytes"] == 0  # every weight is accounted for by the SET module
    assert entry["modules"]["set"]["bytes"] == active * 8 + (100 + 1) * 4 + (10 + 1) * 4
    assert entry["modules"]["set"]["bytes"] < 0.3 * (100 * 100 + 100 * 10) * 4


def _ctx():
    from agentlab.context import FitContext

    return FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=2)


def test_per_epoch_rewiring_happens_between_epochs_only():
    torch.manual_seed(0)
    s = SET(SETConfig(epsilon=3))
    agent = Agent(MLP(20, [16], 4), plasticity=[s], learner=FineTune(SGDConfig(epochs=3, lr=0.01, batch_size=16)))
    t = _task(0, (0, 1, 2, 3))
    agent.start_task(t)
    agent.learner.fit(agent, t, _ctx())
    agent.end_task(t)
    assert len(s.rewire_log) == 2  # after epochs 1 and 2, not after the last


def test_checkpoint_files_round_trip_a_set_agent(tmp_path):
    from agentlab.checkpoint import load_latest, save_checkpoint

    torch.manual_seed(0)
    cfg = SETConfig(epsilon=3, freeze_per_task=True)
    agent = Agent(MLP(20, [16], 6), plasticity=[SET(cfg)])
    agent.start_task(_task(0, (0, 1)))
    agent.plasticity[0].rewire()
    save_checkpoint(tmp_path, 0, {"agent": agent.state_dict()})
    _, state = load_latest(tmp_path)
    fresh = Agent(MLP(20, [16], 6), plasticity=[SET(cfg, seed=3)])
    fresh.load_state_dict(state["agent"])
    x = torch.randn(5, 20)
    with torch.no_grad():
        assert torch.equal(fresh(x, task_id=0), agent(x, task_id=0))
    assert fresh.plasticity[0].rewirings == 1


def test_figures_cover_density_rewiring_capacity_and_histograms():
    torch.manual_seed(0)
    s = SET(SETConfig(epsilon=3, freeze_per_task=True))
    agent = Agent(MLP(20, [16], 6), plasticity=[s])
    agent.start_task(_task(0, (0, 1)))
    s.rewire()
    sc = agent.scalars()
    for tag in ("density/total", "density/layers.0", "pruned/layers.0", "regrown/layers.0", "capacity/task_000", "capacity/free"):
        assert f"plasticity/set/{tag}" in sc
    hist = agent.histograms()["plasticity/set/weight_abs/layers.0"]
    assert hist.numel() == s.layers["layers.0"].n_active() and bool((hist >= 0).all())
    img = agent.images()["plasticity/set/weight_hist/layers.0"]
    assert img.ndim == 3 and float(img.max()) <= 1.0
