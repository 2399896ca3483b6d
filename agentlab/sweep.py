"""Sweeps: a recipe × a grid of settings × seeds, each point an ordinary run directory, run by an executor.

    SWEEP_DIR/
        sweep.json                 the manifest: every point's grid values, seed, recipe table, status and message
        runs/<point>/              one run directory per point, made by `agentlab.runner.run_recipe` exactly as
                                   `agentlab run` makes it (config.json, summary.json, <agent>/ events, checkpoints)
        hparams/<point>/<agent>/   one TensorBoard HPARAMS event per run: its grid values, seed and final metrics
        report.json, report.csv    the aggregate over seeds (`agentlab report SWEEP_DIR`, agentlab.sweep_report)

A point is finished when every agent of its run directory has a completed summary.json. Running a sweep
again skips finished points and resumes the others from their checkpoints (the runner's resume), so a
killed sweep loses at most each run's work since its last checkpoint. Only the driver writes the
manifest; the runs write only inside their own run directories, so points can run anywhere that sees
the sweep directory (agentlab.sweep_ray). A point that fails (a non-finite loss, an exception, a worker
that died) is recorded with its message and the others go on.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from agentlab import recipe as recipes
from agentlab.checkpoint import atomic_write_text
from agentlab.config import ConfigError, parse_value
from agentlab.errors import UserError
from agentlab.summary import jsonable

MANIFEST = "sweep.json"
RUNS = "runs"
HPARAMS = "hparams"
FORMAT = 1
FINAL = ("completed", "failed", "interrupted")


# ----------------------------------------------------------------------------------------------- grid and seeds


def _split_top_level(text: str) -> list[str]:
    """'1,[2, 3],"a,b"' -> ['1', '[2, 3]', '"a,b"']: commas inside brackets, braces or quotes belong to a value."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [t.strip() for t in out]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`--grid KEY=V1,V2,...` items -> {key: [value text, ...]}; values are TOML as in --set."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2,... (for example --grid learner.lr=0.01,0.1)")
        key, text = (s.strip() for s in item.split("=", 1))
        if key == "seed":
            raise ConfigError("--grid seed=...: seeds are not a grid key; give them with --seeds (e.g. --seeds 0-9)")
        if key in grid:
            raise ConfigError(f"--grid {key}: the key is given twice; list all its values in one --grid {key}=V1,V2,...")
        values = _split_top_level(text)
        if not text or any(v == "" for v in values):
            raise ConfigError(f"--grid {item!r}: every value must be non-empty (KEY=V1,V2,... with TOML values as in --set)")
        texts = [repr(parse_value(v)) for v in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"--grid {key}: values {values} repeat one; each grid value once")
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' and '0-2,7' too."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--seeds {text!r} is not allowed: integers >= 0 and ranges A-B with A <= B, separated by commas "
                              f"(e.g. 0-9 or 0,3,5); bad part {part!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} names a seed twice")
    return seeds


