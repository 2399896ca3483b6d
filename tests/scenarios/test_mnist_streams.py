"""MNIST-family streams: shapes and classes per scenario, laziness, Avalanche agreement, missing data."""

from __future__ import annotations

import pytest
import torch

from agentlab.errors import DataNotFoundError
from agentlab.registry import BuildEnv, build
from agentlab.scenarios.mnist import permuted_mnist, rotated_mnist, split_fashion, split_mnist, task_permutation
from agentlab.scenarios.vision_data import load_tensors


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_mnist_scenarios(data_root, scenario):
    s = split_mnist(data_root, scenario=scenario, max_per_task=40, max_eval_per_task=20)
    assert len(s) == 5 and s.scenario == scenario and s.input_shape == (1, 28, 28)
    assert s.n_classes == (2 if scenario == "domain" else 10)
    for i, t in enumerate(s):
        x, y = t.train.all()
        assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert len(t.eval) == 20
        assert t.meta["original_classes"] == [2 * i, 2 * i + 1]
        assert t.task_label_at_test == (scenario == "task")
        expect = (0, 1) if scenario == "domain" else (2 * i, 2 * i + 1)
        assert t.classes == expect and set(y.tolist()) <= set(expect)


def test_split_tasks_are_avalanches(data_root):
    """Full tasks hold exactly the examples of their classes (Avalanche's class_incremental_benchmark)."""
    s = split_mnist(data_root, scenario="class", class_order=[3, 7, 0, 1, 2, 4, 5, 6, 8, 9])
    _, y = load_tensors("mnist", data_root, train=True)
    t0 = s[0]
    assert t0.classes == (3, 7)
    assert len(t0.train) == int(((y == 3) | (y == 7)).sum())
    assert set(t0.train.y.tolist()) == {3, 7}


def test_split_fashion_task(data_root):
    s = split_fashion(data_root, scenario="task", max_per_task=10, max_eval_per_task=10)
    assert s.name == "split-fashion-task" and len(s) == 5
    assert s[4].classes == (8, 9)


def test_loaded_once_per_process(data_root):
    a = load_tensors("mnist", data_root, train=True)
    b = load_tensors("mnist", data_root, train=True)
    assert a[0] is b[0] and a[0].shape == (60000, 1, 28, 28) and a[0].dtype == torch.uint8


def test_permuted_mnist_2500_tasks_share_one_copy(data_root):
    s = permuted_mnist(data_root, n_tasks=2500, max_eval_per_task=100)
    assert len(s) == 2500
    tasks = [s[i] for i in range(0, 2500, 1)]  # all alive at once
    base = {t.train.x.untyped_storage().data_ptr() for t in tasks}
    assert len(base) == 1, "every task must view the same MNIST tensor, not a copy"
    assert len({t.eval.x.untyped_storage().data_ptr() for t in tasks}) == 1
    own = sum(t.train.transform.perm.numel() * 8 for t in tasks)
    assert own < 20e6  # 2,500 permutations, not 2,500 x 188 MB of images
    # the same task twice is the same task; two tasks differ
    assert torch.equal(s[2499].train.transform.perm, s[2499].train.transform.perm)
    assert not torch.equal(s[0].train.transform.perm, s[1].train.transform.perm)


def test_permutation_matches_avalanche_pixels_permutation(data_root):
    from avalanche.benchmarks.classic.cmnist import PixelsPermutation

    s = permuted_mnist(data_root, n_tasks=3, max_per_task=8, max_eval_per_task=8)
    t = s[2]
    x, _ = t.train.all()
    raw = t.train.x.float() / 255
    ref = torch.stack([PixelsPermutation(task_permutation(0, 2))(img) for img in raw])
    assert torch.equal(x, ref)


def test_permuted_mnist_padded_to_32_permutes_the_padding_too(data_root):
    """pad=2: van de Ven & Tolias's 32 x 32 images; the unpermuted task is the image inside a black frame,
    a permuted task holds the same pixel values (the 1024 - 784 zeros of the frame included) in new places."""
    s = permuted_mnist(data_root, n_tasks=2, pad=2, first_unpermuted=True, max_per_task=8, max_eval_per_task=8)
    assert s.input_shape == (1, 32, 32)
    plain = permuted_mnist(data_root, n_tasks=1, first_unpermuted=True, max_per_task=8, max_eval_per_task=8)[0]
    x0, _ = s[0].train.all()
    x1, _ = s[1].train.all()
    raw, _ = plain.train.all()
    assert x0.shape == x1.shape == (8, 1, 32, 32)
    assert torch.equal(x0[:, :, 2:30, 2:30], raw) and float(x0[:, :, :2].abs().sum()) == 0.0
    assert not torch.equal(x1, x0)
    assert torch.equal(x1.flatten(1).sort(1).values, x0.flatten(1).sort(1).values)
    assert s[1].name != plain.name


def test_permuted_class_scenario_offsets_labels(data_root):
    s = permuted_mnist(data_root, n_tasks=3, scenario="class", max_per_task=20, max_eval_per_task=5, first_unpermuted=True)
    assert s.n_classes == 30 and s[2].classes == tuple(range(20, 30))
    assert int(s[2].train.y.min()) >= 20
    x, _ = s[0].train.all()
    assert torch.equal(x, s[0].train.x.float() / 255)  # task 0 unpermuted


def test_rotated_mnist_rotates(data_root):
    s = rotated_mnist(data_root, angles=[0, 90], max_per_task=16, max_eval_per_task=4)
    x0, _ = s[0].train.all()
    x1, _ = s[1].train.all()
    assert torch.allclose(x1, torch.rot90(x0, 1, dims=(-2, -1)), atol=1e-4)
    assert s[1].name.endswith("rot90")


def test_streams_build_by_name(data_root):
    env = BuildEnv(data_root=data_root)
    for name in ("split-mnist", "split-fashion", "permuted-mnist", "rotated-mnist"):
        s = build("stream", {"name": name, "max_per_task": 10, "max_eval_per_task": 10}, env)
        assert len(s[0].train) == 10


def test_missing_files_name_them(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        split_mnist(tmp_path / "empty")
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "--data-root" in msg
    assert "Traceback" not in msg
