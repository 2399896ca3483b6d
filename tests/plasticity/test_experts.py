"""Per-task experts: a new expert group per task and MoE layer, old experts and routers frozen, the router extended,
earlier tasks' outputs fixed, task inference, routing loss, ledger, figures, checkpoints, and composition rules."""

from __future__ import annotations

import pytest
import torch

from agentlab import registry
from agentlab.agent import Agent
from agentlab.checkpoint import load_checkpoint_dir, save_checkpoint
from agentlab.data import Batch
from agentlab.ledger import ledger
from agentlab.plasticity.experts import Experts, ExpertsConfig
from agentlab.plasticity.lora import build_lora
from agentlab.task import Task
from agentlab.wrapping import CompositionError


class _Stream:
    input_shape, n_classes = (1, 8, 8), 4


def _agent(plasticity=None, **cfg) -> tuple[Agent, Experts]:
    torch.manual_seed(0)
    env = registry.BuildEnv(stream=_Stream())
    bb = registry.build("backbone", {"name": "vit", "patch_size": 4, "dim": 8, "depth": 2, "heads": 2,
                                     "moe": {"experts": 2, "capacity": 1.0}}, env)
    ex = Experts(ExpertsConfig(**cfg))
    return Agent(bb, plasticity=plasticity if plasticity is not None else [ex]), ex


def _task(i):
    return Task(id=i, name=f"t{i}", kind="classification", train=None, eval=None)