@dataclass(frozen=True)
class Point:
    """One run of a sweep."""

    name: str
    """folder name of its run directory under SWEEP_DIR/runs/ (stable: made from its grid values and seed)"""
    params: dict[str, Any]
    """its grid values by key, and its seed under "seed"; what reports group and label it by"""
    recipe: str
    """the recipe's name (recorded in the run's config.json)"""
    table: dict[str, Any]
    """the full recipe table of this run, grid values and seed applied"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def point_name(values: dict[str, str], seed: int) -> str:
    """`lr=0.01__hidden=64-64__seed3`: the last part of each key (the whole key where two share it), the value."""
    lasts = [k.rsplit(".", 1)[-1] for k in values]
    parts = [f"{_slug(last if lasts.count(last) == 1 else k)}={_slug(v)}" for k, last, v in zip(values, lasts, values.values())]
    name = "__".join([*parts, f"seed{seed}"])
    if len(name) > 150:  # folder names must stay well under the file systems' 255 bytes
        digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        name = f"{'__'.join(parts)[:100]}__{digest}__seed{seed}"
    return name


def expand(name: str, table: dict[str, Any], grid: dict[str, list[str]], seeds: Sequence[int]) -> list[Point]:
    """recipe × grid × seeds -> points (grid-major, seeds inner). Grid keys are applied as --set overrides."""
    points: list[Point] = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        texts = dict(zip(keys, combo))
        for seed in seeds:
            t = recipes.apply_overrides(table, [f"{k}={v}" for k, v in texts.items()] + [f"seed={seed}"])
            params = {k: parse_value(v) for k, v in texts.items()} | {"seed": seed}
            points.append(Point(point_name(texts, seed), params, name, t))
    seen: dict[str, int] = {}
    for i, p in enumerate(points):  # values that differ only in punctuation slug alike: number them apart
        if p.name in seen:
            points[i] = Point(f"{p.name}__{i:03d}", p.params, p.recipe, p.table)
        seen[p.name] = i
    return points


def check_points(points: Sequence[Point]) -> None:
    """Every point resolves and names known components, before anything runs (bad input: exit code 2)."""
    for p in points:
        try:
            recipes.check_components(recipes.resolve(p.recipe, p.table))
        except ConfigError as e:
            raise ConfigError(f"sweep point {p.name}: {e}") from None


# ----------------------------------------------------------------------------------------------- one point's run


@dataclass(frozen=True)
class PointJob:
    """What a worker needs to run one point; plain data, so it pickles to any process or node."""

    name: str
    recipe: str
    table: dict[str, Any]
    run_dir: str
    """absolute path of the point's run directory (on a cluster: a path every node sees)"""
    data_root: str | None = None
    only: tuple[str, ...] | None = None
    """run only these agents of the recipe (None = all)"""
    threads: int | None = None
    """PyTorch CPU threads in the worker (None = leave the process's setting)"""


def agents_finished(run_dir: Path, labels: Sequence[str]) -> dict[str, str]:
    """Each agent's status from its own summary.json ("missing" where none was written)."""
    out = {}
    for label in labels:
        path = Path(run_dir) / label / "summary.json"
        try:
            out[label] = json.loads(path.read_text(encoding="utf-8")).get("status", "missing")
        except (OSError, ValueError):
            out[label] = "missing"
    return out


def run_point(job: PointJob) -> dict[str, Any]:
    """Run (or resume) one point with the runner `agentlab run` uses; never raises for a failed run."""
    t0 = time.perf_counter()
    try:
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        from agentlab.runner import run_recipe

        resolved = recipes.resolve(job.recipe, job.table)
        run_dir = Path(job.run_dir)
        # A run directory that exists was started before: the runner reuses its completed agents and resumes the
        # others from their last checkpoints.
        resume = (run_dir / "config.json").is_file()
        _, results = run_recipe(resolved, run_dir=run_dir, resume=resume, data_root=Path(job.data_root) if job.data_root else None,
                                progress=False, only=list(job.only) if job.only else None)
        agents = {label: r.status for label, r in results.items()}
        bad = {label: r for label, r in results.items() if not r.completed}
        status = "completed" if not bad else ("interrupted" if any(r.status == "interrupted" for r in bad.values()) else "failed")
        message = "; ".join(f"{label}: {r.status}: {r.message}" for label, r in bad.items())
        return {"status": status, "message": message, "agents": agents, "seconds": time.perf_counter() - t0, "resumed": resume}
    except Exception as e:  # an exception in one point is that point's failure; the sweep goes on
        return {"status": "failed", "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8),
                "agents": {}, "seconds": time.perf_counter() - t0}


OnDone = Callable[[PointJob, dict[str, Any]], None]
RunFn = Callable[[PointJob], dict[str, Any]]


