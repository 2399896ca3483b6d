"""MNIST-family streams: Split MNIST, Split Fashion-MNIST, Permuted MNIST, Rotated MNIST.

Stream names (recipes) and Python functions:

    split-mnist      split_mnist(root, scenario="class")        5 tasks x 2 digits
    split-fashion    split_fashion(root, scenario="class")      5 tasks x 2 garments
    permuted-mnist   permuted_mnist(root, n_tasks=10)           any number of pixel permutations
    rotated-mnist    rotated_mnist(root, n_tasks=10)            any number of rotations

How Avalanche is used, and where it is not (the issue asks for Avalanche's own
benchmark API):

* Split streams are built by Avalanche's `class_incremental_benchmark`: it is
  given datasets of example *indices* with their labels, so the experiences it
  returns say which MNIST examples go in which task. We read those indices once
  (0.3 s per experience) and each task is then a tensor `Split` over them, so our
  training loop slices tensors instead of collating items through a DataLoader.
  The tasks are, example for example, Avalanche's.
* Permuted and Rotated MNIST are built lazily here, not by Avalanche's
  `PermutedMNIST` / `RotatedMNIST` generators: those build every experience up
  front (an `AvalancheDataset` per task, so 2,500 tasks cost minutes and
  grow memory with the length) and transform images one at a time through PIL.
  Ours draw task i's permutation (or angle) from the seed pair `(seed, i)` when
  task i is built, and apply it per batch to the one shared uint8 copy of MNIST.
  Applying Avalanche's `PixelsPermutation` with our permutation gives the same
  images (a test checks it); `agentlab.avalanche_bridge.to_avalanche` turns
  any of these streams into an Avalanche benchmark when a user wants one.

Every stream has `max_per_task` / `max_eval_per_task` keys (0 = all) that keep a
fixed random subset of each task, for tests and quick benchmark modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agentlab.config import check
from agentlab.data import Split
from agentlab.datasets import data_root
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.splits import class_task
from agentlab.scenarios.vision_data import ToUnitFloat, load_tensors
from agentlab.task import LazyStream, Task

# Axis legend: b = batch, c = channel, h/w = image rows/columns, p = pixels (h * w).
INPUT_SHAPE = (1, 28, 28)


def cap(index: Tensor, k: int, seed: int) -> Tensor:
    """At most `k` of `index`, a fixed random choice by `seed` (k = 0: all), in their original order."""
    if not k or index.shape[0] <= k:
        return index
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(index.shape[0], generator=g)[:k]
    return index[keep.sort().values]


# ----------------------------------------------------------------------------- split streams


@dataclass(frozen=True)
class SplitVisionConfig:
    """Split MNIST / Fashion-MNIST into tasks of a few classes (van de Ven & Tolias 2019)."""

    scenario: Literal["task", "domain", "class"] = "class"
    """task-, domain- or class-incremental"""
    classes_per_task: int = 2
    """classes in each task (10 must divide by it; 2 gives the usual 5 tasks)"""
    class_order: list[int] = field(default_factory=lambda: list(range(10)))
    """the order in which classes arrive"""
    max_per_task: int = 0
    """training examples kept per task (a fixed random subset); 0 = all"""
    max_eval_per_task: int = 0
    """test examples kept per task; 0 = all"""
    subset_seed: int = 0
    """seed of the subsets (apart from the run seed, so every run sees the same examples)"""

    def __post_init__(self) -> None:
        check(self.classes_per_task in (1, 2, 5, 10), "classes_per_task", self.classes_per_task, "one of 1, 2, 5, 10")
        check(sorted(self.class_order) == list(range(10)), "class_order", self.class_order, "a permutation of 0..9")
        check(self.max_per_task >= 0, "max_per_task", self.max_per_task, "an integer >= 0")
        check(self.max_eval_per_task >= 0, "max_eval_per_task", self.max_eval_per_task, "an integer >= 0")


def avalanche_class_split(y_train: Tensor, y_test: Tensor, class_order: list[int], n_tasks: int) -> list[tuple[Tensor, Tensor, tuple[int, ...]]]:
    """(train indices, test indices, classes) per experience of Avalanche's `class_incremental_benchmark`."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    datasets = {
        "train": tensor_dataset(torch.arange(y_train.shape[0]), y_train),
        "test": tensor_dataset(torch.arange(y_test.shape[0]), y_test),
    }
    bm = class_incremental_benchmark(datasets, class_order=list(class_order), num_experiences=n_tasks)
    per = n_tasks and len(class_order) // n_tasks
    out = []
    for i, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        idx = [torch.cat([b[0] for b in torch.utils.data.DataLoader(e.dataset, batch_size=8192)]).sort().values for e in (tr, te)]
        out.append((idx[0], idx[1], tuple(class_order[i * per : (i + 1) * per])))
    return out


