"""A stream with some tasks left out: `stream.exclude_tasks = [2]` in any recipe.

    [stream]
    name = "split-mnist"
    exclude_tasks = [2]          # tasks 0, 1, 3, 4 in that order; each keeps its id

The kept tasks are the very tasks of the full stream (same data, same classes) and keep
their ids, so whatever an agent keys by task id (masks, adapters, buffers) is keyed as
in the full stream; only their positions move up. A run of this stream is what
`agentlab forget` compares against: the agent that never saw the left-out tasks.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from agentlab.config import ConfigError
from agentlab.task import Task

KEY = "exclude_tasks"


def task_ids(stream: Any) -> list[int]:
    """The ids of a stream's tasks in order, without building their data where the stream can say them."""
    ids = getattr(stream, "ids", None)
    return list(ids) if ids is not None else list(range(len(stream)))


class ExcludedStream:
    """A view of `base` without the tasks whose ids are in `excluded` (a `TaskStream`)."""

    def __init__(self, base: Any, excluded: Sequence[int]) -> None:
        self.base = base
        self.excluded = tuple(sorted(set(int(t) for t in excluded)))
        all_ids = task_ids(base)
        self.positions = [i for i, t in enumerate(all_ids) if t not in self.excluded]  # positions in `base`
        self.ids = [all_ids[i] for i in self.positions]
        self.name = base.name
        self.scenario = base.scenario
        self.n_tasks = len(self.positions)
        self.n_classes = getattr(base, "n_classes", None)
        self.input_shape = getattr(base, "input_shape", None)
        self.meta = {**dict(getattr(base, "meta", {}) or {}), KEY: list(self.excluded)}

    def __len__(self) -> int:
        return self.n_tasks

    def __getitem__(self, i: int) -> Task:
        if not -self.n_tasks <= i < self.n_tasks:
            raise IndexError(f"stream {self.name!r} (tasks {list(self.excluded)} left out) has {self.n_tasks} tasks, asked for {i}")
        return self.base[self.positions[i % self.n_tasks]]

    def __iter__(self) -> Iterator[Task]:
        for i in range(self.n_tasks):
            yield self[i]

    def __repr__(self) -> str:
        return f"ExcludedStream({self.base!r}, excluded={list(self.excluded)})"


def check_excluded(value: Any, where: str = f"stream.{KEY}") -> list[int]:
    """`value` as a list of task ids, or a `ConfigError` naming the key, the value and what is allowed."""
    ok = isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    if not ok or len(set(value)) != len(value):
        raise ConfigError(f"{where}={value!r} is not allowed: a list of distinct task ids (integers >= 0), e.g. [2]")
    return list(value)


def exclude_tasks(stream: Any, excluded: Sequence[int], where: str = f"stream.{KEY}") -> Any:
    """`stream` without the tasks `excluded` names (the stream itself when the list is empty)."""
    excluded = check_excluded(list(excluded), where)
    if not excluded:
        return stream
    ids = task_ids(stream)
    unknown = [t for t in excluded if t not in ids]
    if unknown:
        raise ConfigError(f"{where}={excluded!r}: the stream {stream.name!r} has no task {unknown[0]}; its task ids: "
                          f"{', '.join(map(str, ids))}")
    if len(excluded) >= len(ids):
        raise ConfigError(f"{where}={excluded!r} leaves no task of the stream's {len(ids)}: keep at least one")
    return ExcludedStream(stream, excluded)
