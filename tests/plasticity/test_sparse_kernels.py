"""SET's CSR kernels give the masked dense product's outputs and gradients; stacked SET falls back to it."""

from __future__ import annotations

import copy

import pytest
import torch

from agentlab.backbones.mlp import MLP
from agentlab.plasticity.set import SET, SETConfig
from agentlab.plasticity.sparse_kernels import CSRPattern, SparseLinear
from agentlab.wrapping import WrappedLayer


def _pair(**kw):
    """The same SET MLP twice: CSR kernels on, and the masked dense product."""
    torch.manual_seed(0)
    mlp = MLP(30, [40, 40], 5)
    s = SET(SETConfig(epsilon=4, **kw), seed=0)
    s.attach(mlp)
    with torch.no_grad():  # non-zero values at every connection (zero-initialised regrowth would hide errors)
        for layer in s.layers.values():
            layer.weight.copy_(torch.randn_like(layer.weight) * (layer.owner >= 0))
    dense_mlp = copy.deepcopy(mlp)
    for m in dense_mlp.modules():
        if isinstance(m, WrappedLayer):
            for t in m.transforms.values():
                t.sparse_kernels = False
    return mlp, s, dense_mlp


def _grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_()
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_csr_path_equals_masked_dense_outputs_and_gradients():
    mlp, s, dense = _pair()
    layer = s.layers["layers.0"]
    x = torch.randn(7, 30)
    assert layer.uses_sparse_kernels(x)
    for train in (True, False):
        mlp.train(train)
        dense.train(train)
        y, gx, gp = _grads(mlp, x)
        y2, gx2, gp2 = _grads(dense, x)
        assert torch.allclose(y, y2, atol=1e-5)
        assert torch.allclose(gx, gx2, atol=1e-5)
        assert gp.keys() == gp2.keys()
        for n in gp:
            assert torch.allclose(gp[n], gp2[n], atol=1e-5), n
    # the gradient is exactly zero off the connections, as through the mask
    w_grad = gp["layers.0.base_layer.weight"]
    assert bool((w_grad[layer.owner < 0] == 0).all()) and bool((w_grad[layer.owner >= 0] != 0).any())
    # readers of .weight see the masked weight, whichever product the forward takes
    wrapped = mlp.get_submodule("layers.0")
    assert torch.equal(wrapped.weight, layer.weight * (layer.owner >= 0))


def test_csr_path_follows_rewiring_and_extra_leading_axes():
    mlp, s, dense = _pair(zeta=0.3)
    s.rewire()
    dense.load_state_dict(mlp.state_dict())
    for m in dense.modules():
        if isinstance(m, WrappedLayer):
            for t in m.transforms.values():
                t.changed()
    x = torch.randn(6, 30)
    assert torch.allclose(mlp(x), dense(x), atol=1e-5)
    x3 = torch.randn(3, 4, 30)  # (b, t, i) through one layer
    assert torch.allclose(mlp.get_submodule("layers.0")(x3), dense.get_submodule("layers.0")(x3), atol=1e-5)
    before = s.layers["layers.2"].pattern()
    s.rewire()
    assert s.layers["layers.2"].pattern() is not before  # a new topology, a new CSR structure


def test_frozen_and_grow_gradient_reaches_only_the_training_tasks_connections():
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    owner = torch.randint(-1, 2, (6, 8))
    active = owner >= 0
    trainable = owner == 1
    x = torch.randn(5, 8, requires_grad=True)
    weight = (w * active).requires_grad_()
    y = SparseLinear.apply(x, weight, None, CSRPattern(active, trainable))
    gy = torch.randn_like(y)
    y.backward(gy)
    ref_w = (w * active).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    eff = ref_w * trainable + (ref_w * (active & ~trainable)).detach()
    y_ref = ref_x @ eff.t()
    y_ref.backward(gy)
    assert torch.allclose(y, y_ref, atol=1e-6)
    assert torch.allclose(weight.grad, ref_w.grad, atol=1e-6)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)


def test_stacked_set_takes_the_masked_dense_product():
    from agentlab.plasticity.supsup import SupSup, SupSupConfig

    torch.manual_seed(0)
    mlp = MLP(12, [16], 3)
    s = SET(SETConfig(epsilon=3, zeta=0.0), seed=0)  # no rewiring: stacks with SupSup's fixed weights
    s.attach(mlp)
    sup = SupSup(SupSupConfig())
    sup.attach(mlp)
    x = torch.randn(4, 12)
    layer = s.layers["layers.0"]
    assert not layer.uses_sparse_kernels(x)
    called = []
    real = SparseLinear.apply
    SparseLinear.apply = lambda *a: called.append(1) or real(*a)  # type: ignore[method-assign]
    try:
        mlp(x)
    finally:
        SparseLinear.apply = real  # type: ignore[method-assign]
    assert not called


@pytest.mark.parametrize("regrowth", ["gradient"])
def test_rigl_regrowth_keeps_the_dense_gradient_path(regrowth):
    mlp, s, _ = _pair(regrowth=regrowth)
    assert not s.layers["layers.0"].uses_sparse_kernels(torch.randn(2, 30))


def test_a_set_model_with_its_csr_structure_deep_copies_and_pickles():
    import pickle

    mlp, s, _ = _pair()
    x = torch.randn(3, 30)
    mlp(x).sum().backward()  # builds the patterns and their CSR shells
    for other in (copy.deepcopy(mlp), pickle.loads(pickle.dumps(mlp))):
        assert torch.allclose(other(x), mlp(x))