_SPLITS: dict[tuple[int, int, tuple[int, ...], int], list[tuple[Tensor, Tensor, tuple[int, ...]]]] = {}


def split_stream(dataset: str, root: Path | str, cfg: SplitVisionConfig) -> LazyStream:
    """Build `split-mnist` / `split-fashion` from a checked config (Avalanche's split is cached per process)."""
    xtr, ytr = load_tensors(dataset, root, train=True)
    xte, yte = load_tensors(dataset, root, train=False)
    n_tasks = 10 // cfg.classes_per_task
    key = (id(ytr), id(yte), tuple(cfg.class_order), n_tasks)  # the label tensors are cached for the process too
    if key not in _SPLITS:
        _SPLITS[key] = avalanche_class_split(ytr, yte, cfg.class_order, n_tasks)
    parts = _SPLITS[key]
    name = {"mnist": "split-mnist", "fashion": "split-fashion"}[dataset]
    to_float = ToUnitFloat()

    def make(i: int) -> Task:
        itr, ite, classes = parts[i]
        itr = cap(itr, cfg.max_per_task, cfg.subset_seed * 1000 + i)
        ite = cap(ite, cfg.max_eval_per_task, cfg.subset_seed * 1000 + 500 + i)
        tr, te = Split(xtr[itr], ytr[itr], to_float), Split(xte[ite], yte[ite], to_float)
        return class_task(f"{name}-{cfg.scenario}", i, tr, te, classes, cfg.scenario, 10)

    return LazyStream(
        f"{name}-{cfg.scenario}", cfg.scenario, n_tasks, make,
        n_classes=cfg.classes_per_task if cfg.scenario == "domain" else 10, input_shape=INPUT_SHAPE,
        meta={"dataset": dataset, "class_order": list(cfg.class_order), "built_by": "avalanche.class_incremental_benchmark"},
    )


def split_mnist(root: Path | str, **config: Any) -> LazyStream:
    """Split MNIST (5 x 2 digits); keys as `SplitVisionConfig`, e.g. `split_mnist(root, scenario="task")`."""
    return split_stream("mnist", root, SplitVisionConfig(**config))


def split_fashion(root: Path | str, **config: Any) -> LazyStream:
    """Split Fashion-MNIST (5 x 2 garments); keys as `SplitVisionConfig`."""
    return split_stream("fashion", root, SplitVisionConfig(**config))


@register("stream", "split-mnist", SplitVisionConfig)
def build_split_mnist(cfg: SplitVisionConfig, env: BuildEnv) -> LazyStream:
    """MNIST in 5 tasks of 2 digits, task-/domain-/class-incremental (built by Avalanche)."""
    return split_stream("mnist", data_root(env.data_root), cfg)


@register("stream", "split-fashion", SplitVisionConfig)
def build_split_fashion(cfg: SplitVisionConfig, env: BuildEnv) -> LazyStream:
    """Fashion-MNIST in 5 tasks of 2 garments, task-/domain-/class-incremental (built by Avalanche)."""
    return split_stream("fashion", data_root(env.data_root), cfg)


# ----------------------------------------------------------------------------- transformed streams


def task_rng(seed: int, i: int) -> np.random.Generator:
    """Task i's own generator: independent of every other task, so task i is built without tasks < i."""
    return np.random.default_rng([seed, i])


def task_permutation(seed: int, i: int, side: int = INPUT_SHAPE[1]) -> Tensor:
    """The pixel permutation (side², 784 by default) of task i."""
    return torch.from_numpy(task_rng(seed, i).permutation(side * side)).long()


