"""The run directory: safe names for what goes in it, exclusive creation, and one process at a time.

    runs/{stream}__{recipe}__{seed}__{time}[-N]/
        .lock              locked (flock) while config.json or summary.json is written
        config.json, summary.json
        <agent label>/
            .lock          locked by the process training this agent; holds its pid

* Every name that becomes a path inside the run directory (an agent's label, the recipe's
  name in the directory name) matches `[A-Za-z0-9_.-]+`, is not `.` or `..`, does not start
  with a dot and is not a file name the run directory uses itself; anything else is a
  `ConfigError` naming the key. A path read back from a run directory must resolve inside it
  (a symbolic link out of it is refused).
* A new run directory is created with `mkdir` that fails when the name exists: two runs started
  in the same second get `...__{time}` and `...__{time}-1`, never one shared folder.
* `RunLock` holds an exclusive `flock` on a `.lock` file: in an agent's folder for as long as a
  run or a resume trains that agent (a second process gets a `LockedError` naming the pid that
  holds it), and in the run directory for the moment its shared files (config.json,
  summary.json) are written. Processes may thus share a run directory when they train
  different agents of it (`agentlab bench baselines --only ...` in two shells), never one agent.
  The lock goes with the process: a killed run leaves no stale lock (the kernel drops it).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from agentlab.config import ConfigError
from agentlab.errors import UserError

NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME = 100
LOCK = ".lock"
RESERVED = ("config.json", "summary.json", LOCK)


def check_name(value: Any, what: str, hint: str = "") -> str:
    """`value` if it is a safe single path component, else a `ConfigError` naming `what` it is, the value, the rule
    and `hint`."""
    ok = (
        isinstance(value, str) and NAME.fullmatch(value) is not None and value not in (".", "..")
        and not value.startswith(".") and value not in RESERVED and len(value) <= MAX_NAME
    )
    if not ok:
        raise ConfigError(
            f"{what} {value!r} is not allowed: it names a folder of the run directory, so it must be 1 to {MAX_NAME} of "
            f"letters, digits, '_', '.', '-', not start with '.', and not be one of {', '.join(RESERVED)}{hint}"
        )
    return value


def slug(text: str) -> str:
    """`text` reduced to the safe characters (others become '_'), at most 60 long: for names that only decorate."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")[:60]
    return out or "_"


def inside(root: Path, path: Path, key: str) -> Path:
    """`path` if it resolves inside `root` (symbolic links followed), else a `UserError` naming `key`."""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise UserError(f"{key}: {path} resolves to {real}, outside the run directory {real_root}; refusing to write there")
    return path


def check_out_root(out_root: Path) -> None:
    """`--out` must be a folder or not exist yet; a file on the way is bad input (exit code 2)."""
    p = Path(out_root)
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link
            raise UserError(f"--out {out_root}: {p} is a broken symbolic link")
        p = p.parent
    if not p.is_dir():
        raise UserError(f"--out {out_root}: {p} is a file, not a folder; give a folder to create run directories under")


def create_run_dir(out_root: Path, name: str) -> Path:
    """A new, empty folder `out_root/name` (or `name-1`, `name-2`, ... when taken), created exclusively."""
    check_out_root(out_root)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    for n in range(10000):
        path = out_root / (name if n == 0 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"--out {out_root}: 10000 run directories named {name}* exist already")


def run_dir_name(stream: str, recipe: str, seed: int) -> str:
    return f"{slug(stream)}__{slug(recipe)}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write, sync and remove a small file in it: an `OSError` naming the path and
    the cause now, before any training, rather than after the first task."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test.{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        os.write(fd, b"agentlab")
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


class LockedError(UserError):
    """Another process holds the lock: the message names its pid."""


class RunLock:
    """An exclusive `flock` on `folder/.lock` for the life of a `with` block, with this process's pid in the file.

    By default a lock held elsewhere is a `LockedError` naming the holder's pid; with `wait=True` the block waits
    for it (for the few milliseconds another process spends writing a run's shared files).
    """

    def __init__(self, folder: Path, *, what: str = "run directory", wait: bool = False) -> None:
        self.path = Path(folder) / LOCK
        self.what, self.wait = what, wait
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{self.what} {self.path.parent} is in use by process {holder} (it holds {self.path}); "
                "wait for it to finish or stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
