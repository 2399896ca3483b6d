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
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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
