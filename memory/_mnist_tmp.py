"""Temporary MNIST tensors for development until the `streams` branch's loader lands on main."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def load_mnist(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1], labels (N,) long)."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=True)
    return ds.data.unsqueeze(1).float() / 255.0, ds.targets.long()
