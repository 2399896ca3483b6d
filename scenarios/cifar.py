"""CIFAR-10 from the data root, in torchvision's format, never downloaded.

    root/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta

Each batch file is a pickled dict with b"data" (10000, 3072) uint8 (the red, green and blue
planes of 32 x 32 images, row by row) and b"labels" (10000 ints) - the files torchvision's
`CIFAR10(root)` extracts from cifar-10-python.tar.gz. They are read with an unpickler that only
accepts numpy arrays, lists, dicts, bytes and numbers (a pickle can run code; these files need
none). Missing files raise `DataNotFoundError` naming each one.

    load_cifar10(root, train=True) -> Split      x (N, 3, 32, 32) uint8 -> floats in [0, 1] per batch

Streams: `cifar10` (one 10-class task) and `split-cifar10` (5 tasks of 2 classes; task-, domain-
or class-incremental, the keys of `split-mnist`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agentlab.config import check
from agentlab.data import Split
from agentlab.datasets import data_root, require_files
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.mnist import SplitVisionConfig, cap
from agentlab.scenarios.splits import class_task
from agentlab.scenarios.vision_data import ToUnitFloat
from agentlab.task import LazyStream, Task

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
INPUT_SHAPE = (3, 32, 32)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CACHE: dict[tuple[str, bool], tuple[Tensor, Tensor]] = {}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; refuses every other global (no code runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch files hold arrays only; refusing to load {module}.{name}")


def expected_files(root: Path | str) -> list[str]:
    """The batch files a loader needs, relative to the data root."""
    return [f"{FOLDER}/{f}" for f in (*TRAIN_FILES, *TEST_FILES, META_FILE)]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 3072) uint8, labels (N,) int64) of one batch file."""
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="bytes").load()
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"] if b"labels" in d else d[b"fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data, labels


def load_tensors(root: Path | str, train: bool = True) -> tuple[Tensor, Tensor]:
    """`(x (N, 3, 32, 32) uint8, y (N,) int64)`, cached per process."""
    root = Path(root).expanduser()
    key = (str(root.resolve()), bool(train))
    if key not in _CACHE:
        require_files(root, expected_files(root), dataset="CIFAR-10",
                      hint="extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into the data root, "
                           "as torchvision's CIFAR10(root) does; nothing is downloaded")
        parts = [read_batch(root / FOLDER / f) for f in (TRAIN_FILES if train else TEST_FILES)]
        data = np.concatenate([p[0] for p in parts])
        x = rearrange(torch.from_numpy(data), "n (c h w) -> n c h w", c=3, h=32).contiguous()  # (N, 3, 32, 32)
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        _CACHE[key] = (x, y)
    return _CACHE[key]


def load_cifar10(root: Path | str, train: bool = True) -> Split:
    """A `Split` over the cached uint8 images whose batches come out as float in [0, 1]."""
    x, y = load_tensors(root, train)
    return Split(x, y, ToUnitFloat())


@dataclass(frozen=True)
class CIFAR10Config:
    """CIFAR-10 as one 10-class task."""

    max_per_task: int = 0
    """training examples kept (a fixed random subset); 0 = all 50,000"""
    max_eval_per_task: int = 0
    """test examples kept; 0 = all 10,000"""
    subset_seed: int = 0
    """seed of the subsets"""

    def __post_init__(self) -> None:
        check(self.max_per_task >= 0, "max_per_task", self.max_per_task, "an integer >= 0")
        check(self.max_eval_per_task >= 0, "max_eval_per_task", self.max_eval_per_task, "an integer >= 0")


def cifar10_stream(root: Path | str, cfg: CIFAR10Config = CIFAR10Config()) -> LazyStream:
    xtr, ytr = load_tensors(root, True)
    xte, yte = load_tensors(root, False)
    itr = cap(torch.arange(ytr.shape[0]), cfg.max_per_task, cfg.subset_seed)
    ite = cap(torch.arange(yte.shape[0]), cfg.max_eval_per_task, cfg.subset_seed + 1)

    def make(i: int) -> Task:
        return Task(id=0, name="cifar10", kind="classification", train=Split(xtr[itr], ytr[itr], ToUnitFloat()),
                    eval=Split(xte[ite], yte[ite], ToUnitFloat()), classes=tuple(range(10)))

    return LazyStream("cifar10", "class", 1, make, n_classes=10, input_shape=INPUT_SHAPE, meta={"dataset": "cifar10"})


def split_cifar10(root: Path | str, cfg: SplitVisionConfig = SplitVisionConfig()) -> LazyStream:
    """CIFAR-10 in tasks of `classes_per_task` classes of `class_order`, in the scenario's form."""
    xtr, ytr = load_tensors(root, True)
    xte, yte = load_tensors(root, False)
    per = cfg.classes_per_task
    order = list(cfg.class_order)
    name = f"split-cifar10-{cfg.scenario}"

    def make(i: int) -> Task:
        classes = tuple(order[i * per : (i + 1) * per])
        itr = cap(torch.isin(ytr, torch.tensor(classes)).nonzero().squeeze(1), cfg.max_per_task, cfg.subset_seed * 1000 + i)
        ite = cap(torch.isin(yte, torch.tensor(classes)).nonzero().squeeze(1), cfg.max_eval_per_task,
                  cfg.subset_seed * 1000 + 500 + i)
        tr, te = Split(xtr[itr], ytr[itr], ToUnitFloat()), Split(xte[ite], yte[ite], ToUnitFloat())
        return class_task(name, i, tr, te, classes, cfg.scenario, 10)

    return LazyStream(name, cfg.scenario, 10 // per, make, n_classes=per if cfg.scenario == "domain" else 10,
                      input_shape=INPUT_SHAPE, meta={"dataset": "cifar10", "class_order": order})


@register("stream", "cifar10", CIFAR10Config)
def build_cifar10(cfg: CIFAR10Config, env: BuildEnv) -> LazyStream:
    """CIFAR-10 (32x32 colour) as one task, read from the data root's python batches (never downloaded)."""
    return cifar10_stream(data_root(env.data_root), cfg)


@register("stream", "split-cifar10", SplitVisionConfig)
def build_split_cifar10(cfg: SplitVisionConfig, env: BuildEnv) -> LazyStream:
    """CIFAR-10 in 5 tasks of 2 classes, task-/domain-/class-incremental, from the data root's python batches."""
    return split_cifar10(data_root(env.data_root), cfg)
