"""What the loop saves after each task, how a run resumes from it, and how a stop request reaches it.

    <out_dir>/checkpoints/ckpt_<N>/    the state after task N (agentlab.checkpoint)
    <out_dir>/last_checkpoint.json     {"index": N, "next_task": N + 1, "n_tasks": T}, written after each save

A checkpoint's loop state holds the accuracy matrix as its measured entries only
(`R_index` (n, 2), `R_values` (n,)): with `eval_seen = "final"` a long stream measures two
entries a task, so a checkpoint grows with the tasks done, not with T x T.

Resuming tries the checkpoints newest first. One is used when its files verify, its loop
state fits the stream (`n_tasks`, `next_task` in 1..T, `R` and `b` shaped for T, one
history and ledger entry per task done) and the agent, learner and random states load;
any failure is named in a warning and the next older one is tried. When none is usable
and there is evidence of earlier progress (a checkpoint folder, or `last_checkpoint.json`),
`NoUsableCheckpoint` says what was found: the CLI exits with code 2 unless `--restart`.
With no checkpoint and no evidence the run never finished a task: it starts at task 0.
"""

from __future__ import annotations

import copy
import json
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentlab.checkpoint import (
    CheckpointError, NoUsableCheckpoint, atomic_write_text, list_checkpoints, load_checkpoint_dir, save_checkpoint,
)
from agentlab.seeding import rng_state, set_rng_state

MARKER = "last_checkpoint.json"
CHECKPOINTS = "checkpoints"


