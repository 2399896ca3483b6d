"""The property matrix of composition, generated from the registry (DESIGN.md, "Invariants worth a test each").

Every registered plasticity module on every registered backbone, every registered memory on every
backbone, and every ordered pair of plasticity modules on the same layers. In each cell the agent
builds or is refused with a UserError (exit 2 from the command line) that names the module; one
training step runs; an agent with no task state is exactly its plain backbone; a change of the
effective weight of any wrapped layer changes the output (the wrapper is on the forward path, also
for layers read through `.weight`); isolating modules keep task 0's outputs bit-identical after
task 1, alone and stacked; a checkpoint round trip gives identical outputs; the ledger counts
what a module keeps and nothing for an idle one. A component registered without a tiny
configuration below fails the test until one is added.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from agentlab import registry
from agentlab.agent import Agent
from agentlab.attachment import AttachedMemory
from agentlab.checkpoint import load_checkpoint_dir, save_checkpoint
from agentlab.data import Batch
from agentlab.errors import UserError
from agentlab.ledger import ledger
from agentlab.plasticity.supermask_layers import TaskBatchNorm
from agentlab.task import Task
from agentlab.wrapping import LayerTransform, WrappedLayer

# ---------------------------------------------------------------------------- tiny components


def _images(shape: tuple[int, ...]) -> Any:
    return lambda n, g: torch.rand(n, *shape, generator=g)


def _traces(n: int, g: torch.Generator) -> Tensor:
    from agentlab.scenarios.traces.encode import encode
    from agentlab.scenarios.traces.simulator import draw_traits, simulate_person

    x = encode(simulate_person(draw_traits(0, 1), 3, seed=0), length=8).x
    return x[torch.arange(n) % x.shape[0]]


class _Stream:
    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        self.input_shape, self.n_classes = input_shape, n_classes


# backbone -> (tiny config, stream input shape, stream classes, input maker)
BACKBONES: dict[str, tuple[dict, tuple[int, ...], int, Any]] = {
    "mlp": ({"hidden": [12, 12]}, (1, 4, 4), 4, _images((1, 4, 4))),
    "conv4": ({"hidden": 4, "out_features": 4}, (1, 16, 16), 4, _images((1, 16, 16))),
    "trace-encoder": ({"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8}, tuple(_traces(1, None).shape[1:]), 4, _traces),
    "dnc": ({"memory_size": 4, "word_size": 3, "num_reads": 1, "hidden_size": 8}, (5, 3), 4, _images((5, 3))),
    "lstm-seq": ({"hidden_size": 8}, (5, 3), 4, _images((5, 3))),
    "memtrans-conv4": ({"ways": 3, "channels": 4, "memory": {"in_features": 1, "dim": 8, "heads": 2, "layers": 1, "slots": 4}},
                       (1, 28, 28), 3, _images((1, 28, 28))),
    "sense-rag": ({"num_codes": 8, "dim": 8, "key_dim": 4, "capacity": 16, "k": 2}, (1, 28, 28), 4, _images((1, 28, 28))),
    "vit": ({"patch_size": 4, "dim": 8, "depth": 3, "heads": 2, "moe": {"experts": 2, "capacity": 1.0, "every": 2}},
            (1, 8, 8), 4, _images((1, 8, 8))),
}
PLASTICITY: dict[str, dict] = {
    "supsup": {},
    "hopsupsup": {"values": "sign"},  # binary gates may switch a tiny layer off whole under the matrix's loss
    "set": {"epsilon": 2.0},
    "lottery": {},
    "fnnsp": {"modules": 2, "active_modules": 1, "new_modules_per_task": 1, "initial_active": 1},
    "lora": {"rank": 2},
    "nola": {"rank": 2, "k_a": 4, "k_b": 4},
    "pranc": {"k": 8},
    "mcnc": {"k": 8, "hidden": 4},
    "experts": {"per_task": 1},
}
MEMORY: dict[str, dict] = {
    "dnc": {"memory_size": 4, "word_size": 3, "num_reads": 1, "hidden_size": 8},
    "episodic": {"capacity": 16, "key_dim": 4},
    "hopfield": {},
    "hopfield_layer": {"quantity": 4},
    "hopfield_pooling": {"quantity": 2},
    "hopfield_store": {"capacity": 8},
    "memory_transformer": {"dim": 8, "heads": 2, "layers": 1, "slots": 4},
    "mini_rag": {"capacity": 8, "key_dim": 4, "k": 2, "heads": 1},
}
# modules whose per-task state makes old tasks' outputs unchangeable by later tasks (with these configs)
ISOLATING = {"supsup", "hopsupsup", "fnnsp", "lora", "nola", "pranc", "mcnc", "experts"}
# backbones whose outputs change by more than their parameters: sense-rag's VQ codebook follows the data (EMA) and its
# store holds what every task wrote, so no plasticity module can keep an old task's outputs fixed on it
STATEFUL = {"sense-rag"}


def test_every_registered_component_has_a_tiny_configuration_here():
    assert set(registry.entries("backbone")) == set(BACKBONES)
    assert set(registry.entries("plasticity")) == set(PLASTICITY)
    assert set(registry.entries("memory")) == set(MEMORY)


def _backbone(name: str) -> tuple[nn.Module, _Stream]:
    cfg, shape, classes, _ = BACKBONES[name]
    stream = _Stream(shape, classes)
    torch.manual_seed(0)
    return registry.build("backbone", {"name": name, **cfg}, registry.BuildEnv(stream=stream)), stream


def _agent(bb: str, plasticity: list[str] = (), memory: list[str] = ()) -> Agent:
    backbone, stream = _backbone(bb)
    env = registry.BuildEnv(stream=stream)
    ps = [registry.build("plasticity", {"name": p, **PLASTICITY[p]}, env) for p in plasticity]
    ms = [registry.build("memory", {"name": m, **MEMORY[m]}, env) for m in memory]
    return Agent(backbone, plasticity=ps, memory=ms, input_shape=stream.input_shape)


def _x(bb: str, n: int = 6, seed: int = 0) -> Tensor:
    return BACKBONES[bb][3](n, torch.Generator().manual_seed(seed))


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _tensors(o)] if isinstance(out, (tuple, list)) else []


def _out(agent: Agent, x: Tensor, task: int | None) -> list[Tensor]:
    agent.eval()
    with torch.no_grad():
        return [t.clone() for t in _tensors(agent(x, task))]


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def _task(i: int) -> Task:
    return Task(id=i, name=f"t{i}", kind="classification", train=None, eval=None)  # every output is the task's


def _train(agent: Agent, bb: str, task: int, steps: int = 2) -> None:
    """Start task `task`, take optimiser steps on a generic loss, write stores, end the task."""
    agent.start_task(_task(task))
    params = list(agent.trainable_parameters())
    opt = torch.optim.Adam(params, lr=0.05) if params else None
    agent.train()
    for s in range(steps):
        x = _x(bb, seed=100 * task + s)
        loss = sum(t.float().pow(2).mean() for t in _tensors(agent(x, task)))
        loss = loss + sum(agent.loss_terms(Batch(x, torch.zeros(x.shape[0], dtype=torch.long)), None).values())
        if opt is not None and loss.requires_grad:  # (no trainable parameter may lie on the forward path)
            opt.zero_grad()
            loss.backward()
            opt.step()
        agent.after_step(s, Batch(x, torch.arange(x.shape[0]) % 3, task))
    agent.end_task(_task(task))


def _build_or_refused(make: Any, names: list[str]) -> Agent | None:
    try:
        return make()
    except UserError as e:  # refused at build time: exit 2 from the command line, naming the module
        assert any(n in str(e) for n in names), str(e)
        return None


def _plain(agent: Agent) -> nn.Module:
    """The backbone with every wrapper replaced by its base layer and no memory hooks: what 'no task state' must equal."""
    from agentlab.layers import replace_layer

    bb = copy.deepcopy(agent.backbone)
    bb._forward_pre_hooks.clear()
    for n, m in list(bb.named_modules()):
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        if isinstance(m, (WrappedLayer, TaskBatchNorm)):
            replace_layer(bb, n, m.base_layer)
    return bb


def _nudge(w: Tensor) -> Tensor:
    """A fixed random change of a weight (not a rescaling, which normalised and quantised paths would not see)."""
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)).to(w)
    return w + noise * (w.detach().std() + 0.1)


class _Scale(LayerTransform):
    """A test transform nudging the effective weight; counts how often the effective weight is computed."""

    calls = 0

    def transform_weight(self, w: Tensor) -> Tensor:
        self.calls += 1
        return _nudge(w)


def _participating(agent: Agent, x: Tensor) -> set[str]:
    """Wrapped layers whose weight the plain backbone's output depends on (nudging it changes the output): those a
    change of the effective weight must reach, whether the backbone calls the layer or reads its `.weight`."""
    plain = _plain(agent).eval()
    with torch.no_grad():
        ref = _tensors(plain(x))
        out = set()
        for n, m in agent.backbone.named_modules():
            if isinstance(m, WrappedLayer):
                w = plain.get_submodule(n).weight
                old = w.detach().clone()
                w.copy_(_nudge(old))
                if not _same(_tensors(plain(x)), ref):
                    out.add(n)
                w.copy_(old)
    return out


def _checkpoint_round_trip(agent: Agent, remake: Any, bb: str, tmp_path: Any, tasks: list[int | None]) -> None:
    path = save_checkpoint(tmp_path, 0, {"agent": agent.state_dict()})
    fresh = remake()
    for t in [t for t in tasks if t is not None]:
        fresh.start_task(_task(t))  # create the per-task entries a module builds on task start
        fresh.end_task(_task(t))
    fresh.load_state_dict(load_checkpoint_dir(path)["agent"])
    x = _x(bb, seed=7)
    for t in tasks:
        assert _same(_out(agent, x, t), _out(fresh, x, t)), f"task {t}"


# ---------------------------------------------------------------------------- plasticity x backbone


@pytest.mark.parametrize("bb", sorted(BACKBONES))
@pytest.mark.parametrize("mod", sorted(PLASTICITY))
def test_plasticity_on_every_backbone(mod, bb, tmp_path):
    agent = _build_or_refused(lambda: _agent(bb, [mod]), [mod])
    if agent is None:
        return
    x = _x(bb)
    plain = lambda: _tensors(_plain(agent).eval()(x))  # noqa: E731
    with agent.plasticity[0].disabled():
        assert _same(_out(agent, x, None), plain())  # disabled = the base layers
    if mod in ISOLATING:  # per-task state only: no task state = the base layers, and an idle module keeps nothing per task
        assert _same(_out(agent, x, None), plain())
        assert ledger(agent)["modules"][mod]["bytes"] == ledger(agent)["modules"][mod]["shared"]
    _train(agent, bb, 0)
    ref0 = _out(agent, x, 0)
    with agent.plasticity[0].disabled():
        assert _same(_out(agent, x, 0), plain())
    if mod in ISOLATING:
        assert _same(_out(agent, x, 99), plain())  # a task never trained = the base layers
    for name in _participating(agent, x):  # every wrapped layer's effective weight is on the forward path
        layer = agent.backbone.get_submodule(name)
        nudge = layer.add("scale", _Scale())
        changed = not _same(_out(agent, x, 0), ref0)
        del layer.transforms["scale"]
        assert nudge.calls > 0, f"{mod} on {bb}: the forward pass bypassed {name}'s effective weight"
        # (sense-rag reaches its pooler only through a nearest-neighbour retrieval, which a nudge need not move)
        assert changed or bb in STATEFUL, f"{mod} on {bb}: nudging {name}'s effective weight left the output unchanged"
    _train(agent, bb, 1)
    if mod in ISOLATING and bb not in STATEFUL:
        assert _same(_out(agent, x, 0), ref0), f"{mod} on {bb}: task 0 changed while task 1 trained"
    per_task = ledger(agent)["modules"][mod].get("per_task", {})
    assert mod in ("lottery", "set") or per_task, f"{mod} keeps per-task state but the ledger shows none"
    _checkpoint_round_trip(agent, lambda: _agent(bb, [mod]), bb, tmp_path, [0, 1, None])


# ---------------------------------------------------------------------------- memory x backbone


@pytest.mark.parametrize("bb", sorted(BACKBONES))
@pytest.mark.parametrize("mem", sorted(MEMORY))
def test_memory_on_every_backbone(mem, bb, tmp_path):
    agent = _build_or_refused(lambda: _agent(bb, memory=[mem]), [mem])
    if agent is None:
        return
    m = agent.extra_memory[0]
    assert isinstance(m, AttachedMemory) and m.bound
    x = _x(bb)
    before = _out(agent, x, None)
    plain = [t for t in _tensors(_plain(agent).eval()(x))]
    if m.fuse_kind in ("residual", "cross_attention", "none"):
        assert _same(before, plain)  # an attached memory starts as the identity (gate 0) or reads nothing yet
    assert ledger(agent)["modules"][mem]["bytes"] == 0  # nothing stored, no state kept: an idle memory costs nothing
    _train(agent, bb, 0)
    if m.writes:
        assert ledger(agent)["modules"][mem]["bytes"] > 0, f"{mem} was written but the ledger counts nothing"
    if hasattr(m.fusion, "gate"):
        with torch.no_grad():
            m.fusion.gate.fill_(1.0)
        assert not _same(_out(agent, x, 0), plain), f"{mem} at {m.at} of {bb} is not on the forward path"
    _checkpoint_round_trip(agent, lambda: _agent(bb, memory=[mem]), bb, tmp_path, [0, None])


# ---------------------------------------------------------------------------- plasticity pairs on one layer


@pytest.mark.parametrize("first,second", [p for p in itertools.permutations(sorted(PLASTICITY), 2)])
def test_two_plasticity_modules_on_the_same_layers(first, second, tmp_path):
    agent = _build_or_refused(lambda: _agent("mlp", [first, second]), [first, second])
    if agent is None:
        return
    x = _x("mlp")
    if {first, second} <= ISOLATING:
        assert _same(_out(agent, x, None), [_plain(agent).eval()(x)])
    shared = [m for m in agent.backbone.modules() if isinstance(m, WrappedLayer) and {first, second} <= set(m.transforms)]
    assert shared, "the two modules share no layer: nothing stacked"
    assert list(shared[0].transforms)[:2] == [first, second]  # stacked in list order
    _train(agent, "mlp", 0)
    ref0 = _out(agent, x, 0)
    _train(agent, "mlp", 1)
    if {first, second} <= ISOLATING:
        assert _same(_out(agent, x, 0), ref0), f"{first}+{second}: task 0 changed while task 1 trained"
    _checkpoint_round_trip(agent, lambda: _agent("mlp", [first, second]), "mlp", tmp_path, [0, 1, None])


def test_a_refused_pair_names_both_modules_and_the_layer():
    with pytest.raises(UserError, match=r"'set' and 'supsup' cannot stack on layer 'layers.0'"):
        _agent("mlp", ["set", "supsup"])


# ---------------------------------------------------------------------------- forgetting a task on purpose


@pytest.mark.parametrize("bb", sorted(BACKBONES))
@pytest.mark.parametrize("mod", sorted(PLASTICITY))
def test_forgetting_a_task_is_exact_or_refused(mod, bb):
    """`forget_task(1)` after tasks 0, 1, 2: the module frees the task's bytes, every other task computes bit for bit
    as before and nothing of the task is left (a second call frees nothing), or it refuses naming itself."""
    from agentlab.errors import CannotForget

    agent = _build_or_refused(lambda: _agent(bb, [mod]), [mod])
    if agent is None:
        return
    for t in range(3):
        _train(agent, bb, t)
    x = _x(bb)
    before = {t: _out(agent, x, t) for t in (0, 2)}
    module = agent.plasticity[0]
    held = module.state_bytes().get(1, 0)
    try:
        freed = module.forget_task(1)
    except CannotForget as e:
        assert mod in str(e), str(e)
        return
    assert freed == held and 1 not in module.state_bytes()
    for t, out in before.items():
        assert _same(_out(agent, x, t), out), f"{mod} on {bb}: task {t} changed when task 1 was forgotten"
    assert module.forget_task(1) == 0


@pytest.mark.parametrize("mem", sorted(MEMORY))
def test_forgetting_a_memory_entries_is_exact_or_refused(mem):
    from agentlab.errors import CannotForget

    agent = _build_or_refused(lambda: _agent("mlp", memory=[mem]), [mem])
    if agent is None:
        return
    for t in range(2):
        _train(agent, "mlp", t)
    m = agent.extra_memory[0]
    try:
        m.forget_task(0)
    except CannotForget as e:
        assert mem in str(e), str(e)
        return
    assert m.forget_task(0) == 0
