"""Modern Hopfield layers: retrieval, update steps, shapes, the pure-retrieval switch, the store."""

from __future__ import annotations

import pytest
import torch

from agentlab.memory.hopfield import Hopfield, HopfieldLayer, HopfieldPooling
from agentlab.memory.hopfield_core import hopfield_retrieve
from agentlab.memory.hopfield_store import HopfieldStore


def signs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, d), generator=g).float() * 2 - 1


def test_one_update_retrieves_well_separated_patterns_exactly():
    y = torch.eye(8) * 4.0  # orthogonal, norm 4: separation 16
    cue = y + 0.3 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    r = hopfield_retrieve(cue[None, None], y[None, None], y[None, None], scaling=2.0, update_steps_max=0)
    assert r.steps == 0
    assert torch.allclose(r.output[0, 0], y, atol=1e-6)


def test_pure_retrieval_returns_stored_patterns():
    y = signs(10, 64)[None]  # (1, 10, 64)
    cue = y.clone()
    cue[..., :16] *= -1  # a quarter of the entries flipped
    hop = Hopfield(pure_retrieval=True, scaling=1.0)
    assert not list(hop.parameters())  # no projections, no normalisation
    out = hop((y, cue, y))
    assert torch.allclose(out, y, atol=1e-5)
    assert torch.equal(Hopfield.retrieval(1.0)((y, cue, y)), out)
    assoc = hop.get_association_matrix((y, cue, y))
    assert assoc.shape == (1, 1, 10, 10)
    assert torch.equal(assoc[0, 0].argmax(-1), torch.arange(10))


def test_update_steps_max_and_eps_behave_as_documented():
    y = signs(40, 32, seed=1)[None]
    cue = y[:, :5] * 0.2 + 0.1 * signs(5, 32, seed=2)[None]  # weak cues: several updates needed at low beta
    for steps in (0, 1, 3):
        hop = Hopfield.retrieval(0.05, update_steps_max=steps, update_steps_eps=1e-12)
        hop((y, cue, y))
        assert hop.last_steps == steps  # eps tiny: runs exactly update_steps_max updates
    until = Hopfield.retrieval(0.05, update_steps_max=None, update_steps_eps=1e-4)
    a_inf = until.get_association_matrix((y, cue, y))
    n = until.last_steps
    assert 1 <= n < 100  # stopped by eps, not by a limit
    # one more update after convergence moves the association by at most eps
    more = Hopfield.retrieval(0.05, update_steps_max=n + 1, update_steps_eps=1e-12).get_association_matrix((y, cue, y))
    assert float((more - a_inf).flatten(2).norm(dim=-1).max()) <= 1e-4
    loose = Hopfield.retrieval(0.05, update_steps_max=None, update_steps_eps=10.0)
    loose((y, cue, y))
    assert loose.last_steps == 1  # the first update already moved by less than eps
    with pytest.raises(ValueError):
        Hopfield.retrieval(0.05, update_steps_eps=0.0)((y, cue, y))


def test_iterated_update_lowers_the_energy():
    y = signs(20, 16, seed=3)
    beta = 0.3
    energy = lambda xi: -torch.logsumexp(beta * xi @ y.T, -1) / beta + 0.5 * (xi * xi).sum(-1)  # noqa: E731
    xi = signs(4, 16, seed=4) * 0.5
    prev = energy(xi)
    for _ in range(5):
        xi = hopfield_retrieve(xi[None, None], y[None, None], y[None, None], scaling=beta).output[0, 0]
        e = energy(xi)
        assert torch.all(e <= prev + 1e-5)  # the CCCP update never raises E (Ramsauer et al., Thm 1)
        prev = e