# MNIST's training-set pixel mean and standard deviation (the usual Normalize((0.1307,), (0.3081,))).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class PermutePixels:
    """uint8 images (b, 1, 28, 28) -> floats in [0, 1] (or standardised) with pixel p moved from position perm[p];
    with `pad`, the images get `pad` rows and columns of black on every side first (28 + 2 pad square), and
    the permutation moves the padding too (van de Ven & Tolias's code pads MNIST to 32 x 32, then permutes)."""

    def __init__(self, perm: Tensor | None, normalize: bool = False, pad: int = 0) -> None:
        self.perm = perm  # (p,) or None for the unpermuted task
        self.normalize = normalize
        self.pad = pad
        self.to_float = ToUnitFloat()

    def __call__(self, x: Tensor) -> Tensor:
        x = self.to_float(x)
        if self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
        if self.normalize:
            x = (x - MNIST_MEAN) / MNIST_STD
        if self.perm is None:
            return x
        flat = rearrange(x, "b c h w -> b c (h w)")[..., self.perm]
        return rearrange(flat, "b c (h w) -> b c h w", h=x.shape[-2])


class RotateImages:
    """uint8 images (b, 1, 28, 28) -> floats in [0, 1] rotated by `angle` degrees (bilinear, zero fill)."""

    def __init__(self, angle: float) -> None:
        self.angle = float(angle)
        self.to_float = ToUnitFloat()

    def __call__(self, x: Tensor) -> Tensor:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        x = self.to_float(x)
        if self.angle == 0.0:
            return x
        return TF.rotate(x, self.angle, interpolation=InterpolationMode.BILINEAR)


@dataclass(frozen=True)
class PermutedMNISTConfig:
    """MNIST under a different fixed pixel permutation per task (Goodfellow et al. 2013; Kirkpatrick et al. 2017)."""

    n_tasks: int = 10
    """number of tasks (any number: permutations are drawn when their task is built)"""
    scenario: Literal["task", "domain", "class"] = "domain"
    """domain: 10 shared outputs; task: task label given; class: 10 new outputs per task"""
    seed: int = 0
    """permutation seed: task i's permutation comes from the pair (seed, i)"""
    first_unpermuted: bool = False
    """task 0 is plain MNIST (as in van de Ven & Tolias 2019's code)"""
    pad: int = 0
    """black pixels added on every side before permuting: 2 gives the 32 x 32 images of van de Ven & Tolias's code"""
    normalize: bool = False
    """standardise pixels with MNIST's mean 0.1307 and std 0.3081 (as SupSup's reference code); false = [0, 1]"""
    max_per_task: int = 0
    """training examples kept per task (the same random subset for every task); 0 = all 60,000"""
    max_eval_per_task: int = 0
    """test examples kept per task; 0 = all 10,000"""
    subset_seed: int = 0
    """seed of the subsets"""

    def __post_init__(self) -> None:
        check(self.n_tasks >= 1, "n_tasks", self.n_tasks, "an integer >= 1")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(0 <= self.pad <= 16, "pad", self.pad, "an integer in [0, 16]")
        check(self.max_per_task >= 0, "max_per_task", self.max_per_task, "an integer >= 0")
        check(self.max_eval_per_task >= 0, "max_eval_per_task", self.max_eval_per_task, "an integer >= 0")


@dataclass(frozen=True)
class RotatedMNISTConfig:
    """MNIST rotated by a different fixed angle per task."""

    n_tasks: int = 0
    """number of tasks; 0 = one per angle in `angles`, else 10"""
    angles: list[float] = field(default_factory=list)
    """one angle in degrees per task; empty = evenly spaced, i * max_angle / n_tasks"""
    max_angle: float = 180.0
    """the span of the evenly spaced angles"""
    scenario: Literal["task", "domain", "class"] = "domain"
    """domain: 10 shared outputs; task: task label given; class: 10 new outputs per task"""
    max_per_task: int = 0
    """training examples kept per task; 0 = all"""
    max_eval_per_task: int = 0
    """test examples kept per task; 0 = all"""
    subset_seed: int = 0
    """seed of the subsets"""

    def __post_init__(self) -> None:
        if self.n_tasks == 0:
            object.__setattr__(self, "n_tasks", len(self.angles) or 10)
        check(self.n_tasks >= 1, "n_tasks", self.n_tasks, "an integer >= 0")
        check(not self.angles or len(self.angles) == self.n_tasks, "angles", self.angles, f"empty or {self.n_tasks} angles (one per task)")
        check(all(-360 <= a <= 360 for a in self.angles), "angles", self.angles, "angles in [-360, 360]")
        check(self.max_per_task >= 0, "max_per_task", self.max_per_task, "an integer >= 0")
        check(self.max_eval_per_task >= 0, "max_eval_per_task", self.max_eval_per_task, "an integer >= 0")


