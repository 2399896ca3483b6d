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


def _supsup_with_masks(k: int):
    from agentlab.backbones.mlp import MLP
    from agentlab.plasticity.bitpack import pack_bits
    from agentlab.plasticity.supsup import SupSup, SupSupConfig

    torch.manual_seed(0)
    mlp = MLP(12, [20, 16], 6)
    sup = SupSup(SupSupConfig(density=0.5), seed=0)
    sup.attach(mlp)
    g = torch.Generator().manual_seed(1)
    for layer in sup._layers.values():
        for t in range(k):
            layer.register_buffer(f"mask_{t}", pack_bits(torch.rand(layer.weight.shape, generator=g) < 0.5))
            layer.frozen.append(t)
    return mlp, sup


def _fast(sup, on: bool) -> None:
    for layer in sup._layers.values():
        layer.fast_oneshot = on
        layer.stack_cache_bytes = 0  # stacks that fit the cache take the superposed path


def test_uniform_superposition_gives_the_superposed_alpha_gradient():
    from agentlab.plasticity.task_inference import alpha_gradient, infer_tasks

    k = 37  # more than one chunk of the backward product
    mlp, sup = _supsup_with_masks(k)
    x = torch.randn(9, 12)
    tasks = list(range(k))
    alpha = torch.full((9, k), 1.0 / k)
    grads = {}
    for on in (True, False):
        _fast(sup, on)
        grads[on] = alpha_gradient(mlp, x, sup.ctx, tasks, alpha)
    assert torch.allclose(grads[True], grads[False], atol=1e-6, rtol=1e-4)
    assert sup._layers["layers.0"]._mask_sum is not None  # the forward's W ⊙ Σ M_i, kept for the next batch
    for method in ("oneshot", "binary"):  # binary search: its later rounds are not uniform and take the superposed path
        _fast(sup, True)
        fast = infer_tasks(mlp, x, sup.ctx, tasks, method=method)
        _fast(sup, False)
        assert torch.equal(fast, infer_tasks(mlp, x, sup.ctx, tasks, method=method))


def test_byte_table_unpacks_as_bitpack_does():
    from agentlab.plasticity.bitpack import pack_bits, unpack_bits
    from agentlab.plasticity.supermask_oneshot import unpack_rows

    m = torch.rand(3, 29) < 0.3  # 87 bits: a partial last byte
    packed = torch.stack([pack_bits(r) for r in m])
    assert torch.equal(unpack_rows(packed, 29, torch.float32), torch.stack([unpack_bits(pack_bits(r), (29,)) for r in m]))
