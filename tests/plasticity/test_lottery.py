"""Lottery tickets: exact pruning fractions, rewinding, the random control, saved tickets, the IMP learner."""

from __future__ import annotations

import pytest
import torch

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.context import FitContext
from agentlab.data import Split
from agentlab.task import Task
from agentlab.plasticity.lottery import Lottery, LotteryConfig, save_ticket
from agentlab.learners.imp import IMP, IMPConfig
from agentlab.plasticity.sparse_export import export_sparse


def _agent(cfg: LotteryConfig, seed: int = 0) -> tuple[Agent, Lottery]:
    torch.manual_seed(seed)
    lot = Lottery(cfg)
    return Agent(MLP(30, [40, 20], 5), plasticity=[lot]), lot


def _perturb(lot: Lottery) -> None:
    with torch.no_grad():
        for l in lot.layers.values():
            l.weight.add_(torch.randn_like(l.weight) * 0.1)


def test_global_pruning_removes_exactly_the_requested_fraction_of_remaining():
    agent, lot = _agent(LotteryConfig(scope="global", prune_fraction=0.2, output_fraction=0.1))
    body, out = ["layers.0", "layers.2"], "layers.4"
    for _ in range(3):
        before = {n: l.n_active() for n, l in lot.layers.items()}
        removed = lot.prune()
        n_body = sum(before[n] for n in body)
        assert sum(removed[n] for n in body) == round(0.2 * n_body)
        assert removed[out] == round(0.1 * before[out])
        for n, l in lot.layers.items():
            assert l.n_active() == before[n] - removed[n]
        _perturb(lot)
    # survivors of a global round are exactly the largest magnitudes over the body layers
    w = torch.cat([lot.layers[n].weight.detach().flatten().abs()[lot.layers[n].owner.flatten() >= 0] for n in body])
    lot.prune()
    kept = torch.cat([lot.layers[n].weight.detach().flatten().abs()[lot.layers[n].owner.flatten() >= 0] for n in body])
    assert kept.numel() == w.numel() - round(0.2 * w.numel())
    assert float(kept.min()) >= float(torch.sort(w).values[round(0.2 * w.numel()) - 1])


def test_layerwise_pruning_takes_the_fraction_from_each_layer():
    agent, lot = _agent(LotteryConfig(scope="layer", prune_fraction=0.5, output_fraction=0.0))
    sizes = {n: l.n_active() for n, l in lot.layers.items()}
    removed = lot.prune()
    assert removed == {"layers.0": round(0.5 * sizes["layers.0"]), "layers.2": round(0.5 * sizes["layers.2"]), "layers.4": 0}
    assert abs(lot.remaining() - (1 - (removed["layers.0"] + removed["layers.2"]) / sum(sizes.values()))) < 1e-9


def test_rewinding_restores_saved_values_and_reinit_keeps_the_mask():
    agent, lot = _agent(LotteryConfig())
    lot.remember()
    saved = {k: v.clone() for k, v in agent.backbone.named_parameters()}
    _perturb(lot)
    lot.prune()
    lot.rewind()
    for k, p in agent.backbone.named_parameters():
        name = k.rsplit(".base_layer", 1)[0]
        if name in lot.layers and k.endswith("weight"):
            keep = lot.layers[name].owner >= 0
            assert torch.equal(p[keep], saved[k][keep])
            assert bool((p[~keep] == 0).all())
        else:
            assert torch.equal(p, saved[k])
    masks = {n: m.clone() for n, m in lot.masks().items()}
    w = lot.layers["layers.0"].weight.detach().clone()
    lot.reinit(seed=1)
    assert all(torch.equal(masks[n], m) for n, m in lot.masks().items())
    keep = masks["layers.0"]
    assert not torch.equal(lot.layers["layers.0"].weight[keep], w[keep])
    assert bool((lot.layers["layers.0"].weight[~keep] == 0).all())


def test_saved_ticket_loads_as_a_fixed_sparse_subnetwork(tmp_path):
    agent, lot = _agent(LotteryConfig())
    lot.remember()
    _perturb(lot)
    lot.prune()
    lot.prune()
    path = save_ticket(lot, tmp_path / "ticket.pt")
    agent2, lot2 = _agent(LotteryConfig(ticket=str(path)), seed=9)
    assert all(torch.equal(lot.masks()[n], lot2.masks()[n]) for n in lot.layers)
    lot.rewind()  # the ticket = mask + rewind values
    x = torch.randn(4, 30)
    with torch.no_grad():
        assert torch.allclose(agent2(x), agent(x))
        assert torch.allclose(export_sparse(agent2.backbone)(x), agent2(x), atol=1e-5)


def test_imp_learner_runs_rounds_with_the_control():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    task = Task(id=0, name="toy", kind="classification", train=Split(x[:150], y[:150]), eval=Split(x[150:], y[150:]))
    agent, lot = _agent(LotteryConfig(prune_fraction=0.5, output_fraction=0.2))
    agent.learner = IMP(IMPConfig(epochs=2, lr=0.01, batch_size=32, rounds=2, control=True))
    logged = []
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1,
                     log_scalar=lambda t, v, s: logged.append((t, s)))
    agent.learner.fit(agent, task, ctx)
    rows = agent.learner.rows
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["remaining"] == 1.0 > rows[1]["remaining"] > rows[2]["remaining"]
    assert all(0 <= r["ticket_acc"] <= 1 and 0 <= r["random_acc"] <= 1 for r in rows)
    assert ("plasticity/lottery/ticket_acc", int(round(10_000 * rows[2]["remaining"]))) in logged


