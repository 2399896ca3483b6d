"""The fused DNC unroll (hand-written backward) equals the autograd path of the per-mechanism functions."""

from __future__ import annotations

import pytest
import torch

from agentlab.memory.dnc import DNC
from agentlab.memory.dnc.core import DNCState


def _pair(controller: str, **kw):
    torch.manual_seed(0)
    args = dict(input_size=5, output_size=3, memory_size=6, word_size=4, num_reads=3, num_writes=1, hidden_size=7,
                controller=controller)
    args.update(kw)
    fused = DNC(**args).double()
    ref = DNC(**args, fused=False).double()
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _leaves(state):
    """The state as fresh leaves that require grad (a state carried from an earlier chunk)."""
    if isinstance(state, tuple):
        return type(state)(*(_leaves(v) for v in state))
    return state.detach().clone().requires_grad_()


def _flat(state):
    out = []
    for v in state:
        out.extend(_flat(v) if isinstance(v, tuple) else [v])
    return out


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_fused_unroll_equals_autograd_path_values_and_every_gradient(controller):
    fused, ref = _pair(controller)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 5, generator=g, dtype=torch.float64) * 2
    # start from a state some steps in (non-zero memory, links, usage), carried with gradients
    with torch.no_grad():
        _, s0 = ref(torch.randn(4, 5, 5, generator=g, dtype=torch.float64), ref.initial_state(4))
    s0 = s0._replace(controller=s0.controller._replace(h=s0.controller.h + 0.1))  # h != 0 for the feed-forward pass-through too
    results = []
    for m in (fused, ref):
        m.zero_grad()
        s = _leaves(s0)
        y, sT = m(x, s)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        # a loss on the outputs and on every part of the final state
        loss = (y * gy).sum() + sum((t * (i + 1) * 0.01).sum() for i, t in enumerate(_flat(sT)) if t.requires_grad)
        loss.backward()
        results.append((y.detach(), [t.detach() for t in _flat(sT)], {n: p.grad.clone() for n, p in m.named_parameters()},
                        [t.grad for t in _flat(s)]))
    (yf, sf, pf, gf), (yr, sr, pr, gr) = results
    assert torch.allclose(yf, yr, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(sf, sr))
    assert pf.keys() == pr.keys()
    for n in pf:
        assert torch.allclose(pf[n], pr[n], atol=1e-9), n
    for i, (a, b) in enumerate(zip(gf, gr)):
        assert (a is None) == (b is None) or (a is not None and float(a.abs().max()) == 0) or (b is not None and float(b.abs().max()) == 0), i
        if a is not None and b is not None:
            assert torch.allclose(a, b, atol=1e-9), i


def test_fused_gradcheck_on_a_tiny_unroll():
    fused, _ = _pair("lstm", memory_size=4, word_size=2, num_reads=2, hidden_size=3)
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    s = fused.initial_state(2)

    def f(x):
        return fused(x, s)[0]

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


def test_fused_eval_trace_and_scalars_equal_the_autograd_path():
    fused, ref = _pair("lstm")
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    out = []
    for m in (fused.eval(), ref.eval()):
        with torch.no_grad():
            y, _ = m(x, m.initial_state(2))
        out.append((y, m.images(), m.scalars()))
    (yf, imf, scf), (yr, imr, scr) = out
    assert torch.allclose(yf, yr, atol=1e-10)
    assert imf.keys() == imr.keys() == {"allocation", "write_weights", "read_weights", "link"}
    assert all(torch.allclose(imf[k], imr[k], atol=1e-8) for k in imf)
    assert scf == pytest.approx(scr)


def test_float32_unroll_close_and_several_write_heads_take_the_autograd_path():
    torch.manual_seed(0)
    m = DNC(input_size=10, output_size=8, memory_size=16, word_size=8, num_reads=4, hidden_size=32)
    ref = DNC(input_size=10, output_size=8, memory_size=16, word_size=8, num_reads=4, hidden_size=32, fused=False)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 12, 10)
    y, _ = m(x, m.initial_state(3))
    y2, _ = ref(x, ref.initial_state(3))
    assert torch.allclose(y, y2, atol=1e-5)
    two = DNC(input_size=4, output_size=2, memory_size=5, word_size=3, num_writes=2)
    y, s = two(torch.randn(2, 3, 4), two.initial_state(2))
    assert y.grad_fn is not None and "Fused" not in type(s.access.memory.grad_fn).__name__
    assert isinstance(s, DNCState)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_compiled_step_compiles_once_per_grad_mode_whatever_the_length(controller):
    # torch.compile guards on strides, requires_grad and aliasing of the step's inputs: a slice of the (b, t, g)
    # input projection changes stride with t, a fresh state does not require grad while a carried one does, and a
    # fresh LSTM state used one zeros tensor for h and c. Counted with dynamo's counting backend (no code generation).
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    torch.manual_seed(0)
    m = DNC(input_size=6, output_size=4, memory_size=8, word_size=4, num_reads=2, hidden_size=16, controller=controller)
    eager = DNC(input_size=6, output_size=4, memory_size=8, word_size=4, num_reads=2, hidden_size=16, controller=controller)
    eager.load_state_dict(m.state_dict())
    m.compile_step(backend=counter)
    for length in (3, 4, 6):
        x = torch.randn(4, length, 6)
        y, _ = m.train()(x, m.initial_state(4))
        y.pow(2).mean().backward()
        with torch.no_grad():
            y_eval, _ = m.eval()(x, m.initial_state(4))
            y_ref, _ = eager.eval()(x, eager.initial_state(4))
        assert torch.allclose(y_eval, y_ref, atol=1e-5)
    assert counter.frame_count == 2  # one graph with grad, one without
    torch._dynamo.reset()
