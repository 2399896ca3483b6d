"""The DNC core: shapes, gradients, state round trip, usage bounds, registry entries."""

from __future__ import annotations

import torch

from agentlab.checkpoint import load_checkpoint_dir, save_checkpoint
from agentlab.registry import BuildEnv, build
from agentlab.memory.dnc import DNC, DNCState
from agentlab.memory.dnc.access import AccessState
from agentlab.memory.dnc.controller import ControllerState
from agentlab.memory.dnc.linkage import LinkageState


def small(**kw):
    torch.manual_seed(0)
    args = dict(input_size=6, output_size=4, memory_size=8, word_size=5, num_reads=2, num_writes=2, hidden_size=16)
    args.update(kw)
    return DNC(**args)


def test_unroll_shapes_and_state_shapes():
    m = small()
    y, s = m(torch.randn(3, 7, 6), m.initial_state(3))
    assert y.shape == (3, 7, 4)
    assert s.access.memory.shape == (3, 8, 5)
    assert s.access.read_weights.shape == (3, 2, 8)
    assert s.access.write_weights.shape == (3, 2, 8)
    assert s.access.linkage.link.shape == (3, 2, 8, 8)
    assert s.read_words.shape == (3, 2, 5)
    assert (s.access.usage >= 0).all() and (s.access.usage <= 1).all()
    assert torch.all(torch.diagonal(s.access.linkage.link, dim1=-2, dim2=-1) == 0)


def test_step_by_step_equals_unroll_and_state_round_trip(tmp_path):
    m = small().eval()
    x = torch.randn(2, 5, 6)
    y_all, s_all = m(x, m.initial_state(2))
    s = m.initial_state(2)
    ys = []
    for t in range(5):
        y, s = m(x[:, t], s)
        ys.append(y)
    assert torch.allclose(torch.stack(ys, 1), y_all, atol=1e-6)
    # a state split in two halves and continued gives the same as continuing the whole
    y1, s1 = m(x[:, :3], m.initial_state(2))
    y2, _ = m(x[:, 3:], s1)
    assert torch.allclose(torch.cat([y1, y2], 1), y_all, atol=1e-6)
    # the state is plain tensors: it survives our pickle-free checkpoint format (safetensors + JSON)
    save_checkpoint(tmp_path, 0, {"state": s_all})
    a, c, r = load_checkpoint_dir(tmp_path / "ckpt_0000")["state"]
    back = DNCState(AccessState(*a[:3], LinkageState(*a[3]), a[4]), ControllerState(*c), r)
    y_next, _ = m(x[:, :1], back)
    y_ref, _ = m(x[:, :1], s_all)
    assert torch.allclose(y_next, y_ref)


def test_gradients_finite_over_a_long_sequence_and_both_controllers():
    for ctrl in ("lstm", "feedforward"):
        m = small(controller=ctrl)
        y, _ = m(torch.randn(2, 40, 6) * 5, m.initial_state(2))
        y.pow(2).mean().backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_scalars_images_and_bytes():
    m = small().eval()
    m(torch.randn(2, 6, 6), m.initial_state(2))
    sc = m.scalars()
    assert 0 <= sc["usage"] <= 1 and 0 <= sc["occupancy"] <= 1
    im = m.images()
    assert im["allocation"].shape == (1, 8, 6) and im["read_weights"].shape == (1, 16, 6)
    assert im["link"].shape == (1, 8, 8)
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in im.values())
    # memory 8x5 + reads 2x8 + writes 2x8 + links 2x8x8 + precedence 2x8 + usage 8 + h, c 16 each + read words 2x5
    n = 40 + 16 + 16 + 128 + 16 + 8 + 32 + 10
    assert m.state_bytes() == 4 * n


def test_registry_builds_memory_and_backbones():
    env = BuildEnv()
    mem = build("memory", {"name": "dnc", "output_size": 3, "memory_size": 4, "word_size": 2}, env)
    assert mem.bind(5) == 5 and isinstance(mem.core, DNC)  # residual fusion keeps the features' width
    y, state = mem.read(torch.randn(2, 7, 5), mem.initial_state(2))
    assert y.shape == (2, 7, 5) and state.access.memory.shape == (2, 4, 2)
    from agentlab.scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    env.stream = algorithmic_stream(AlgorithmicConfig(bits=4, max_len=3, gen_max_len=0, n_eval=2))
    bb = build("backbone", {"name": "dnc", "memory_size": 4, "word_size": 2, "hidden_size": 8}, env)
    assert bb(torch.zeros(2, 5, 6)).shape == (2, 5, 4)
    lstm = build("backbone", {"name": "lstm-seq", "hidden_size": 8}, env)
    assert lstm(torch.zeros(2, 5, 6)).shape == (2, 5, 4)
