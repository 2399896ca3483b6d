"""Lottery tickets on the ViT: every Linear is prunable, IMP rewinds and re-initialises all of it, and each round
reports remaining weights and sensitivity per component (embedding, attention, MLP, head) to rows and TensorBoard."""

from __future__ import annotations

import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.backbones.vit import ViT
from agentlab.context import FitContext
from agentlab.data import Split
from agentlab.learners.imp import IMPConfig, component_remaining, component_sensitivity, components, run_imp
from agentlab.plasticity.lottery import Lottery, LotteryConfig
from agentlab.task import Task


def _vit_agent(seed=0):
    torch.manual_seed(seed)
    vit = ViT(image_size=(8, 8), channels=1, out_features=4, patch_size=4, dim=8, depth=2, heads=2)
    lot = Lottery(LotteryConfig(prune_fraction=0.5, output_fraction=0.2))
    return Agent(vit, plasticity=[lot]), lot


def _task(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0.5).long()
    return Task(id=0, name="toy", kind="classification", train=Split(x[:90], y[:90]), eval=Split(x[90:], y[90:]),
                classes=(0, 1, 2, 3))


def test_every_linear_of_the_vit_is_prunable_and_grouped_by_component():
    agent, lot = _vit_agent()
    linear = [n for n, m in agent.backbone.named_modules() if n.endswith("base_layer") or isinstance(m, nn.Linear)]
    assert set(lot.layers) == {n.rsplit(".base_layer", 1)[0] for n in linear}
    comps = components(agent.backbone, list(lot.layers))
    assert comps == {"embedding": ["patch_embed"],
                     "attention": ["blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.1.attn.qkv", "blocks.1.attn.out"],
                     "mlp": ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"],
                     "head": ["head"]}
    lot.prune()
    rem = component_remaining(lot, comps)
    sizes = {c: sum(lot.layers[n].n_connections() for n in names) for c, names in comps.items()}
    total = sum(rem[c] * sizes[c] for c in comps) / sum(sizes.values())
    assert abs(total - lot.remaining()) < 1e-9 and rem["head"] == 1 - round(0.2 * 32) / 32  # the head at its own rate
    # an MLP has no component map: one component per layer
    mlp_agent = Agent(MLP(16, [8], 4), plasticity=[Lottery(LotteryConfig())])
    assert components(mlp_agent.backbone, ["layers.0", "layers.2"]) == {"layers.0": ["layers.0"], "layers.2": ["layers.2"]}


def test_sensitivity_prunes_one_component_at_a_time_and_restores_it():
    agent, lot = _vit_agent()
    task = _task()
    comps = components(agent.backbone, list(lot.layers))
    before = {n: (l.owner.clone(), l.weight.detach().clone()) for n, l in lot.layers.items()}
    x = task.eval.x
    with torch.no_grad():
        ref = agent(x, 0)
    sens = component_sensitivity(agent, lot, comps, task.eval, 0.9, 0)
    assert set(sens) == set(comps) and all(-1 <= v <= 1 for v in sens.values())
    for n, l in lot.layers.items():
        assert torch.equal(l.owner, before[n][0]) and torch.equal(l.weight, before[n][1])
    with torch.no_grad():
        assert torch.equal(agent(x, 0), ref)


def test_imp_on_the_vit_rewinds_everything_and_logs_components():
    agent, lot = _vit_agent()
    init = {k: v.detach().clone() for k, v in agent.backbone.named_parameters()}
    logged = []
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1,
                     log_scalar=lambda t, v, s: logged.append((t, s, v)))
    cfg = IMPConfig(epochs=2, lr=0.01, batch_size=32, rounds=2, control=True, sensitivity=0.2, sensitivity_examples=20)
    rows = run_imp(agent, _task(), cfg, ctx)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert {f"remaining/{c}" for c in ("embedding", "attention", "mlp", "head")} <= set(r)
        assert {f"sensitivity/{c}" for c in ("embedding", "attention", "mlp", "head")} <= set(r)
    assert rows[2]["remaining/mlp"] < rows[1]["remaining/mlp"] < 1.0
    tags = {t for t, _, _ in logged}
    assert "plasticity/lottery/remaining/attention" in tags and "plasticity/lottery/sensitivity/mlp" in tags
    # the rewind point is the initialisation, class token and position embedding included
    assert torch.equal(lot.rewind_state["pos"], init["pos"]) and torch.equal(lot.rewind_state["cls"], init["cls"])
