"""Hopfield mask store: Storkey storage, recall from noisy cues up to the stated capacity, gradient recovery."""

from __future__ import annotations

import pytest
import torch

from agentlab.plasticity.hopfield_mask_store import HopfieldMaskStore


def patterns(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.5).float()  # 0/1 masks


@pytest.mark.parametrize("d", [256, 640])
def test_recalls_every_pattern_from_noisy_cues_up_to_reliable_capacity(d):
    store = HopfieldMaskStore(d)
    P = patterns(store.reliable_capacity, d)
    for p in P:
        store.write(p)
    bit_err, exact = store.recall_error(P, noise=0.1, generator=torch.Generator().manual_seed(1))
    assert exact == 1.0 and bit_err == 0.0
    assert len(store) == store.reliable_capacity


def test_degrades_gracefully_at_capacity_and_fails_far_beyond():
    d = 256
    store = HopfieldMaskStore(d)
    P = patterns(3 * store.capacity, d)
    for p in P[: store.capacity]:
        store.write(p)
    err_at, _ = store.recall_error(P[: store.capacity], noise=0.1, generator=torch.Generator().manual_seed(1))
    for p in P[store.capacity :]:
        store.write(p)
    err_beyond, _ = store.recall_error(P, noise=0.1, generator=torch.Generator().manual_seed(1))
    assert err_at < 0.08 < err_beyond


def test_stored_patterns_are_fixed_points_with_low_energy():
    d = 128
    store = HopfieldMaskStore(d)
    P = 2 * patterns(10, d) - 1
    for p in P:
        store.write(p)
    assert torch.equal(store.recall(P), P)
    random = 2 * patterns(10, d, seed=5) - 1
    assert store.energy(P).mean() < store.energy(random).mean()
    assert store.nbytes() == d * d * 4  # the only state; independent of the number of patterns


def test_gradient_recovery_follows_the_task_objective_into_an_attractor():
    d = 200
    store = HopfieldMaskStore(d)
    P = 2 * patterns(12, d) - 1
    for p in P:
        store.write(p)
    target = P[7]
    hint = torch.where(torch.rand(d, generator=torch.Generator().manual_seed(3)) < 0.3, -target, target)  # 30% wrong

    def objective(v: torch.Tensor) -> torch.Tensor:  # a weak, noisy task signal, like the entropy gradient
        return -(v * hint).sum(-1) * 0.05

    got = store.recover(objective, torch.zeros(1, d), steps=40)
    assert torch.equal(got[0], target)


def test_adam_recovery_does_not_depend_on_the_gradient_scale():
    """An objective near its maximum (an output entropy close to ln C) has tiny gradients: SGD's fixed steps never
    flip a sign of the scores started at the patterns' mean, Adam's steps do, so only Adam reaches the target."""
    d = 200
    store = HopfieldMaskStore(d)
    P = 2 * patterns(6, d) - 1
    for p in P:
        store.write(p)
    target = P[2]
    s0 = P.mean(0, keepdim=True)  # where HopSupSup starts: the superposition of the stored patterns

    def objective(v: torch.Tensor) -> torch.Tensor:
        return -(v * target).sum(-1) * 1e-7

    kw = dict(steps=30, gamma=0.0, straight_through=True)
    sgd = store.recover(objective, s0, lr=10.0, momentum=0.9, optimizer="sgd", **kw)
    adam = store.recover(objective, s0, lr=0.05, optimizer="adam", **kw)
    assert torch.equal(adam[0], target)
    assert not torch.equal(sgd[0], target)
    with pytest.raises(ValueError, match="optimizer"):
        store.recover(objective, s0, optimizer="lbfgs")
