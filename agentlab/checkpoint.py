"""Checkpoints that survive a kill and load without executing pickled code.

A checkpoint is a folder `ckpt_<N>/` (N the task index, at least 4 digits) holding

    tensors.safetensors   every tensor of the state, flat keys
    state.json            the rest of the state (numbers, strings, lists), with
                          {"__tensor__": key} where a tensor was
    manifest.json         the SHA-256 and size of both files above

It is written to a temporary folder `.ckpt_<N>.*`, every file flushed to disk, and
renamed into place, so a reader sees a whole checkpoint or none; temporary folders a
kill left behind are removed at the next save. Checkpoints are ordered by their parsed
integer index (`ckpt_10000` after `ckpt_9999`); only folders named exactly `ckpt_<digits>`
count, symbolic links never. Loading checks both hashes and the structure of `state.json`;
any failure is a `CheckpointError` naming the folder and the reason, and `load_latest`
falls back to the next older checkpoint. Saving checkpoint N keeps the newest `keep`
checkpoints up to N and removes any with a larger index (a timeline abandoned by a
fallback or a restart).

A directory of checkpoints belongs to one process at a time: the run directory's lock
(agentlab.rundir) makes sure of that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from agentlab.errors import UserError

TENSORS = "tensors.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
PREFIX = "ckpt_"
FORMAT = 2
NAME = re.compile(r"ckpt_(\d+)")
TEMP = re.compile(r"\.ckpt_\d+\..+")


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


def named(e: OSError, path: Path | str) -> OSError:
    """`e` with `path` as its file name when it has none (a failed write on an open file names no path)."""
    if e.filename is None:
        return type(e)(e.errno, e.strerror or str(e), str(path))
    return e


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise named(e, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_synced(path: Path, data: bytes) -> None:
    try:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise named(e, path) from None


def checkpoint_index(path: Path) -> int | None:
    """N for a folder named exactly `ckpt_<N>`, else None."""
    m = NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary folders (and files) a kill during a save left in `directory`; returns what went."""
    gone = []
    for p in Path(directory).iterdir():
        if TEMP.fullmatch(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def save_checkpoint(directory: Path, index: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write checkpoint number `index` under `directory` atomically; keep the newest `keep` up to `index` (0 = all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    final = directory / f"{PREFIX}{index:04d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{PREFIX}{index:04d}."))
    try:
        tensors, tree = flatten_state(state)
        blob = save_bytes(tensors)
        body = json.dumps({"format": FORMAT, "index": index, "state": tree}).encode("utf-8")
        _write_synced(tmp / TENSORS, blob)
        _write_synced(tmp / STATE, body)
        files = {TENSORS: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
                 STATE: {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}}
        _write_synced(tmp / MANIFEST, json.dumps({"format": FORMAT, "index": index, "files": files}).encode("utf-8"))
        _fsync_dir(tmp)
        if final.is_symlink() or final.is_file():
            final.unlink()
        elif final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    older = [p for p in list_checkpoints(directory) if checkpoint_index(p) < index]
    newer = [p for p in list_checkpoints(directory) if checkpoint_index(p) > index]
    drop = [] if keep == 0 else older[: max(0, len(older) - (keep - 1))]
    for old in drop + newer:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders under `directory`, oldest (smallest index) first; only real folders named `ckpt_<N>`."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if checkpoint_index(p) is not None and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: (checkpoint_index(p), p.name))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path.parent} is missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path.parent} is unreadable: {what}: {e}") from None


def _verify(path: Path, name: str, entry: Any) -> None:
    f = path / name
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
        raise CheckpointError(f"checkpoint {path} is corrupt: {MANIFEST} has no valid entry for {name}")
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} is missing {name}")
    size = f.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: {name} has {size} bytes, {MANIFEST} says {entry['bytes']}")
    try:
        digest = _sha256(f)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {name}: {e.strerror or e}") from None
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {name} has SHA-256 {digest[:12]}..., expected {entry['sha256'][:12]}..."
        )


def load_checkpoint_dir(path: Path) -> dict[str, Any]:
    """Load one checkpoint folder, checking its hashes. Raises `CheckpointError` naming what is wrong."""
    path = Path(path)
    manifest = _read_json(path / MANIFEST, MANIFEST) if (path / MANIFEST).exists() else None
    if manifest is not None:
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise CheckpointError(f"checkpoint {path} is corrupt: {MANIFEST} is not a manifest")
        for name in (STATE, TENSORS):
            _verify(path, name, manifest["files"].get(name))
    meta = _read_json(path / STATE, STATE)
    if not isinstance(meta, dict) or "state" not in meta:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE} holds no state")
    if manifest is None:
        # format 1 (before manifests): only the tensors' hash, kept inside state.json
        if meta.get("format") != 1:
            raise CheckpointError(f"checkpoint {path} is missing {MANIFEST}")
        _verify(path, TENSORS, {"sha256": meta.get("sha256"), "bytes": (path / TENSORS).stat().st_size
                                if (path / TENSORS).is_file() else -1})
    index = checkpoint_index(path)
    if index is not None and meta.get("index") != index:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE} says it is checkpoint {meta.get('index')!r}")
    try:
        tensors = load_file(str(path / TENSORS))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from None
    try:
        return unflatten_state(meta["state"], tensors)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE} refers to a missing tensor {e}") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE} is nested too deeply") from None


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads cleanly; corrupt ones are named in a warning and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint_dir(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to an older checkpoint", stacklevel=2)
    return None


class NoUsableCheckpoint(UserError):
    """`--resume` found checkpoints (or evidence of them) but none it can use; the message says what it found."""