def _train(agent, t, steps=3, seed=0):
    agent.start_task(_task(t))
    params = list(agent.trainable_parameters())
    opt = torch.optim.Adam(params, 0.05)
    g = torch.Generator().manual_seed(seed + t)
    for s in range(steps):
        x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(agent(x, t), y)
        loss = loss + sum(agent.loss_terms(Batch(x, y), None).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        agent.after_step(s)
    agent.end_task(_task(t))
    return params


def test_each_task_adds_experts_freezes_the_old_ones_and_extends_the_router():
    agent, ex = _agent(per_task=3)
    moes = [m for _, m in ex.layers]
    assert len(moes) == 2
    p0 = _train(agent, 0)
    assert all(m.group_sizes() == [2] for m in moes)
    assert len(p0) == sum(p.numel() > 0 for p in agent.backbone.parameters())  # the first task trains everything
    agent.start_task(_task(1))
    assert all(m.group_sizes() == [2, 3] for m in moes)
    trainable = {id(p) for p in agent.trainable_parameters()}
    assert trainable == {id(p) for m in moes for p in m.groups[1].parameters()}  # only the new experts and router
    assert all(m.groups[1].router.out_features == 3 for m in moes)
    agent.end_task(_task(1))
    _train(agent, 2)
    assert all(m.group_sizes() == [2, 3, 3] for m in moes)
    assert ex.views == {0: 1, 1: 2, 2: 3}


def test_earlier_tasks_outputs_never_change_and_later_tasks_see_the_old_experts():
    agent, ex = _agent(per_task=2)
    x = torch.rand(5, 1, 8, 8)
    _train(agent, 0)
    agent.eval()
    ref0 = agent(x, 0).detach().clone()
    _train(agent, 1)
    _train(agent, 2)
    agent.eval()
    assert torch.equal(agent(x, 0), ref0)
    agent(x, 2)
    assert all(m.last["experts"] == 6.0 for _, m in ex.layers)  # task 2 routes over groups 0, 1 and 2
    agent(x, 1)
    assert all(m.last["experts"] == 4.0 for _, m in ex.layers)
    assert torch.equal(agent(x, None), ref0) and torch.equal(agent(x, 7), ref0)  # no task / unknown: the backbone as built
    with ex.disabled():
        assert torch.equal(agent(x, 2), ref0)


@pytest.mark.parametrize("infer", ["entropy", "router"])
def test_task_inference_picks_among_the_trained_tasks(infer):
    agent, ex = _agent(per_task=2, infer=infer, router_loss=1.0 if infer == "router" else 0.0)
    x = torch.rand(6, 1, 8, 8)
    assert agent.infer_task(x) is None  # nothing trained yet
    _train(agent, 0)
    assert agent.infer_task(x).tolist() == [0] * 6
    _train(agent, 3)
    _train(agent, 5)
    guess = agent.infer_task(x)
    assert guess.shape == (6,) and set(guess.tolist()) <= {0, 3, 5}
    assert ex.task == 5  # inference restores the task set before it (the last training task)
    out, g2 = agent.predict(x)
    assert torch.equal(g2, guess) and out.shape == (6, 4)


def test_the_router_loss_teaches_a_task_to_claim_its_tokens():
    """With the routing loss, task 1's own experts get most of the router mass on task 1's inputs."""
    agent, ex = _agent(per_task=2, infer="router", router_loss=1.0)
    _train(agent, 0)
    _train(agent, 1, steps=40)
    agent.eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    agent(x, 1)
    for _, m in ex.layers:
        mass = ex._group_mass(m, m.last_probs, 2)  # (b, n, groups)
        assert float(mass[..., 1].mean()) > 0.8
    assert agent.infer_task(x).tolist() == [1] * 16


def test_ledger_counts_each_added_group_for_its_task():
    agent, ex = _agent(per_task=2)
    assert ledger(agent)["modules"]["experts"]["bytes"] == 0
    _train(agent, 0)
    _train(agent, 1)
    per = ledger(agent)["modules"]["experts"]["per_task"]
    group_bytes = sum(p.numel() * 4 for _, m in ex.layers for p in m.groups[1].parameters())
    assert per == {"001": group_bytes}


def test_figures_and_the_usage_image():
    agent, ex = _agent(per_task=2)
    _train(agent, 0)
    s = ex.scalars()
    assert s["max_load_ratio"] == 1.0 and s["experts_per_layer"] == 2.0 and 0 <= s["dropped_token_share"] <= 1
    img = ex.images()["expert_usage"]
    assert img.ndim == 3 and img.shape[0] == 3


def test_checkpoint_restores_the_groups_and_views_into_a_fresh_agent(tmp_path):
    agent, ex = _agent(per_task=2)
    _train(agent, 0)
    _train(agent, 1)
    path = save_checkpoint(tmp_path, 0, {"agent": agent.state_dict()})
    fresh, fex = _agent(per_task=2)
    fresh.load_state_dict(load_checkpoint_dir(path)["agent"])  # no start_task: the state names the groups
    assert fex.views == {0: 1, 1: 2} and [m.group_sizes() for _, m in fex.layers] == [[2, 2], [2, 2]]
    x = torch.rand(4, 1, 8, 8)
    agent.eval(), fresh.eval()
    for t in (0, 1, None):
        assert torch.equal(agent(x, t), fresh(x, t))
    _train(fresh, 2)  # and it goes on growing
    assert fex.views[2] == 3


def test_a_backbone_without_moe_layers_is_refused_by_name():
    env = registry.BuildEnv(stream=_Stream())
    mlp = registry.build("backbone", {"name": "mlp", "hidden": [8]}, env)
    with pytest.raises(CompositionError, match=r"experts.layers=\['\*'\].*matches no expert-choice MoE layer.*vit with a `moe` table"):
        Agent(mlp, plasticity=[Experts(ExpertsConfig())])
    vit = registry.build("backbone", {"name": "vit", "patch_size": 4, "dim": 8, "depth": 2, "heads": 2,
                                      "moe": {"experts": 2, "every": 2}}, env)
    with pytest.raises(CompositionError, match=r"blocks.1.mlp"):
        Agent(vit, plasticity=[Experts(ExpertsConfig(layers=["blocks.0.*"]))])


def test_listed_after_a_module_that_freezes_the_backbone_it_composes_and_before_it_is_refused():
    env = registry.BuildEnv(stream=_Stream())
    from agentlab.plasticity.lora import LoRAConfig

    lora = build_lora(LoRAConfig(rank=2, layers=["head"]), env)
    agent, _ = _agent(plasticity=[lora, Experts(ExpertsConfig())])
    _train(agent, 0)
    _train(agent, 1)  # LoRA freezes the backbone at task start, then the experts module keeps its new group trainable
    ex2 = Experts(ExpertsConfig())
    agent, _ = _agent(plasticity=[ex2, build_lora(LoRAConfig(rank=2, layers=["head"]), env)])
    _train(agent, 0)
    with pytest.raises(CompositionError, match="list 'experts' after it"):
        _train(agent, 1)


def test_per_task_experts_in_an_mlp_with_an_moe_layer():
    env = registry.BuildEnv(stream=_Stream())
    torch.manual_seed(0)
    mlp = registry.build("backbone", {"name": "mlp", "hidden": [16, 16], "moe": {"experts": 2, "capacity": 1.0}}, env)
    ex = Experts(ExpertsConfig(per_task=2))
    agent = Agent(mlp, plasticity=[ex])
    assert [n for n, _ in ex.layers] == ["layers.1.moe.moe"]
    x = torch.rand(8, 1, 8, 8)
    _train(agent, 0)
    agent.eval()
    ref0 = agent(x, 0).detach().clone()
    _train(agent, 1)
    agent.eval()
    assert torch.equal(agent(x, 0), ref0) and not torch.equal(agent(x, 1), ref0)
