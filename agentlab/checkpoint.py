"""Checkpoints that survive a kill and load without executing pickled code.

A checkpoint is a folder `ckpt_<NNNN>/` holding

    tensors.safetensors   every tensor of the state, flat keys
    state.json            the rest of the state (numbers, strings, lists), with
                          {"__tensor__": key} where a tensor was, plus the
                          SHA-256 of tensors.safetensors

It is written to a temporary folder, flushed, and renamed into place, so a
reader sees a whole checkpoint or none. Loading checks the hash; a corrupt
checkpoint is named in a warning and the newest good one is used instead.
The last `keep` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS = "tensors.safetensors"
STATE = "state.json"
PREFIX = "ckpt_"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the folder and the reason."""


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure into flat tensors and a JSON tree referring to them by key."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            key = path or "_"
            tensors[key] = o.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(o, dict):
            for k in o:
                if not isinstance(k, str):
                    raise TypeError(f"checkpoint keys must be strings, got {k!r} at {path or '<root>'}")
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot checkpoint a {type(o).__name__} at {path or '<root>'}: use tensors, numbers, strings, lists, dicts")

    tree = walk(obj, prefix)
    return tensors, tree


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(directory: Path, index: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write checkpoint number `index` under `directory` atomically; keep the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{index:04d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{PREFIX}{index:04d}."))
    try:
        tensors, tree = flatten_state(state)
        save_file(tensors, str(tmp / TENSORS))
        meta = {"format": 1, "index": index, "sha256": _sha256(tmp / TENSORS), "state": tree}
        with open(tmp / STATE, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_checkpoint_dir(path: Path) -> dict[str, Any]:
    """Load one checkpoint folder, checking its hash. Raises `CheckpointError` naming what is wrong."""
    path = Path(path)
    try:
        with open(path / STATE, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {STATE}: {e}") from None
    if not (path / TENSORS).is_file():
        raise CheckpointError(f"checkpoint {path} is missing {TENSORS}")
    digest = _sha256(path / TENSORS)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: {TENSORS} has SHA-256 {digest[:12]}..., expected {str(meta.get('sha256'))[:12]}...")
    try:
        tensors = load_file(str(path / TENSORS))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from None
    return unflatten_state(meta["state"], tensors)


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads cleanly; corrupt ones are named in a warning and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint_dir(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to an older checkpoint", stacklevel=2)
    return None
