"""Tasks and task streams: what an agent meets, one after another.

A `Task` is one unit of a stream. A `TaskStream` is an ordered, re-iterable,
*lazy* collection of tasks: `stream[i]` builds task i when asked, so a stream of
2,500 permuted-MNIST tasks holds one copy of MNIST and 2,500 seeds, not 2,500
datasets. The loop may ask for the same task many times (it evaluates every
task seen so far after each new one); a stream must return equal tasks each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

TaskKind = Literal["classification", "sequence", "episode", "env", "personalization"]
Scenario = Literal["task", "domain", "class", "fewshot", "rl", "personalization"]

TASK_KINDS: tuple[str, ...] = ("classification", "sequence", "episode", "env", "personalization")
SCENARIOS: tuple[str, ...] = ("task", "domain", "class", "fewshot", "rl", "personalization")


@dataclass(frozen=True)
class Task:
    """One task of a stream.

    `train` and `eval` are whatever the task's kind needs: for `classification`
    an `agentlab.data.Split` (tensors, batched without a DataLoader); for
    `episode` an episode source; for `env` a gymnasium environment factory.
    `classes` are the output units this task uses; with `task_label_at_test`
    the evaluator restricts predictions to them (a multi-head read-out by masking,
    as in van de Ven & Tolias 2019).
    """

    id: int
    name: str
    kind: TaskKind
    train: Any
    eval: Any
    classes: tuple[int, ...] | None = None
    task_label_at_test: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"Task.kind={self.kind!r} is not one of {TASK_KINDS}")
        if self.id < 0:
            raise ValueError(f"Task.id must be >= 0, got {self.id}")


@runtime_checkable
class TaskStream(Protocol):
    """An ordered, re-iterable, lazy collection of tasks."""

    name: str
    scenario: Scenario

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Task: ...

    def __iter__(self) -> Iterator[Task]: ...


class LazyStream:
    """A `TaskStream` whose task i is `make(i)`, built on demand and never cached.

    Streams whose tasks share one base dataset (permutations, rotations, class
    splits) build each task as a cheap view of it; nothing grows with the length.
    """

    def __init__(
        self,
        name: str,
        scenario: Scenario,
        n_tasks: int,
        make: Callable[[int], Task],
        *,
        n_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario={scenario!r} is not one of {SCENARIOS}")
        if n_tasks < 1:
            raise ValueError(f"a stream needs at least one task, got n_tasks={n_tasks}")
        self.name = name
        self.scenario = scenario
        self.n_tasks = n_tasks
        self.n_classes = n_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.meta = dict(meta or {})
        self._make = make

    def __len__(self) -> int:
        return self.n_tasks

    def __getitem__(self, i: int) -> Task:
        if not -self.n_tasks <= i < self.n_tasks:
            raise IndexError(f"stream {self.name!r} has {self.n_tasks} tasks, asked for task {i}")
        i = i % self.n_tasks
        task = self._make(i)
        if task.id != i:
            raise ValueError(f"stream {self.name!r} built task {task.id} when asked for task {i}")
        return task

    def __iter__(self) -> Iterator[Task]:
        for i in range(self.n_tasks):
            yield self[i]

    def __repr__(self) -> str:
        return f"LazyStream(name={self.name!r}, scenario={self.scenario!r}, n_tasks={self.n_tasks})"
