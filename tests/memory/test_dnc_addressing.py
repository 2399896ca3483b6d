"""DNC addressing pieces against small hand-computed cases (Graves et al. 2016, Methods)."""

from __future__ import annotations

import math

import torch

from agentlab.memory.dnc.access import erase_and_add, mix_read_modes, read_words
from agentlab.memory.dnc.allocation import allocation_weights, exclusive_cumprod, write_allocation_weights
from agentlab.memory.dnc.content import content_weights, cosine_similarity
from agentlab.memory.dnc.linkage import directional_weights, initial_linkage, update_linkage
from agentlab.memory.dnc.usage import update_usage


def test_cosine_similarity_and_content_weights_by_hand():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    keys = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
    sim = cosine_similarity(memory, keys)
    assert torch.allclose(sim, torch.tensor([[[1.0, 0.0, 1 / math.sqrt(2)]]]), atol=1e-5)
    w = content_weights(memory, keys, torch.tensor([[2.0]]))
    e = torch.exp(2 * torch.tensor([1.0, 0.0, 1 / math.sqrt(2)]))
    assert torch.allclose(w[0, 0], e / e.sum(), atol=1e-5)


def test_zero_memory_gives_finite_similarity_and_gradient():
    memory = torch.zeros(1, 4, 3, requires_grad=True)
    keys = torch.zeros(1, 2, 3, requires_grad=True)
    w = content_weights(memory, keys, torch.ones(1, 2))
    w.sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()
    assert torch.allclose(w, torch.full_like(w, 0.25))


def test_exclusive_cumprod():
    assert torch.allclose(exclusive_cumprod(torch.tensor([2.0, 3.0, 4.0])), torch.tensor([1.0, 2.0, 6.0]))


def test_allocation_by_hand_and_order():
    # u = [0.5, 0.2, 0.8]: sorted 0.2 (slot 1), 0.5 (slot 0), 0.8 (slot 2)
    # a[1] = 0.8; a[0] = 0.5 * 0.2 = 0.1; a[2] = 0.2 * 0.2 * 0.5 = 0.02
    a = allocation_weights(torch.tensor([[0.5, 0.2, 0.8]]))
    assert torch.allclose(a, torch.tensor([[0.1, 0.8, 0.02]]), atol=1e-5)
    assert a.argmax().item() == 1  # the least-used slot is allocated first
    free = allocation_weights(torch.tensor([[1.0, 0.0, 1.0]]))
    assert torch.allclose(free, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-5)


def test_two_write_heads_allocate_different_slots():
    usage = torch.tensor([[0.9, 0.0, 0.0, 0.9]])
    a = write_allocation_weights(usage, torch.ones(1, 2))  # (1, 2, 4)
    assert a[0, 0].argmax().item() == 1  # stable sort: first free slot
    assert a[0, 1].argmax().item() == 2  # the second head sees slot 1 as used
    assert torch.all(a.sum(-1) <= 1 + 1e-6)


def test_usage_by_hand_and_bounds():
    usage = torch.tensor([[0.5, 0.0, 1.0]])
    write = torch.tensor([[[0.5, 1.0, 0.0]]])  # (b, w, n)
    read = torch.tensor([[[0.0, 0.0, 1.0]]])  # (b, r, n)
    # u + (1 - u) w = [0.75, 1.0, 1.0]; retention with free gate 1 on slot 2: [1, 1, 0]
    u = update_usage(usage, write, torch.tensor([[1.0]]), read)
    assert torch.allclose(u, torch.tensor([[0.75, 1.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        u = update_usage(torch.rand(2, 5, generator=g), torch.rand(2, 3, 5, generator=g),
                         torch.rand(2, 4, generator=g), torch.rand(2, 4, 5, generator=g))
        assert (u >= 0).all() and (u <= 1).all()


def test_linkage_by_hand():
    state = initial_linkage(1, 1, 3)
    state = update_linkage(state, torch.tensor([[[1.0, 0.0, 0.0]]]))  # write slot 0
    assert torch.allclose(state.link, torch.zeros(1, 1, 3, 3))
    assert torch.allclose(state.precedence, torch.tensor([[[1.0, 0.0, 0.0]]]))
    state = update_linkage(state, torch.tensor([[[0.0, 1.0, 0.0]]]))  # then slot 1
    expect = torch.zeros(3, 3)
    expect[1, 0] = 1.0  # slot 1 was written right after slot 0
    assert torch.allclose(state.link[0, 0], expect)
    read = torch.tensor([[[1.0, 0.0, 0.0]]])  # a read head on slot 0
    fwd = directional_weights(state.link, read, forward=True)
    assert torch.allclose(fwd[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))  # forward: 0 -> 1
    bwd = directional_weights(state.link, torch.tensor([[[0.0, 1.0, 0.0]]]), forward=False)
    assert torch.allclose(bwd[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # backward: 1 -> 0


def test_link_diagonal_is_zero_and_entries_bounded():
    g = torch.Generator().manual_seed(1)
    state = initial_linkage(3, 2, 6)
    for _ in range(10):
        w = torch.softmax(torch.randn(3, 2, 6, generator=g), -1) * torch.rand(3, 2, 1, generator=g)
        state = update_linkage(state, w)
    diag = torch.diagonal(state.link, dim1=-2, dim2=-1)
    assert torch.all(diag == 0)
    assert (state.link >= 0).all() and (state.link <= 1 + 1e-6).all()
    assert (state.precedence.sum(-1) <= 1 + 1e-6).all()


def test_erase_add_and_read_by_hand():
    memory = torch.ones(1, 2, 3)
    w = torch.tensor([[[1.0, 0.0]]])
    erase = torch.tensor([[[1.0, 0.0, 0.5]]])
    add = torch.tensor([[[2.0, 2.0, 2.0]]])
    m = erase_and_add(memory, w, erase, add)
    assert torch.allclose(m, torch.tensor([[[2.0, 3.0, 2.5], [1.0, 1.0, 1.0]]]))
    r = read_words(m, torch.tensor([[[0.5, 0.5]]]))
    assert torch.allclose(r, torch.tensor([[[1.5, 2.0, 1.75]]]))


def test_read_modes_mix():
    b = torch.tensor([[[[1.0, 0.0]]]])  # (b, r, w, n)
    f = torch.tensor([[[[0.0, 1.0]]]])
    c = torch.tensor([[[0.5, 0.5]]])
    modes = torch.tensor([[[0.2, 0.3, 0.5]]])  # backward, forward, content
    w = mix_read_modes(modes, b, c, f)
    assert torch.allclose(w, torch.tensor([[[0.2 + 0.25, 0.3 + 0.25]]]))
