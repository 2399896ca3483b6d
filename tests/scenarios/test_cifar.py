"""CIFAR-10 from a local root in torchvision's python-batch format: read, shaped, split, refused when missing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from agentlab import registry
from agentlab.errors import DataNotFoundError, UserError
from agentlab.scenarios import cifar


def _write_root(root, n_per_batch: int = 20, seed: int = 0):
    """A tiny CIFAR-10 root: five training batches and a test batch of `n_per_batch` images each, as the real files."""
    rng = np.random.default_rng(seed)
    folder = root / cifar.FOLDER
    folder.mkdir(parents=True)
    images = {}
    for name in (*cifar.TRAIN_FILES, *cifar.TEST_FILES):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n_per_batch}, f)
        images[name] = (data, labels)
    with open(folder / cifar.META_FILE, "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in cifar.CLASSES], b"num_vis": 3072}, f)
    return images


def test_reads_the_python_batches_into_images(tmp_path):
    images = _write_root(tmp_path)
    x, y = cifar.load_tensors(tmp_path, train=True)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (100,)
    data, labels = images["data_batch_2"]
    # row 3 of the second file: its red plane is the first 1024 values, row by row
    assert torch.equal(x[20 + 3, 0, 0], torch.from_numpy(data[3, :32]))
    assert torch.equal(x[20 + 3, 2, 31], torch.from_numpy(data[3, 3072 - 32 :]))
    assert y[20 + 3] == labels[3]
    xt, yt = cifar.load_tensors(tmp_path, train=False)
    assert xt.shape == (20, 3, 32, 32)
    batch = next(iter(cifar.load_cifar10(tmp_path).batches(8)))
    assert batch.x.dtype == torch.float32 and 0 <= float(batch.x.min()) and float(batch.x.max()) <= 1


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        cifar.load_tensors(tmp_path / "nothing", train=True)
    msg = str(e.value)
    assert isinstance(e.value, UserError)
    assert all(f in msg for f in ("cifar-10-batches-py/data_batch_1", "data_batch_5", "test_batch", "batches.meta"))
    assert "nothing is downloaded" in msg


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    _write_root(tmp_path)

    class Evil:
        def __reduce__(self):
            return (eval, ("1 + 1",))  # print is no good here: Ray replaces builtins.print in its driver

    with open(tmp_path / cifar.FOLDER / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        cifar.read_batch(tmp_path / cifar.FOLDER / "data_batch_1")


def test_streams_from_the_registry(tmp_path):
    _write_root(tmp_path, n_per_batch=40)
    env = registry.BuildEnv(data_root=tmp_path)
    one = registry.build("stream", {"name": "cifar10", "max_per_task": 50}, env)
    assert one.input_shape == (3, 32, 32) and one.n_classes == 10 and len(one) == 1
    assert len(one[0].train) == 50 and len(one[0].eval) == 40
    split = registry.build("stream", {"name": "split-cifar10", "scenario": "class"}, env)
    assert len(split) == 5 and split.n_classes == 10
    t = split[2]
    assert t.classes == (4, 5) and set(t.train.y.tolist()) == {4, 5} and len(t.train) == 40
    dom = registry.build("stream", {"name": "split-cifar10", "scenario": "domain"}, env)
    assert set(dom[2].train.y.tolist()) == {0, 1}


def test_the_command_line_names_the_missing_files_and_exits_2(tmp_path, capsys):
    from agentlab.cli import main

    rc = main(["run", "vit-cifar10", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cifar-10-batches-py/data_batch_1" in err and "Traceback" not in err
    assert not (tmp_path / "empty").exists()  # nothing written outside the run's directory
