"""Episode sampler, rotation classes, the MANN sequential protocol, by-sighting accuracy and the 95% CI."""

from __future__ import annotations

import math

import pytest
import torch

from agentlab.scenarios.episodes import (
    ClassPool, EpisodeSampler, EpisodeSet, accuracy_by_sighting, mean_ci95, sequential_episode, stack_sequential,
)


def _pool(rotations=(0,), n_classes=12, per_class=20) -> ClassPool:
    """Each image is unique: pixel values encode (example index), and the image is asymmetric so rotations differ."""
    n = n_classes * per_class
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % n_classes
    return ClassPool(x, y, rotations=rotations)


def _rows(pool: ClassPool, images: torch.Tensor) -> list[int]:
    """Row of `pool.x` each (unrotated) image came from."""
    flat = pool.x.flatten(1)
    return [int((flat == im.flatten()).all(1).nonzero()[0]) for im in images]


def test_sampler_counts_labels_and_no_support_query_overlap():
    pool = _pool()
    ep = EpisodeSampler(pool, ways=5, shots=3, queries=4).sample(torch.Generator().manual_seed(1))
    assert ep.support_x.shape == (15, 1, 6, 6) and ep.query_x.shape == (20, 1, 6, 6)
    assert ep.support_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert torch.bincount(ep.query_y).tolist() == [4] * 5
    assert len(set(ep.classes.tolist())) == 5
    s_rows, q_rows = _rows(pool, ep.support_x), _rows(pool, ep.query_x)
    assert not set(s_rows) & set(q_rows) and len(set(s_rows)) == 15 and len(set(q_rows)) == 20
    base = torch.arange(pool.x.shape[0]) % 12
    for rows, labels in ((s_rows, ep.support_y), (q_rows, ep.query_y)):
        assert [int(ep.classes[l]) for l in labels] == [int(base[r]) for r in rows]  # label n = pool class classes[n]


def test_episode_set_is_deterministic_by_seed_and_order_free():
    pool = _pool()
    a = EpisodeSet(pool, 4, seed=7, ways=3, shots=1, queries=2)
    b = EpisodeSet(pool, 4, seed=7, ways=3, shots=1, queries=2)
    c = EpisodeSet(pool, 4, seed=8, ways=3, shots=1, queries=2)
    assert a[3].query_x.equal(b[3].query_x) and a[0].classes.equal(b[0].classes)
    assert [e.support_x for e in b][::-1][0].equal(a[3].support_x)  # access order does not matter
    assert not all(a[i].support_x.equal(c[i].support_x) for i in range(4))
    shifted = EpisodeSet(pool, 2, seed=7, ways=3, shots=1, queries=2, start=2)
    assert shifted[0].query_x.equal(a[2].query_x)


def test_rotation_classes_are_turned_copies():
    pool = _pool(rotations=(0, 1, 2, 3), n_classes=3, per_class=4)
    assert pool.n_classes == 12
    g = torch.Generator().manual_seed(0)
    for c in range(12):
        keys = pool.pick(c, 4, g)
        base, turns = divmod(c, 4)
        assert (keys[:, 0] % 3 == base).all() and (keys[:, 1] == turns).all()
        imgs = pool.images(keys)
        assert imgs.equal(torch.rot90(pool.x[keys[:, 0]], turns, dims=(-2, -1)))
    assert not torch.rot90(pool.x[0], 1, dims=(-2, -1)).equal(pool.x[0])


def test_sequential_protocol_shows_label_one_step_later():
    pool = _pool()
    ep = sequential_episode(pool, ways=5, per_class=6, generator=torch.Generator().manual_seed(3))
    T = 30
    assert ep.x.shape == (T, 1, 6, 6) and ep.prev_label.shape == (T, 5)
    assert ep.prev_label[0].sum() == 0
    assert ep.prev_label[1:].argmax(-1).equal(ep.y[:-1]) and (ep.prev_label[1:].sum(-1) == 1).all()
    assert torch.bincount(ep.y).tolist() == [6] * 5
    for t in range(T):  # sighting = how often this class appeared before step t
        assert int(ep.sighting[t]) == int((ep.y[:t] == ep.y[t]).sum())
    inp = ep.model_input()
    assert inp.shape == (T, 36 + 5) and inp[:, 36:].equal(ep.prev_label)
    again = sequential_episode(pool, ways=5, per_class=6, generator=torch.Generator().manual_seed(3))
    assert again.y.equal(ep.y) and again.x.equal(ep.x)


def test_labels_are_shuffled_per_episode():
    pool = _pool()
    eps = EpisodeSet(pool, 20, seed=0, ways=5, protocol="sequential", per_class=2)
    first_class_of_label0 = {int(e.classes[0]) for e in eps}
    assert len(first_class_of_label0) > 3  # label 0 means a different class in different episodes


def test_sampler_refuses_impossible_sizes():
    pool = _pool(per_class=5)
    with pytest.raises(ValueError, match="smallest class"):
        EpisodeSampler(pool, ways=3, shots=3, queries=3)
    with pytest.raises(ValueError, match="classes"):
        EpisodeSampler(pool, ways=13, shots=1, queries=1).sample(torch.Generator())


def test_accuracy_by_sighting_and_ci95_by_hand():
    correct = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    sighting = torch.tensor([0, 0, 1, 1, 2])
    hits, counts = accuracy_by_sighting(correct, sighting, 3)
    assert hits.tolist() == [1.0, 1.0, 1.0] and counts.tolist() == [2.0, 2.0, 1.0]
    m, h = mean_ci95([0.9, 1.0, 0.8, 1.0])
    sd = math.sqrt(((0.9 - 0.925) ** 2 + 0.075**2 + 0.125**2 + 0.075**2) / 3)
    assert m == pytest.approx(0.925) and h == pytest.approx(1.96 * sd / 2)
    assert mean_ci95([0.5]) == (0.5, 0.0)


def test_stack_sequential_batches_episodes():
    eps = list(EpisodeSet(_pool(), 3, seed=0, ways=4, protocol="sequential", per_class=2))
    b = stack_sequential(eps)
    assert b["x"].shape == (3, 8, 1, 6, 6) and b["inputs"].shape == (3, 8, 40) and b["y"][1].equal(eps[1].y)
