"""MNIST and Fashion-MNIST from the data root, loaded once per process into uint8 tensors.

    load_vision("mnist", root, train=True) -> Split    x (N, 1, 28, 28) uint8, y (N,) int64

The root follows the one data-root rule (`--data-root`, else $AGENTLAB_DATA,
else ~/.cache/agentlab/data) and torchvision's layout, `root/MNIST/raw/*.gz`,
the same as Avalanche's `dataset_root`. torchvision's `MNIST(root,
download=True)` only checks and extracts when the four original `.gz` files are
there, so it works offline; on a machine with internet it downloads what is
missing. When neither works we raise `DataNotFoundError` naming the files.

Images stay uint8 (47 MB for MNIST's training set instead of 188 MB as float);
the split's `transform` scales each batch to [0, 1] floats when it is drawn, and
streams compose their own per-task transform (a permutation, a rotation) on top.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from agentlab.data import Split
from agentlab.errors import DataNotFoundError

# name -> (torchvision class, folder under the root, class names)
DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mnist": ("MNIST", "MNIST", tuple(str(d) for d in range(10))),
    "fashion": (
        "FashionMNIST",
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}
RAW_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

_CACHE: dict[tuple[str, str, bool], tuple[Tensor, Tensor]] = {}


class ToUnitFloat:
    """uint8 pixels (B, ...) -> float32 in [0, 1]; picklable so splits can travel to workers."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def expected_files(name: str, root: Path) -> list[Path]:
    """The four original IDX files a loader needs under `root`."""
    folder = DATASETS[name][1]
    return [Path(root) / folder / "raw" / f for f in RAW_FILES]


def class_names(name: str) -> tuple[str, ...]:
    return DATASETS[_check_name(name)][2]


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown vision data set {name!r}; known: {', '.join(DATASETS)}")
    return name


def load_tensors(name: str, root: Path | str, train: bool = True) -> tuple[Tensor, Tensor]:
    """`(x (N, 1, 28, 28) uint8, y (N,) int64)`, cached per process; never copies on a second call."""
    name = _check_name(name)
    root = Path(root).expanduser()
    key = (name, str(root.resolve()), bool(train))
    if key not in _CACHE:
        import torchvision.datasets as tvd

        cls = getattr(tvd, DATASETS[name][0])
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as e:  # offline and missing, unreadable or read-only root
            missing = [str(p) for p in expected_files(name, root) if not p.exists()]
            what = ("missing:\n  " + "\n  ".join(missing)) if missing else f"present but could not be read ({type(e).__name__}: {str(e).splitlines()[0]})"
            raise DataNotFoundError(
                f"{DATASETS[name][0]} files under data root {root} are {what}\n"
                f"Put the four original IDX files ({', '.join(RAW_FILES)}) in {root / DATASETS[name][1] / 'raw'} "
                "(the root must be writable: torchvision extracts them once), or point --data-root / $AGENTLAB_DATA "
                "at a folder that has them; with internet access they are downloaded there."
            ) from None
        x = ds.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
        y = ds.targets.clone().long()  # (N,)
        _CACHE[key] = (x, y)
    return _CACHE[key]


def load_vision(name: str, root: Path | str, train: bool = True) -> Split:
    """A `Split` over the cached tensors whose batches come out as float in [0, 1]."""
    x, y = load_tensors(name, root, train)
    return Split(x, y, ToUnitFloat())


def load_mnist(root: Path | str, train: bool = True) -> Split:
    return load_vision("mnist", root, train)


def load_fashion_mnist(root: Path | str, train: bool = True) -> Split:
    return load_vision("fashion", root, train)
