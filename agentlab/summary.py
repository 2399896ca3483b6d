"""`summary.json`: the machine-readable record of a run, written atomically beside its event files."""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from agentlab.checkpoint import atomic_write_text

PACKAGES = ("torch", "torchvision", "avalanche-lib", "gymnasium", "einops", "tensorboard", "numpy", "agentlab")


def package_versions() -> dict[str, str]:
    """The packages' versions, and the CPU with the vector kernels torch chose on it: runs are deterministic on
    one machine, but floating-point rounding differs between kernels, and a chaotic run (task-IL fine-tuning)
    moves by points with it (docs/streams.md, ninth session), so a record says where it was made."""
    import torch

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cpu"] = cpu_name()
    out["torch_cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
    return out


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def jsonable(o: Any) -> Any:
    """NaN becomes null; arrays become nested lists."""
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def summary_dict(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": result.label,
        "stream": result.stream,
        "status": result.status,
        "message": result.message,
        "tasks": result.task_names,
        "accuracy_matrix": result.R,
        "untrained_accuracy": result.b,
        "eval_extras": result.eval_extras(),
        "metrics": result.metrics,
        "history": result.history,
        "task_inference": result.task_inference,
        "ledger": result.ledger,
        "timings": result.timings,
        "config": config,
        "seed": config.get("seed"),
        "versions": package_versions(),
    }


def write_summary(path: Path, result: Any, config: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(jsonable(summary_dict(result, config)), indent=2))


def read_summary(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json at {path}: is this a run directory written by `agentlab run`?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run may have been killed while writing it") from None
