"""Tensor-backed data splits and batches, batched by slicing instead of a DataLoader.

Continual-learning data sets are small enough to live in memory as one tensor.
Slicing a shuffled index is an order of magnitude cheaper than a `DataLoader`
collating single items, which is where Avalanche's loop spends much of its time.

A `Split` is `(x, y)` plus an optional per-batch `transform` (a permutation of
pixels, a rotation) applied when a batch is drawn, so many tasks can share one
base tensor without copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

Transform = Callable[[Tensor], Tensor]


@dataclass
class Batch:
    """A mini-batch. `task_id` is the task label when the scenario reveals it, else None."""

    x: Tensor  # (B, ...)
    y: Tensor  # (B,) class ids, or (B, ...) targets for sequence tasks
    task_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        extra = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.extra.items()}
        return Batch(self.x.to(device), self.y.to(device), self.task_id, extra)


class Split:
    """In-memory examples `x` (N, ...) with targets `y` (N, ...), optionally transformed per batch."""

    def __init__(
        self, x: Tensor, y: Tensor, transform: Transform | None = None, task_ids: Tensor | None = None
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if task_ids is not None and task_ids.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but task_ids has {task_ids.shape[0]}")
        self.x = x
        self.y = y
        self.transform = transform
        self.task_ids = task_ids  # per-example task labels, for splits that mix tasks (joint training)

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Examples at `index`, transformed."""
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[index]

    def all(self) -> tuple[Tensor, Tensor]:
        return self.take(torch.arange(len(self)))

    def subset(self, index: Tensor) -> "Split":
        """A smaller split sharing this one's transform (used by tests and quick modes)."""
        t = self.task_ids[index] if self.task_ids is not None else None
        return Split(self.x[index], self.y[index], self.transform, t)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        task_id: int | None = None,
    ) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            x, y = self.take(index)
            extra = {"task_ids": self.task_ids[index]} if self.task_ids is not None else {}
            yield Batch(x, y, task_id, extra)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x={tuple(self.x.shape[1:])}, transform={self.transform is not None})"


def concat_splits(splits: list[Split], task_ids: list[int] | None = None) -> Split:
    """One split holding the (transformed) examples of several; used by joint training.

    With `task_ids`, each example remembers the task it came from.
    """
    xs, ys = zip(*(s.all() for s in splits))
    t = None
    if task_ids is not None:
        t = torch.cat([torch.full((len(s),), i, dtype=torch.long) for s, i in zip(splits, task_ids)])
    return Split(torch.cat(xs), torch.cat(ys), None, t)


def class_subset(split: Split, classes: tuple[int, ...]) -> Split:
    """The examples of `split` whose label is in `classes` (a view over the same transform)."""
    keep = torch.isin(split.y, torch.tensor(classes, dtype=split.y.dtype))
    return split.subset(keep.nonzero().squeeze(1))
