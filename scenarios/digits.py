"""The embedded default stream: scikit-learn's bundled 8x8 digits split by class (no download)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from agentlab.config import check
from agentlab.data import Split
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.splits import class_split_stream


@dataclass(frozen=True)
class DigitsSplitConfig:
    """Split 8x8 digits (1,797 images bundled with scikit-learn) into tasks of a few classes each."""

    scenario: Literal["task", "domain", "class"] = "class"
    """task-, domain- or class-incremental"""
    classes_per_task: int = 2
    """classes in each task (10 must divide by it)"""
    test_fraction: float = 0.3
    """share of each class held out for evaluation"""
    class_order: list[int] = field(default_factory=lambda: list(range(10)))
    """the order in which classes arrive"""
    split_seed: int = 0
    """seed of the train/test split (kept apart from the run seed so all runs see the same split)"""

    def __post_init__(self) -> None:
        check(self.classes_per_task in (1, 2, 5, 10), "classes_per_task", self.classes_per_task, "one of 1, 2, 5, 10")
        check(0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "in (0, 1)")
        check(sorted(self.class_order) == list(range(10)), "class_order", self.class_order, "a permutation of 0..9")


def load_digits_split(test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Scaled to [0, 1], shape (N, 1, 8, 8); a stratified split, the same for every run with `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.shape[0], generator=g)]
        n_test = int(round(test_fraction * idx.shape[0]))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return Split(x[tr], y[tr]), Split(x[te], y[te])


@register("stream", "digits-split", DigitsSplitConfig)
def build_digits_split(cfg: DigitsSplitConfig, env: BuildEnv):
    """8x8 digits bundled with scikit-learn, split by class (the embedded default; no download)."""
    train, test = load_digits_split(cfg.test_fraction, cfg.split_seed)
    return class_split_stream(
        f"digits-split-{cfg.scenario}", train, test, cfg.class_order, cfg.classes_per_task, cfg.scenario,
        input_shape=(1, 8, 8),
    )
