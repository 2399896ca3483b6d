"""The plain-PyTorch Split MNIST checks (`split-domain-plain`, `split-task-plain`): Fisher, tasks, methods, heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentlab.bench.split_plain import fisher, pair_tasks, run_seed


@pytest.mark.parametrize("units", [slice(None), slice(2, 4)])
def test_fisher_equals_per_example_gradients_squared(units):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2 if units == slice(None) else 6))
    x = torch.randn(50, 20)
    slow = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xi in x:  # their loop: batch size 1, label = the model's prediction among the task's units
        out = model(xi[None])[:, units]
        model.zero_grad()
        F.cross_entropy(out, out.argmax(1)).backward()
        for n, p in model.named_parameters():
            slow[n] += p.grad**2
    fast = fisher(model, x, units)
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n] / 49, rtol=1e-5, atol=1e-7)


def test_pair_tasks_follow_the_order_with_the_first_digit_as_label_0():
    y = torch.arange(10).repeat(3)
    x = torch.zeros(30, 1, 28, 28, dtype=torch.uint8) + y.view(-1, 1, 1, 1).to(torch.uint8)
    tasks = pair_tasks(x, y, [4, 6, 0, 5, 3, 9, 2, 7, 8, 1])
    xs, ys = tasks[0]
    assert xs.shape == (6, 784) and sorted(set((xs[:, 0] * 255).round().int().tolist())) == [4, 6]
    assert ys.tolist() == [int(d == 6) for d in (xs[:, 0] * 255).round().int().tolist()]


def _tiny_tasks(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(300, 784, generator=g), torch.randint(0, 2, (300,), generator=g)) for _ in range(5)]


def test_methods_reduce_to_fine_tuning_at_strength_zero_and_differ_otherwise():
    train, test = _tiny_tasks(0), _tiny_tasks(1)
    plain = run_seed("finetune", 3, train, test, iters=5, strength=0.0)
    assert run_seed("si", 3, train, test, iters=5, strength=0.0) == plain
    assert run_seed("ewc", 3, train, test, iters=5, strength=0.0) == plain
    assert run_seed("si", 3, train, test, iters=5, strength=1e6) != plain
    assert run_seed("ewc", 3, train, test, iters=5, strength=1e9) != plain


def test_multi_head_is_a_different_model_from_the_shared_head():
    train, test = _tiny_tasks(0), _tiny_tasks(1)
    shared = run_seed("finetune", 3, train, test, iters=5, strength=0.0)
    heads = run_seed("finetune", 3, train, test, iters=5, strength=0.0, multi_head=True)
    assert len(heads) == 5 and heads != shared
