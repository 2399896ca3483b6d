"""Where data sets live, and loaders for the files in it.

One rule for every loader: the root is `--data-root`, else $AGENTLAB_DATA, else
`~/.cache/agentlab/data` (see `agentlab.runner.default_data_root`). The layout
is torchvision's (`root/MNIST/raw/...`), the same as Avalanche's `dataset_root`.
Offline with files missing, loaders raise `DataNotFoundError` naming the
expected files and how to provide them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from agentlab.errors import DataNotFoundError


def require_files(root: Path, relpaths: Sequence[str], *, dataset: str, hint: str = "") -> list[Path]:
    """The paths `root/relpath`, or a `DataNotFoundError` listing the missing ones and how to fix it."""
    root = Path(root)
    paths = [root / r for r in relpaths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataNotFoundError(
            f"{dataset} files are missing under data root {root}:\n  " + "\n  ".join(missing)
            + "\nPut the original files there (or point --data-root / $AGENTLAB_DATA at a folder that has them)"
            + (f"; {hint}" if hint else "")
        )
    return paths