def test_lottery_state_dict_loads_into_fresh_module():
    agent, lot = _agent(LotteryConfig())
    _perturb(lot)
    lot.prune()
    agent2, lot2 = _agent(LotteryConfig(), seed=4)
    agent2.load_state_dict(agent.state_dict())
    x = torch.randn(3, 30)
    with torch.no_grad():
        assert torch.equal(agent2(x), agent(x))
    assert lot2.rounds == 1 and lot2.remaining() == lot.remaining()


def test_early_stopping_reports_test_accuracy_at_the_minimum_validation_loss(monkeypatch):
    import agentlab.learners.imp as imp

    g = torch.Generator().manual_seed(1)
    x = torch.randn(260, 30, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    task = Task(id=0, name="toy", kind="classification", train=Split(x[:200], y[:200]), eval=Split(x[200:], y[200:]))
    train, val = imp._hold_out(task.train, 50, seed=0)
    assert (len(train), len(val)) == (150, 50)
    # Validation losses scripted per epoch: the minimum is at epoch 1, so each round reports that epoch's test accuracy.
    losses = iter([3.0, 1.0, 2.0] * 10)
    monkeypatch.setattr(imp, "_mean_loss", lambda *a: next(losses))
    accs = iter([0.1 * k for k in range(1, 40)])
    monkeypatch.setattr(imp, "evaluate", lambda *a, **k: type("R", (), {"acc": next(accs)})())
    agent, _ = _agent(LotteryConfig(prune_fraction=0.5, output_fraction=0.2))
    cfg = IMPConfig(epochs=3, lr=0.01, batch_size=32, rounds=1, control=False, validation=50)
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1, log_scalar=lambda *a: None)
    rows = imp.run_imp(agent, task, cfg, ctx)
    # evaluate() is called at epoch 0 (new best), epoch 1 (new best), then once after the last epoch.
    assert rows[0]["ticket_epoch"] == 1 and rows[1]["ticket_epoch"] == 1
    assert abs(rows[0]["ticket_acc"] - 0.2) < 1e-9 and abs(rows[0]["ticket_last_acc"] - 0.3) < 1e-9
    assert abs(rows[1]["ticket_acc"] - 0.5) < 1e-9 and abs(rows[1]["ticket_last_acc"] - 0.6) < 1e-9


def test_lottery_bench_averages_trials_round_by_round():
    from agentlab.bench.lottery import mean_rows

    a = [{"round": 0, "remaining": 1.0, "ticket_acc": 0.90, "random_acc": 0.90},
         {"round": 1, "remaining": 0.5, "ticket_acc": 0.92, "random_acc": 0.80}]
    b = [{"round": 0, "remaining": 1.0, "ticket_acc": 0.94, "random_acc": 0.94},
         {"round": 1, "remaining": 0.5, "ticket_acc": 0.96, "random_acc": 0.84}]
    rows = mean_rows([a, b])
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["ticket_acc"] == pytest.approx(0.94) and rows[1]["random_acc"] == pytest.approx(0.82)
    assert rows[0]["ticket_std"] == pytest.approx(0.02) and rows[1]["ticket_min"] == 0.92 and rows[1]["ticket_max"] == 0.96
    b[1]["remaining"] = 0.4  # trials that pruned different amounts cannot be averaged
    with pytest.raises(ValueError, match="fraction remaining at round 1"):
        mean_rows([a, b])


def test_early_stopping_every_n_steps_reports_the_step_of_minimum_validation_loss(monkeypatch):
    import agentlab.learners.imp as imp

    g = torch.Generator().manual_seed(1)
    x = torch.randn(260, 30, generator=g)
    y = (x[:, 0] > 0).long()
    task = Task(id=0, name="toy", kind="classification", train=Split(x[:200], y[:200]), eval=Split(x[200:], y[200:]))
    # 150 training examples in batches of 30: 5 steps per epoch, 15 steps; checks at steps 4, 8, 12 and the end (15).
    losses = iter([3.0, 1.0, 2.0, 2.5] * 2)
    monkeypatch.setattr(imp, "_mean_loss", lambda *a: next(losses))
    accs = iter([0.1 * k for k in range(1, 40)])
    monkeypatch.setattr(imp, "evaluate", lambda *a, **k: type("R", (), {"acc": next(accs)})())
    agent, _ = _agent(LotteryConfig(prune_fraction=0.5, output_fraction=0.2))
    cfg = IMPConfig(epochs=3, lr=0.01, batch_size=30, rounds=1, control=False, validation=50, eval_every=4)
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1, log_scalar=lambda *a: None)
    rows = imp.run_imp(agent, task, cfg, ctx)
    # evaluate() runs at step 4 (new best), step 8 (new best), then once after training (the last accuracy).
    assert rows[0]["ticket_epoch"] == pytest.approx(8 / 5) and rows[1]["ticket_epoch"] == pytest.approx(8 / 5)
    assert rows[0]["ticket_acc"] == pytest.approx(0.2) and rows[0]["ticket_last_acc"] == pytest.approx(0.3)
    assert rows[1]["ticket_acc"] == pytest.approx(0.5) and rows[1]["ticket_last_acc"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="eval_every"):
        IMPConfig(eval_every=-1)