class LocalExecutor:
    """Points one after another in this process (no Ray needed). Ctrl-C stops the running point at its next step
    (the loop saves what it can) and the sweep stops there."""

    name = "local"
    threads: int | None = None
    startup_s = 0.0

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, jobs: Sequence[PointJob], on_done: OnDone, fn: RunFn = run_point) -> None:
        for job in jobs:
            try:
                out = fn(job)
            except Exception as e:  # run_point catches its own; another fn's exception is still that point's failure
                out = {"status": "failed", "message": f"{type(e).__name__}: {e}", "agents": {}, "seconds": None}
            on_done(job, out)
            if out["status"] == "interrupted":
                break


# ----------------------------------------------------------------------------------------------- the sweep directory


@dataclass
class Sweep:
    """A sweep directory and its manifest; only one process at a time writes it (a lock file)."""

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    _lock: Any = None

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    def run_dir(self, name: str) -> Path:
        return self.root / RUNS / name

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.manifest["points"]}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(jsonable(self.manifest), indent=2))

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Sweep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self, name: str) -> None:
        """Forget a point's run (its run directory and hparams event): it runs from the start next time."""
        shutil.rmtree(self.run_dir(name), ignore_errors=True)
        shutil.rmtree(self.root / HPARAMS / name, ignore_errors=True)
        if name in self.entries:
            self.entries[name].update(status="pending", message="", seconds=None, agents={})

    def merge(self, points: Sequence[Point], *, on_stale: str = "error") -> None:
        """Add `points` to the manifest. A point already there with another table is stale: "error" refuses
        (the sweep directory holds other runs), "replace" forgets its old run."""
        entries = self.entries
        for p in points:
            old = entries.get(p.name)
            table = jsonable(p.table)
            if old is not None and old["table"] != table:
                if on_stale == "error":
                    diff = _first_difference(old["table"], table)
                    raise UserError(f"{self.root} already holds point {p.name} with other settings ({diff}); "
                                    f"resume it with the same recipe, --set and --grid, or choose another --out")
                self.reset(p.name)
                old.update(table=table, params=jsonable(p.params), recipe=p.recipe)
            elif old is None:
                entry = {"name": p.name, "params": jsonable(p.params), "recipe": p.recipe, "run_dir": f"{RUNS}/{p.name}",
                         "status": "pending", "message": "", "seconds": None, "agents": {}, "table": table}
                self.manifest["points"].append(entry)
                entries[p.name] = entry
        self.save()


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    return f"{where or 'table'}: {a!r} before, {b!r} now"


def is_sweep(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root} is not a sweep directory: it has no {MANIFEST}") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if body.get("format") != FORMAT or not isinstance(body.get("points"), list):
        raise UserError(f"{path} is not a sweep manifest of format {FORMAT}")
    return body


def open_sweep(root: Path, *, create: bool, info: dict[str, Any] | None = None) -> Sweep:
    """Open (and lock) a sweep directory; `create` makes a new manifest where none exists."""
    root = Path(root).resolve()
    if is_sweep(root):
        manifest = read_manifest(root)
    elif create:
        manifest = {"format": FORMAT, **(info or {}), "points": []}
    else:
        raise UserError(f"{root} is not a sweep directory: it has no {MANIFEST}")
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"another process is running the sweep in {root} (it holds {root / '.lock'}); "
                        f"wait for it to end or choose another --out") from None
    sweep = Sweep(root, manifest, lock)
    if not is_sweep(root):
        sweep.save()
    return sweep


# ----------------------------------------------------------------------------------------------- running a sweep


def agent_labels(entry: dict[str, Any], only: Sequence[str] | None = None) -> list[str]:
    """The agents of a manifest point (those of `only` where given): the labels of its run directory's folders."""
    labels = list(recipes.resolve(entry["recipe"], entry["table"]).agents)
    return [a for a in labels if a in only] if only else labels