@pytest.mark.parametrize("batch_first", [True, False])
def test_hopfield_shapes_both_layouts(batch_first):
    b, l, s, e = 3, 4, 6, 12
    hop = Hopfield(input_size=e, num_heads=3, hidden_size=5, pattern_size=7, output_size=9, batch_first=batch_first)
    state = torch.randn(b, l, e) if batch_first else torch.randn(l, b, e)
    stored = torch.randn(b, s, e) if batch_first else torch.randn(s, b, e)
    out = hop((stored, state, stored))
    assert out.shape == ((b, l, 9) if batch_first else (l, b, 9))
    assert hop.get_association_matrix((stored, state, stored)).shape == (b, 3, l, s)
    assert hop.get_projected_pattern_matrix((stored, state, stored)).shape == (b, 3, s, 7)
    assert hop.hidden_size == 5 and hop.output_size == 9 and hop.batch_first is batch_first


@pytest.mark.parametrize("batch_first", [True, False])
def test_pooling_and_layer_shapes_both_layouts(batch_first):
    b, s, e = 2, 7, 8
    x = torch.randn(b, s, e) if batch_first else torch.randn(s, b, e)
    pool = HopfieldPooling(input_size=e, quantity=3, output_size=5, batch_first=batch_first)
    assert pool(x).shape == (b, 15)
    assert pool.get_association_matrix(x).shape == (b, 1, 3, s)
    layer = HopfieldLayer(input_size=e, quantity=11, output_size=4, batch_first=batch_first, lookup_weights_as_separated=True)
    y = layer(x)
    assert y.shape == ((b, s, 4) if batch_first else (s, b, 4))
    assert layer.get_association_matrix(x).shape == (b, 1, s, 11)
    assert layer.quantity == 11 and layer.input_size == e


def test_masks_bias_zero_association_and_gradients():
    hop = Hopfield(input_size=8, num_heads=2, concat_bias_pattern=True, add_zero_association=True, dropout=0.1)
    x = torch.randn(2, 5, 8, requires_grad=True)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[:, -1] = True
    a = hop.get_association_matrix(x, stored_pattern_padding_mask=pad)
    assert a.shape == (2, 2, 5, 7)  # 5 stored + bias pattern + zero pattern
    assert torch.all(a[..., 4] == 0)  # the padded stored pattern gets no weight
    hop.train()
    hop(x, stored_pattern_padding_mask=pad).sum().backward()
    assert torch.isfinite(x.grad).all()
    static = Hopfield(input_size=8, stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True)
    assert static.scaling == 1.0  # the package's default when everything is static
    assert Hopfield(input_size=16, num_heads=4).scaling == pytest.approx(0.5)  # 1 / sqrt(16 / 4)


def test_store_retrieves_from_noisy_and_partial_cues_and_respects_capacity():
    store = HopfieldStore(dim=64, capacity=50, beta=1.0)
    y = signs(30, 64, seed=5)
    store.write(y)
    noisy = y.clone()
    noisy[:, :16] *= -1
    assert torch.equal(torch.sign(store.retrieve(noisy)), y)
    partial = y.clone()
    partial[:, 32:] = 0  # half the entries unknown
    assert torch.equal(torch.sign(store.retrieve(partial)), y)
    sc = store.scalars()
    assert sc["load"] == pytest.approx(30 / 64) and sc["occupancy"] == pytest.approx(0.6) and sc["recall_error"] < 1e-3
    store.write(signs(40, 64, seed=6))
    assert len(store) == 50 and store.state_bytes() == 50 * 64 * 4  # never beyond capacity
    fresh = HopfieldStore(dim=64, capacity=50, beta=1.0)
    fresh.load_state_dict(store.state_dict())
    assert len(fresh) == 50 and torch.equal(fresh.patterns(), store.patterns())
    store.reset()
    assert len(store) == 0 and store.scalars()["load"] == 0


def test_hetero_associative_store():
    store = HopfieldStore(dim=32, capacity=10, beta=1.0, value_dim=3)
    keys = signs(5, 32, seed=7)
    values = torch.arange(15.0).reshape(5, 3)
    store.write(keys, values)
    assert torch.allclose(store.retrieve(keys), values, atol=1e-4)
