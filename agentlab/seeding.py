"""Seeds set in one place, and an optional deterministic mode."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a private generator for data order.

    `deterministic` asks PyTorch for deterministic kernels (slower on GPU, and an
    error for operations that have none) so two runs match bit for bit.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def seed_task(seed: int, task_id: int, generator: torch.Generator) -> None:
    """Reseed Python, NumPy, PyTorch and the data-order `generator` from (seed, task id), so a task's random draws
    do not depend on the tasks before it (`LoopConfig.seed_per_task`)."""
    s = int(np.random.SeedSequence([seed % 2**63, task_id, 0x7A5C]).generate_state(2, np.uint64)[0] >> 1)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    generator.manual_seed(s)


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a resumed run needs to continue exactly as an uninterrupted one."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy"]["pos"], 0, 0.0))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