class Interrupt:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag the training step checks, so the loop can save and flush
    first. A second signal stops at once (KeyboardInterrupt for Ctrl-C, exit status 143 for SIGTERM)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Interrupt":
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no flag
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == getattr(signal, "SIGTERM", None):
                raise SystemExit(128 + signum)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class Checkpointer:
    """Writes the loop's checkpoint after each task, keeping the measured entries of R as they come."""

    def __init__(self, out_dir: Path, *, n_tasks: int, keep: int, entries: tuple[list, list] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.n_tasks, self.keep = n_tasks, keep
        self.index: list[list[int]] = list(entries[0]) if entries else []
        self.values: list[float] = list(entries[1]) if entries else []

    def save(self, i: int, *, agent: Any, init_agent: Any, R: np.ndarray, b: np.ndarray, global_step: int,
             history: list, ledger: list, timings: dict, task_names: list, task_inference: dict,
             generator: torch.Generator) -> Path:
        for j in np.flatnonzero(~np.isnan(R[i])).tolist():  # row i is final once task i is done
            self.index.append([i, j])
            self.values.append(float(R[i, j]))
        learner = agent.learner
        state = {
            "agent": agent.state_dict(),
            "learner": learner.state_dict() if learner is not None else {},
            "init_agent": init_agent.state_dict(),
            "loop": {
                "n_tasks": self.n_tasks, "next_task": i + 1, "global_step": global_step,
                "R_index": torch.tensor(self.index, dtype=torch.long).reshape(-1, 2),
                "R_values": torch.tensor(self.values, dtype=torch.float64),
                "b": torch.from_numpy(b.copy()), "history": history, "ledger": ledger, "timings": timings,
                "task_names": task_names, "task_inference": task_inference,
            },
            "rng": rng_state(generator),
        }
        path = save_checkpoint(self.out_dir / CHECKPOINTS, i, state, keep=self.keep)
        atomic_write_text(self.out_dir / MARKER, json.dumps({"index": i, "next_task": i + 1, "n_tasks": self.n_tasks}))
        return path


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} does not fit this run: {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_loop_state(state: Any, n_tasks: int, path: Path) -> dict[str, Any]:
    """The loop's state of a loaded checkpoint as the loop's variables, or a `CheckpointError` saying what is off."""
    if not isinstance(state, dict):
        raise _bad(path, "its state is not a table")
    for key in ("agent", "learner", "init_agent", "loop", "rng"):
        if key not in state:
            raise _bad(path, f"its state has no {key!r}")
    loop = state["loop"]
    if not isinstance(loop, dict):
        raise _bad(path, "its loop state is not a table")
    T = loop.get("n_tasks", n_tasks)
    if T != n_tasks:
        raise _bad(path, f"it was written for a stream of {T!r} tasks, this stream has {n_tasks}")
    nxt, step = loop.get("next_task"), loop.get("global_step")
    if not _is_int(nxt) or not 1 <= nxt <= n_tasks:
        raise _bad(path, f"next_task={nxt!r}, expected an integer in 1..{n_tasks}")
    if not _is_int(step) or step < 0:
        raise _bad(path, f"global_step={step!r}, expected an integer >= 0")
    b = loop.get("b")
    if not isinstance(b, torch.Tensor) or tuple(b.shape) != (n_tasks,):
        got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise _bad(path, f"b has shape {got}, expected ({n_tasks},)")
    R = np.full((n_tasks, n_tasks), np.nan)
    entries: tuple[list, list] = ([], [])
    if "R" in loop:  # written before checkpoints held the measured entries only
        dense = loop["R"]
        if not isinstance(dense, torch.Tensor) or tuple(dense.shape) != (n_tasks, n_tasks):
            raise _bad(path, f"R is not a {n_tasks} x {n_tasks} matrix")
        R = dense.double().numpy().copy()
        ij = np.argwhere(~np.isnan(R[:nxt]))
        entries = (ij.tolist(), R[ij[:, 0], ij[:, 1]].tolist())
    else:
        idx, val = loop.get("R_index"), loop.get("R_values")
        if not (isinstance(idx, torch.Tensor) and isinstance(val, torch.Tensor) and idx.dim() == 2 and idx.shape[1] == 2
                and val.dim() == 1 and idx.shape[0] == val.shape[0] and not idx.is_floating_point()):
            raise _bad(path, "R_index / R_values are not (n, 2) indices and (n,) values")
        if len(idx) and (int(idx.min()) < 0 or int(idx[:, 0].max()) >= nxt or int(idx[:, 1].max()) >= n_tasks):
            raise _bad(path, f"R_index points outside the {nxt} rows done of a {n_tasks}-task matrix")
        ii, jj = idx[:, 0].numpy(), idx[:, 1].numpy()
        R[ii, jj] = val.double().numpy()
        entries = (idx.tolist(), val.double().tolist())
    for key in ("history", "ledger", "task_names"):
        v = loop.get(key)
        if not isinstance(v, list) or len(v) != nxt:
            got = len(v) if isinstance(v, list) else type(v).__name__
            raise _bad(path, f"{key} has {got} entries, expected {nxt} (one per task done)")
    if not all(isinstance(n, str) for n in loop["task_names"]):
        raise _bad(path, "task_names holds something other than strings")
    timings, inference = loop.get("timings"), loop.get("task_inference")
    if not isinstance(timings, dict) or not all(isinstance(timings.get(k), (int, float)) for k in ("train_s", "eval_s")):
        raise _bad(path, "timings has no train_s and eval_s")
    if not isinstance(inference, dict):
        raise _bad(path, "task_inference is not a table")
    _check_rng(state["rng"], path)
    return {"R": R, "b": b.double().numpy().copy(), "history": loop["history"], "ledger": loop["ledger"],
            "timings": timings, "task_names": loop["task_names"], "task_inference": inference, "next_task": nxt,
            "global_step": step, "entries": entries}


def _check_rng(rng: Any, path: Path) -> None:
    """The random states must have the shapes `set_rng_state` restores (it would half-apply them otherwise)."""
    ok = isinstance(rng, dict)
    ok = ok and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].shape == torch.get_rng_state().shape
    ok = ok and isinstance(rng.get("generator"), torch.Tensor) and rng["generator"].shape == torch.Generator().get_state().shape
    np_state = rng.get("numpy") if ok else None
    ok = ok and isinstance(np_state, dict) and isinstance(np_state.get("key"), torch.Tensor)
    ok = ok and tuple(np_state["key"].shape) == (624,) and _is_int(np_state.get("pos")) and 0 <= np_state["pos"] <= 624
    py = rng.get("python") if ok else None
    ok = ok and isinstance(py, list) and len(py) == 3 and isinstance(py[1], list) and len(py[1]) == 625
    ok = ok and all(_is_int(v) and 0 <= v < 2**32 for v in py[1])
    if not ok:
        raise _bad(path, "its random-number states are malformed")