def transformed_stream(
    name: str, root: Path | str, cfg: Any, transform_of: Any, describe: Any, input_shape: tuple[int, ...] = INPUT_SHAPE
) -> LazyStream:
    """Tasks sharing one uint8 copy of MNIST, task i seen through `transform_of(i)` (built on demand)."""
    xtr, ytr = load_tensors("mnist", root, train=True)
    xte, yte = load_tensors("mnist", root, train=False)
    itr = cap(torch.arange(ytr.shape[0]), cfg.max_per_task, cfg.subset_seed)
    ite = cap(torch.arange(yte.shape[0]), cfg.max_eval_per_task, cfg.subset_seed + 1)
    if itr.shape[0] < ytr.shape[0]:
        xtr, ytr = xtr[itr], ytr[itr]  # one smaller copy, shared by every task
    if ite.shape[0] < yte.shape[0]:
        xte, yte = xte[ite], yte[ite]
    scenario = cfg.scenario

    def make(i: int) -> Task:
        t = transform_of(i)
        offset = 10 * i if scenario == "class" else 0
        classes = tuple(range(offset, offset + 10))
        ytr_i, yte_i = (ytr + offset, yte + offset) if offset else (ytr, yte)
        return Task(
            id=i, name=f"{name}/{describe(i)}", kind="classification",
            train=Split(xtr, ytr_i, t), eval=Split(xte, yte_i, t),
            classes=classes, task_label_at_test=scenario == "task", meta={"transform": describe(i)},
        )

    n_classes = 10 * cfg.n_tasks if scenario == "class" else 10
    return LazyStream(f"{name}-{cfg.n_tasks}", scenario, cfg.n_tasks, make, n_classes=n_classes, input_shape=input_shape)


def permuted_stream(root: Path | str, cfg: PermutedMNISTConfig) -> LazyStream:
    side = INPUT_SHAPE[1] + 2 * cfg.pad

    def transform_of(i: int) -> PermutePixels:
        perm = None if (cfg.first_unpermuted and i == 0) else task_permutation(cfg.seed, i, side)
        return PermutePixels(perm, cfg.normalize, cfg.pad)

    pad = f"pad{cfg.pad}." if cfg.pad else ""
    return transformed_stream("permuted-mnist", root, cfg, transform_of, lambda i: f"perm{cfg.seed}.{pad}{i}",
                              input_shape=(INPUT_SHAPE[0], side, side))


def task_angle(cfg: RotatedMNISTConfig, i: int) -> float:
    return float(cfg.angles[i]) if cfg.angles else i * cfg.max_angle / cfg.n_tasks


def rotated_stream(root: Path | str, cfg: RotatedMNISTConfig) -> LazyStream:
    return transformed_stream(
        "rotated-mnist", root, cfg, lambda i: RotateImages(task_angle(cfg, i)), lambda i: f"rot{task_angle(cfg, i):g}"
    )


def permuted_mnist(root: Path | str, **config: Any) -> LazyStream:
    """Permuted MNIST; keys as `PermutedMNISTConfig`, e.g. `permuted_mnist(root, n_tasks=2500)`."""
    return permuted_stream(root, PermutedMNISTConfig(**config))


def rotated_mnist(root: Path | str, **config: Any) -> LazyStream:
    """Rotated MNIST; keys as `RotatedMNISTConfig`, e.g. `rotated_mnist(root, angles=[0, 45, 90])`."""
    return rotated_stream(root, RotatedMNISTConfig(**config))


@register("stream", "permuted-mnist", PermutedMNISTConfig)
def build_permuted_mnist(cfg: PermutedMNISTConfig, env: BuildEnv) -> LazyStream:
    """MNIST under one pixel permutation per task, lazy (2,500 tasks in the memory of one)."""
    return permuted_stream(data_root(env.data_root), cfg)


@register("stream", "rotated-mnist", RotatedMNISTConfig)
def build_rotated_mnist(cfg: RotatedMNISTConfig, env: BuildEnv) -> LazyStream:
    """MNIST rotated by a fixed angle per task, lazy."""
    return rotated_stream(data_root(env.data_root), cfg)