def finished(sweep: Sweep, entry: dict[str, Any], only: Sequence[str] | None = None) -> bool:
    labels = agent_labels(entry, only)
    return all(s == "completed" for s in agents_finished(sweep.run_dir(entry["name"]), labels).values())


def run_sweep(
    sweep: Sweep,
    points: Sequence[Point],
    executor: Any,
    *,
    data_root: Path | None = None,
    only: Sequence[str] | None = None,
    on_stale: str = "error",
    fn: RunFn = run_point,
    report: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every unfinished point of `points` in `sweep` on `executor`; returns their manifest entries by name.

    Finished points are skipped. Each result is written to the manifest (and each completed run's hparams event)
    as it arrives. Ctrl-C marks the points still running "interrupted" before it propagates."""
    from agentlab.sweep_report import write_hparams

    say = report or (lambda line: print(line, flush=True))
    check_points(points)
    sweep.merge(points, on_stale=on_stale)
    entries = sweep.entries
    chosen = [entries[p.name] for p in points]
    todo = []
    for e in chosen:
        if finished(sweep, e, only):
            if e["status"] != "completed":  # it completed after a killed driver last wrote the manifest
                e.update(status="completed", message="", agents=agents_finished(sweep.run_dir(e["name"]), agent_labels(e, only)))
                write_hparams(sweep.root, e)
        else:
            todo.append(e)
    if len(todo) < len(chosen):
        say(f"{len(chosen) - len(todo)} of {len(chosen)} points already finished: skipped")
    jobs = [PointJob(e["name"], e["recipe"], e["table"], str(sweep.run_dir(e["name"])), str(data_root) if data_root else None,
                     tuple(only) if only else None, executor.threads) for e in todo]
    for e in todo:
        e.update(status="running", message="")
    sweep.manifest["executor"] = executor.name
    sweep.save()
    done = 0

    def on_done(job: PointJob, out: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        e = entries[job.name]
        e.update(status=out["status"], message=out.get("message", ""), seconds=out.get("seconds"), agents=out.get("agents", {}))
        if "traceback" in out:
            e["traceback"] = out["traceback"]
        else:
            e.pop("traceback", None)
        sweep.save()
        if out["status"] == "completed":
            write_hparams(sweep.root, e)
        took = f" ({out['seconds']:.1f} s)" if out.get("seconds") is not None else ""
        say(f"[{done}/{len(jobs)}] {job.name}: {out['status']}{took}" + (f": {e['message']}" if e["message"] else ""))

    try:
        executor.run(jobs, on_done, fn)
    except BaseException as e:  # Ctrl-C, or the executor lost its cluster: the manifest says what is unfinished
        why = "stopped by Ctrl-C" if isinstance(e, KeyboardInterrupt) else f"the executor stopped ({type(e).__name__}: {e})"
        _mark_unfinished(sweep, todo, "interrupted", f"{why}; run the sweep again with --resume")
        raise
    _mark_unfinished(sweep, todo, "interrupted", "not run: the sweep stopped before it")
    return {e["name"]: e for e in chosen}


def _mark_unfinished(sweep: Sweep, todo: list[dict[str, Any]], status: str, message: str) -> None:
    for e in todo:
        if e["status"] == "running":
            e.update(status=status, message=message)
    sweep.save()


def failed_points(entries: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (e for e in entries.values() if e["status"] != "completed")


def print_failures(entries: dict[str, dict[str, Any]], file: Any = None) -> int:
    """List the points that did not complete (on stderr); returns how many."""
    file = file or sys.stderr
    bad = list(failed_points(entries))
    if bad:
        print(f"{len(bad)} point(s) did not complete:", file=file)
        for e in bad:
            print(f"  {e['name']}: {e['status']}: {e['message']}", file=file)
    return len(bad)


def default_out(recipe: str) -> Path:
    return Path("runs") / "sweeps" / f"{recipe}__{time.strftime('%Y%m%d-%H%M%S')}"


def cpu_count() -> int:
    """The cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
