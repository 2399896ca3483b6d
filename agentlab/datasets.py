"""Where data sets live, and loaders for the files in it.

One rule for every loader (`data_root`): the root is `--data-root` (or a run's saved root), else
$AGENTLAB_DATA, else `$XDG_CACHE_HOME/agentlab/data` (`~/.cache/agentlab/data`). The layout
is torchvision's (`root/MNIST/raw/...`), the same as Avalanche's `dataset_root`.
Offline with files missing, loaders raise `DataNotFoundError` naming the
expected files and how to provide them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from agentlab.errors import DataNotFoundError


def data_root(given: str | Path | None = None) -> Path:
    """The data root: `given` (the command line's `--data-root`, a run's or a benchmark's root), else
    $AGENTLAB_DATA, else a per-user cache directory."""
    if given:
        return Path(given).expanduser()
    if os.environ.get("AGENTLAB_DATA"):
        return Path(os.environ["AGENTLAB_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentlab" / "data"


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