def _apply(state: dict[str, Any], agent: Any, init_agent: Any, generator: torch.Generator) -> None:
    """Load the agent, its learner, the untrained snapshot and the random states; all or nothing: everything is
    first tried on a copy of the untrained agent, so a state that does not fit changes nothing."""
    probe = copy.deepcopy(init_agent)
    probe.load_state_dict(state["init_agent"])
    probe.load_state_dict(state["agent"])
    if probe.learner is not None:
        probe.learner.load_state_dict(state["learner"])
    del probe
    init_agent.load_state_dict(state["init_agent"])
    agent.load_state_dict(state["agent"])
    if agent.learner is not None:
        agent.learner.load_state_dict(state["learner"])
    set_rng_state(state["rng"], generator)


def _describe_missing(out_dir: Path) -> str:
    ckpt_dir = out_dir / CHECKPOINTS
    marker = out_dir / MARKER
    try:
        said = json.loads(marker.read_text(encoding="utf-8"))
        said = f"checkpoint {int(said['index'])} was written" if isinstance(said, dict) else "it is damaged"
    except (OSError, ValueError, KeyError, TypeError):
        said = "it is damaged"
    where = f"{ckpt_dir} is missing" if not ckpt_dir.exists() else f"{ckpt_dir} holds no checkpoint"
    return f"{where}, but {marker} says {said}"


def resume(out_dir: Path, *, agent: Any, init_agent: Any, generator: torch.Generator, n_tasks: int,
           label: str = "") -> dict[str, Any] | None:
    """Load the newest usable checkpoint under `out_dir` into the agent (see the module docstring); its loop
    state, or None when the run never saved one; `NoUsableCheckpoint` when it did but none can be used."""
    out_dir = Path(out_dir)
    reasons: list[str] = []
    for path in reversed(list_checkpoints(out_dir / CHECKPOINTS)):
        try:
            state = load_checkpoint_dir(path)
            loop = check_loop_state(state, n_tasks, path)
            _apply(state, agent, init_agent, generator)
        except CheckpointError as e:
            reasons.append(str(e))
        except Exception as e:  # the agent's or the learner's load_state_dict: any error means "does not fit"
            reasons.append(f"checkpoint {path} does not fit this agent: {type(e).__name__}: {e}".replace("\n", " "))
        else:
            if reasons:
                warnings.warn(f"{'; '.join(reasons)}; resuming from the older {path}", stacklevel=2)
            return loop
    if not reasons and not (out_dir / MARKER).exists():
        return None
    found = "; ".join(reasons) if reasons else _describe_missing(out_dir)
    who = f"agent {label}: " if label else ""
    raise NoUsableCheckpoint(
        f"{who}--resume found no usable checkpoint: {found}. Give --restart as well to train this agent again "
        "from task 0 (its checkpoints are removed)"
    )


def forget_checkpoints(out_dir: Path) -> None:
    """Remove an agent's checkpoints and marker (for `--restart`): what is left there can no longer be resumed."""
    import shutil

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    if ckpt_dir.is_symlink() or ckpt_dir.is_file():
        ckpt_dir.unlink()
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    (out_dir / MARKER).unlink(missing_ok=True)


def peek_global_step(out_dir: Path, n_tasks: int) -> int | None:
    """The global step after the newest checkpoint that verifies and fits (for TensorBoard's purge on resume)."""
    for path in reversed(list_checkpoints(Path(out_dir) / CHECKPOINTS)):
        try:
            return check_loop_state(load_checkpoint_dir(path), n_tasks, path)["global_step"] + 1
        except CheckpointError:
            continue
    return None
