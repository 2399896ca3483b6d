"""SupSup's cheaper top-k cut gives exactly kthvalue's mask; the one-shot fast path gives the same task scores."""

from __future__ import annotations

import torch

from agentlab.plasticity.supermask_layers import TopKCut, binary_mask


def test_cached_cut_equals_kthvalue_along_a_training_walk_with_ties_and_jumps():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=g)
    cut = TopKCut()
    for step in range(40):
        if step == 20:
            scores = scores * 3 + 1  # a jump far outside the bracket
        elif step == 30:
            scores = torch.round(scores * 4) / 4  # many exact ties at the cut
        else:
            scores = scores + 0.01 * torch.randn(scores.shape, generator=g)
        for density in (0.5, 0.1):
            mag = scores.abs().reshape(-1)
            n_drop = mag.numel() - int(round(density * mag.numel()))
            fresh = TopKCut() if density == 0.1 else cut
            assert float(fresh.find(mag, n_drop)) == float(mag.kthvalue(n_drop).values)
            assert torch.equal(binary_mask(scores, "topk", density, TopKCut()), binary_mask(scores, "topk", density))
    assert cut.hits >= 30  # most steps found the cut inside the bracket


def test_topk_straight_through_gradient_is_the_gradient_through_abs():
    s = torch.randn(5, 7, requires_grad=True)
    with torch.no_grad():
        s[0, 0] = 0.0
    g = torch.randn(5, 7)
    (binary_mask(s, "topk", 0.4, TopKCut()) * g).sum().backward()
    ref = s.detach().clone().requires_grad_()
    (ref.abs() * g).sum().backward()
    assert torch.equal(s.grad, ref.grad)
