"""Shared fixtures. Real data comes from ../shared/data (read-only), copied once into a writable cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from agentlab.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]

# Tests build components by name from the registry, as a recipe does; the application loads the plug-ins first.
load_plugins()

# Command-line subprocesses in tests use one PyTorch thread: the models are small and CI machines have 2 cores.
os.environ.setdefault("AGENTLAB_THREADS", "1")


def _shared_data() -> Path | None:
    for cand in (os.environ.get("AGENTLAB_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """A writable data root holding MNIST, Fashion-MNIST, Omniglot and FSDD.

    $AGENTLAB_DATA wins; else ../shared/data is copied (once) to ~/.cache/agentlab/test-data.
    Tests that need real data fail, never skip, when none is found.
    """
    if os.environ.get("AGENTLAB_DATA"):
        return Path(os.environ["AGENTLAB_DATA"])
    src = _shared_data()
    if src is None:
        pytest.fail("no data: set AGENTLAB_DATA or AGENTLAB_SHARED_DATA, or put the shared data at ../shared/data")
    dst = Path.home() / ".cache" / "agentlab" / "test-data"
    marker = dst / ".copied"
    if not marker.exists():
        shutil.copytree(src, dst, dirs_exist_ok=True)
        for p in dst.rglob("*"):
            p.chmod(p.stat().st_mode | 0o200)
        marker.touch()
    return dst


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests are small; one thread avoids oversubscribing the 2-core machines they run on."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
