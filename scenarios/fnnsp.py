"""`fnnsp-pairs`: binary tasks over digit and garment pairs, mixing MNIST and Fashion-MNIST (FNNSP).

The FNNSP (Flexible Neural Network with Structural Plasticity) evaluation is a
stream of two-class problems, each a pair of classes of one data set, e.g.
MNIST 2 vs 3 or Fashion-MNIST shirt vs T-shirt, the task given (its reported
average is about 86.6% over such tasks). Each task relabels its pair to 0 / 1:

    scenario = "task"    task label at test, 2 shared outputs (the FNNSP setting)
    scenario = "domain"  no task label, 2 shared outputs ("first or second class of the pair")
    scenario = "class"   no task label, 2 new outputs per task (labels 2i, 2i+1)

A pair is written `"<dataset>:<a>-<b>"` with dataset `mnist` or `fashion` and
class indices 0-9 (Fashion: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress,
4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot).

This stream is ours, not an Avalanche benchmark (Avalanche has no mixed-dataset
pair generator); `agentlab.avalanche_bridge.to_avalanche` converts it when needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from agentlab.config import check
from agentlab.data import Split
from agentlab.registry import BuildEnv, register
from agentlab.task import LazyStream, Task
from agentlab.datasets import data_root
from agentlab.scenarios.mnist import INPUT_SHAPE, cap
from agentlab.scenarios.vision_data import ToUnitFloat, class_names, load_tensors

# Alternating digit and garment pairs; the hard garment pairs (shirt / T-shirt, pullover / coat) are the FNNSP examples.
DEFAULT_PAIRS = [
    "mnist:2-3", "fashion:6-0", "mnist:4-9", "fashion:2-4", "mnist:3-5",
    "fashion:7-9", "mnist:1-7", "fashion:5-7", "mnist:6-8", "fashion:0-3",
]
PAIR = re.compile(r"^(mnist|fashion):([0-9])-([0-9])$")


def parse_pair(spec: str) -> tuple[str, int, int]:
    m = PAIR.match(spec)
    if not m or m.group(2) == m.group(3):
        raise ValueError(spec)
    return m.group(1), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class FNNSPPairsConfig:
    """Binary tasks over class pairs of MNIST and Fashion-MNIST (FNNSP's evaluation)."""

    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_PAIRS))
    """one task per pair, written "mnist:2-3" or "fashion:6-0" (class a becomes label 0, b label 1)"""
    scenario: Literal["task", "domain", "class"] = "task"
    """task: task label given (FNNSP); domain: 2 shared outputs, no label; class: 2 new outputs per task"""
    max_per_task: int = 0
    """training examples kept per task (a fixed random subset); 0 = all (about 12,000)"""
    max_eval_per_task: int = 0
    """test examples kept per task; 0 = all (2,000)"""
    subset_seed: int = 0
    """seed of the subsets"""

    def __post_init__(self) -> None:
        check(len(self.pairs) >= 1, "pairs", self.pairs, "a non-empty list")
        for p in self.pairs:
            try:
                parse_pair(p)
            except ValueError:
                check(False, "pairs", p, 'pairs like "mnist:2-3" or "fashion:6-0" (dataset mnist|fashion, two different classes 0-9)')
        check(self.max_per_task >= 0, "max_per_task", self.max_per_task, "an integer >= 0")
        check(self.max_eval_per_task >= 0, "max_eval_per_task", self.max_eval_per_task, "an integer >= 0")


def _pair_split(x: torch.Tensor, y: torch.Tensor, a: int, b: int, k: int, seed: int, offset: int) -> Split:
    idx = cap(((y == a) | (y == b)).nonzero().squeeze(1), k, seed)
    return Split(x[idx], (y[idx] == b).long() + offset, ToUnitFloat())  # a -> 0, b -> 1 (+ offset)


def pairs_stream(root: Path | str, cfg: FNNSPPairsConfig) -> LazyStream:
    parsed = [parse_pair(p) for p in cfg.pairs]
    for ds in {d for d, _, _ in parsed}:  # fail early, before any task is asked for
        load_tensors(ds, root, train=True), load_tensors(ds, root, train=False)

    def make(i: int) -> Task:
        ds, a, b = parsed[i]
        offset = 2 * i if cfg.scenario == "class" else 0
        tr = _pair_split(*load_tensors(ds, root, True), a, b, cfg.max_per_task, cfg.subset_seed * 1000 + i, offset)
        te = _pair_split(*load_tensors(ds, root, False), a, b, cfg.max_eval_per_task, cfg.subset_seed * 1000 + 500 + i, offset)
        names = class_names(ds)
        return Task(
            id=i, name=f"fnnsp-pairs/{ds}:{a}-{b}", kind="classification", train=tr, eval=te,
            classes=(offset, offset + 1), task_label_at_test=cfg.scenario == "task",
            meta={"dataset": ds, "original_classes": [a, b], "class_names": [names[a], names[b]]},
        )

    n_classes = 2 * len(parsed) if cfg.scenario == "class" else 2
    return LazyStream(
        f"fnnsp-pairs-{cfg.scenario}", cfg.scenario, len(parsed), make, n_classes=n_classes, input_shape=INPUT_SHAPE,
        meta={"pairs": list(cfg.pairs)},
    )


def fnnsp_pairs(root: Path | str, **config: Any) -> LazyStream:
    """The FNNSP pair stream; keys as `FNNSPPairsConfig`, e.g. `fnnsp_pairs(root, pairs=["mnist:2-3"])`."""
    return pairs_stream(root, FNNSPPairsConfig(**config))


@register("stream", "fnnsp-pairs", FNNSPPairsConfig)
def build_fnnsp_pairs(cfg: FNNSPPairsConfig, env: BuildEnv) -> LazyStream:
    """Binary tasks over MNIST digit pairs and Fashion-MNIST garment pairs (FNNSP), task given."""
    return pairs_stream(data_root(env.data_root), cfg)
