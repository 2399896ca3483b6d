"""LoRA, NOLA, PRANC and MCNC adapters: the property matrix over a tiny trace encoder."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentlab.agent import Agent
from agentlab.backbones.trace_encoder import TraceEncoder
from agentlab.task import Task
from agentlab.plasticity.lora import LoRA, LoRAConfig
from agentlab.plasticity.mcnc import MCNC, MCNCConfig
from agentlab.plasticity.nola import NOLA, NOLAConfig
from agentlab.plasticity.pranc import PRANC, PRANCConfig
from agentlab.plasticity.random_basis import basis, combine
from agentlab.scenarios.traces.encode import encode
from agentlab.scenarios.traces.objective import trace_losses
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["cond", "action_head", "time_head", "blocks.1.ff.2"]
KINDS = {
    "lora": lambda: LoRA(LoRAConfig(layers=TARGETS, backbone_phase="population", rank=2)),
    "nola": lambda: NOLA(NOLAConfig(layers=TARGETS, backbone_phase="population", rank=2, k_a=8, k_b=8, chunk=3)),
    "pranc": lambda: PRANC(PRANCConfig(layers=TARGETS, backbone_phase="population", k=20, chunk=7)),
    "mcnc": lambda: MCNC(MCNCConfig(layers=TARGETS, backbone_phase="population", k=12, hidden=8)),
}


def person_task(i: int, n: int = 6) -> Task:
    tr = simulate_person(draw_traits(0, i), n, seed=0)
    split = encode(tr, length=20)
    return Task(id=i, name=f"p{i}", kind="personalization", train=split, eval=split, task_label_at_test=True)


def make_agent(kind: str) -> tuple[Agent, TraceEncoder]:
    torch.manual_seed(0)
    backbone = TraceEncoder(d_model=16, n_layers=2, n_heads=2, max_len=20)
    base = copy.deepcopy(backbone)
    return Agent(backbone, plasticity=[KINDS[kind]()]), base


def train(agent: Agent, task: Task, steps: int = 5) -> None:
    agent.start_task(task)
    opt = torch.optim.Adam(agent.trainable_parameters(), lr=0.05)
    for _ in range(steps):
        loss = trace_losses(agent(task.train.x, task.id), task.train.y)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    agent.end_task(task)


def outputs(agent: Agent, x: torch.Tensor, task_id: int | None) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(agent(x, task_id))


def same(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("kind", list(KINDS))
def test_new_adapter_is_an_exact_no_op_and_disable_gives_base(kind) -> None:
    agent, base = make_agent(kind)
    task = person_task(1)
    with torch.no_grad():
        ref = tuple(base(task.eval.x))
    agent.start_task(task)
    assert same(outputs(agent, task.eval.x, task.id), ref)
    train(agent, task)
    assert not same(outputs(agent, task.eval.x, task.id), ref)
    mod = agent.plasticity[0]
    with mod.disabled():
        assert same(outputs(agent, task.eval.x, task.id), ref)
    assert same(outputs(agent, task.eval.x, None), ref)


@pytest.mark.parametrize("kind", list(KINDS))
def test_only_the_task_own_parameters_train(kind) -> None:
    agent, _ = make_agent(kind)
    a, b = person_task(1), person_task(2)
    train(agent, a)
    mod = agent.plasticity[0]
    backbone_before = {k: v.clone() for k, v in agent.backbone.state_dict().items()}
    a_before = {k: v.clone() for k, v in mod.tasks["1"].items()}
    agent.start_task(b)
    trainable = {id(p) for p in agent.trainable_parameters()}
    assert trainable == {id(p) for p in mod.tasks["2"].values()}
    train(agent, b)
    for k, v in agent.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    for k, v in mod.tasks["1"].items():
        assert torch.equal(v, a_before[k]), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in mod.tasks["2"].values())


@pytest.mark.parametrize("kind", list(KINDS))
def test_adding_person_b_leaves_a_bit_identical_and_forgetting_removes_a(kind) -> None:
    agent, base = make_agent(kind)
    a, b = person_task(1), person_task(2)
    train(agent, a)
    out_a = outputs(agent, a.eval.x, a.id)
    train(agent, b)
    out_b = outputs(agent, b.eval.x, b.id)
    assert same(outputs(agent, a.eval.x, a.id), out_a)
    mod = agent.plasticity[0]
    bytes_before = mod.state_bytes()
    assert set(bytes_before) == {1, 2}
    mod.forget(1)
    assert mod.people() == [2] and set(mod.state_bytes()) == {2}
    assert not any(k.startswith("plasticity.0.tasks.1.") for k in agent.state_dict())
    with torch.no_grad():
        assert same(outputs(agent, a.eval.x, a.id), tuple(base(a.eval.x)))  # A is gone: the population model answers
    assert same(outputs(agent, b.eval.x, b.id), out_b)
    with pytest.raises(KeyError):
        mod.forget(1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_unmerge_round_trip(kind) -> None:
    agent, _ = make_agent(kind)
    a = person_task(1)
    train(agent, a)
    mod = agent.plasticity[0]
    weights = {k: v.clone() for k, v in agent.backbone.state_dict().items()}
    ref = outputs(agent, a.eval.x, a.id)
    mod.merge(1)
    merged = outputs(agent, a.eval.x, a.id)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(merged, ref))
    assert not torch.equal(agent.backbone.state_dict()["cond.base_layer.weight"], weights["cond.base_layer.weight"])
    mod.unmerge()
    for k, v in agent.backbone.state_dict().items():
        assert torch.allclose(v, weights[k], atol=1e-6), k
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(outputs(agent, a.eval.x, a.id), ref))


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_restores_into_a_fresh_instance(kind) -> None:
    agent, _ = make_agent(kind)
    a, b = person_task(1), person_task(2)
    train(agent, a)
    train(agent, b)
    fresh, _ = make_agent(kind)
    fresh.load_state_dict(agent.state_dict())
    for t in (a, b):
        assert same(outputs(fresh, t.eval.x, t.id), outputs(agent, t.eval.x, t.id))


def test_identification_by_likelihood_prefers_the_right_person() -> None:
    agent, _ = make_agent("lora")
    tasks = [person_task(i, n=12) for i in (1, 2, 3)]
    for t in tasks:
        train(agent, t, steps=15)
    mod = agent.plasticity[0]
    ids, scores = mod.task_scores(tasks[0].eval.x)
    assert ids == [1, 2, 3] and scores.shape == (tasks[0].eval.x.shape[0], 3)
    guess = mod.infer_task(tasks[1].eval.x, agent.backbone)
    assert (guess == 2).float().mean() > 0.5


def test_combine_saves_only_coefficients_and_has_the_right_gradient() -> None:
    coeffs = torch.randn(10, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = combine(coeffs, seed=5, n=300, chunk=4)
    assert saved == [10]  # the basis (10 x 300) is not kept for backward
    w = torch.randn(300)
    (out * w).sum().backward()
    full = basis(5, 10, 300, chunk=4)
    assert torch.allclose(out, coeffs.detach() @ full, atol=1e-5)
    assert torch.allclose(coeffs.grad, full @ w, atol=1e-4)
    # chunks are generated from private generators: the global RNG does not move
    state = torch.get_rng_state()
    combine(coeffs, seed=5, n=300, chunk=4)
    assert torch.equal(state, torch.get_rng_state())


def test_bases_regenerate_identically_in_a_fresh_process(tmp_path) -> None:
    """NOLA and PRANC rebuild the same basis from the seed in a new Python process (one subprocess for both)."""
    deltas = {}
    for kind in ("nola", "pranc"):
        agent, _ = make_agent(kind)
        train(agent, person_task(1))
        mod = agent.plasticity[0]
        deltas[kind] = torch.cat([mod.delta_weight(mod.tasks["1"], i).detach().flatten() for i in range(len(TARGETS))])
        torch.save({k: v.detach() for k, v in mod.tasks["1"].items()}, tmp_path / f"{kind}.pt")
        assert list(mod.buffers()) == []  # nothing of the basis is kept
    script = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_adapters import make_agent, person_task, TARGETS
for kind in ("nola", "pranc"):
    agent, _ = make_agent(kind)
    agent.start_task(person_task(1))
    mod = agent.plasticity[0]
    with torch.no_grad():
        for k, v in torch.load({str(tmp_path)!r} + f"/{{kind}}.pt").items():
            mod.tasks["1"][k].copy_(v)
    d = torch.cat([mod.delta_weight(mod.tasks["1"], i).detach().flatten() for i in range(len(TARGETS))])
    torch.save(d, {str(tmp_path)!r} + f"/{{kind}}-delta.pt")
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120)
    for kind in ("nola", "pranc"):
        assert torch.equal(torch.load(tmp_path / f"{kind}-delta.pt"), deltas[kind]), kind


def test_bytes_per_person() -> None:
    agent, _ = make_agent("pranc")
    train(agent, person_task(1), steps=1)
    assert agent.plasticity[0].state_bytes() == {1: 20 * 4}
    agent, _ = make_agent("nola")
    train(agent, person_task(1), steps=1)
    assert agent.plasticity[0].state_bytes() == {1: len(TARGETS) * (8 + 8) * 4}
