"""Splits batch every example once, apply transforms lazily; replay buffers respect capacity and balance."""

import torch

from agentlab.data import Split, class_subset, concat_splits
from agentlab.learners.replay import ReplayBuffer


def test_batches_cover_every_example_once_and_apply_transform():
    s = Split(torch.arange(10.0).unsqueeze(1), torch.arange(10), transform=lambda x: -x)
    g = torch.Generator().manual_seed(0)
    batches = list(s.batches(3, shuffle=True, generator=g))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    ys = torch.cat([b.y for b in batches])
    assert sorted(ys.tolist()) == list(range(10))
    xs = torch.cat([b.x for b in batches]).squeeze(1)
    assert torch.equal(xs, -ys.float())  # transform applied when drawn, base tensor untouched
    assert s.x[3, 0] == 3.0


def test_same_seed_same_order():
    s = Split(torch.zeros(20, 1), torch.arange(20))
    a = [b.y.tolist() for b in s.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1))]
    b = [b.y.tolist() for b in s.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert a == b


def test_class_subset_and_concat_keep_task_ids():
    s = Split(torch.zeros(6, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
    sub = class_subset(s, (0, 2))
    assert sub.y.tolist() == [0, 2, 0, 2]
    c = concat_splits([sub, class_subset(s, (1,))], [0, 1])
    assert c.task_ids.tolist() == [0, 0, 0, 0, 1, 1]
    b = next(c.batches(6))
    assert b.extra["task_ids"].tolist() == [0, 0, 0, 0, 1, 1]


def test_reservoir_never_exceeds_capacity_and_samples_uniformly():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for trial in range(40):
        buf = ReplayBuffer(20, "reservoir")
        for c in range(10):  # 10 "tasks" of 50 examples of one class each
            buf.add(torch.zeros(50, 2), torch.full((50,), c), c, g)
            assert len(buf) <= 20
        counts += torch.bincount(buf.y[: len(buf)], minlength=10)
    share = counts / counts.sum()
    assert (share - 0.1).abs().max() < 0.05  # uniform over the stream, not biased to the newest


def test_class_balanced_keeps_classes_even():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(30, "class_balanced")
    for c in range(5):
        buf.add(torch.zeros(100, 2), torch.full((100,), c), c, g)
    counts = torch.bincount(buf.y[: len(buf)], minlength=5)
    assert len(buf) == 30 and counts.min() >= 5 and counts.max() <= 7


def test_buffer_state_round_trip():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(8, "reservoir")
    buf.add(torch.randn(12, 3), torch.arange(12) % 3, 0, g)
    other = ReplayBuffer(8, "reservoir")
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.x[: len(other)], buf.x[: len(buf)]) and other.seen == 12
