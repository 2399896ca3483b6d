"""Streams both ways: an Avalanche benchmark as a `TaskStream`, a `TaskStream` as an Avalanche benchmark.

    stream = from_avalanche(SplitMNIST(n_experiences=5, dataset_root=root))
    bench = to_avalanche(split_mnist(root, scenario="task"))

Experience i of `train_stream` / `test_stream` becomes task i. Its data are read
once through a DataLoader (with the dataset's *eval* transforms, so converted
data are deterministic) into tensors, kept per task while the stream lives
(`cache=False` re-reads them each time, for streams too long to hold). The
scenario is inferred: distinct task labels -> task-incremental; every
experience with the same classes -> domain-incremental; else class-incremental.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from agentlab.data import Split
from agentlab.task import LazyStream, Task


def split_of_dataset(dataset: Any, *, batch_size: int = 4096) -> tuple[Split, Tensor | None]:
    """All of an Avalanche (or any map-style) dataset as tensors: `(Split(x, y), task labels or None)`."""
    if hasattr(dataset, "eval"):
        dataset = dataset.eval()  # deterministic transforms
    collate = getattr(dataset, "collate_fn", None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    xs, ys, ts = [], [], []
    for mb in loader:
        xs.append(torch.as_tensor(mb[0]))
        ys.append(torch.as_tensor(mb[1]).long())
        if len(mb) > 2:
            ts.append(torch.as_tensor(mb[2]).long())
    t = torch.cat(ts) if ts else None
    return Split(torch.cat(xs), torch.cat(ys)), t


def _classes(exp: Any) -> tuple[int, ...]:
    got = getattr(exp, "classes_in_this_experience", None)
    if got is None:
        got = exp.dataset.targets.uniques
    return tuple(sorted(int(c) for c in got))


def _task_label(exp: Any) -> int:
    labels = getattr(exp, "task_labels", None)
    if labels is None:
        try:
            labels = list(exp.dataset.targets_task_labels.uniques)
        except AttributeError:
            labels = [0]
    return int(sorted(labels)[0])


def from_avalanche(
    benchmark: Any,
    *,
    name: str = "avalanche",
    scenario: str | None = None,
    cache: bool = True,
    eval_stream: str = "test_stream",
) -> LazyStream:
    """A `TaskStream` over `benchmark.train_stream` and `benchmark.<eval_stream>` (one task per experience)."""
    train_exps = list(benchmark.train_stream)
    eval_exps = list(getattr(benchmark, eval_stream))
    if len(train_exps) != len(eval_exps):
        raise ValueError(
            f"{name}: train_stream has {len(train_exps)} experiences but {eval_stream} has {len(eval_exps)}; "
            "from_avalanche pairs them one to one (pass eval_stream= naming a stream of the same length)"
        )
    classes = [_classes(e) for e in train_exps]
    labels = [_task_label(e) for e in train_exps]
    if scenario is None:
        if len(set(labels)) > 1:
            scenario = "task"
        elif all(c == classes[0] for c in classes):
            scenario = "domain"
        else:
            scenario = "class"
    n_classes = getattr(benchmark, "n_classes", None) or 1 + max(max(c) for c in classes)
    x0 = train_exps[0].dataset.eval()[0][0] if hasattr(train_exps[0].dataset, "eval") else train_exps[0].dataset[0][0]
    cached: dict[int, tuple[Split, Split]] = {}

    def make(i: int) -> Task:
        if i in cached:
            tr, te = cached[i]
        else:
            tr, te = split_of_dataset(train_exps[i].dataset)[0], split_of_dataset(eval_exps[i].dataset)[0]
            if cache:
                cached[i] = (tr, te)
        return Task(
            id=i, name=f"{name}/exp{i:03d}", kind="classification", train=tr, eval=te, classes=classes[i],
            task_label_at_test=scenario == "task", meta={"avalanche_task_label": labels[i]},
        )

    return LazyStream(
        name, scenario, len(train_exps), make, n_classes=int(n_classes), input_shape=tuple(torch.as_tensor(x0).shape),
        meta={"source": type(benchmark).__name__},
    )


def tensor_dataset(x: Tensor, y: Tensor, task_label: int) -> Any:
    """An Avalanche classification dataset over tensors, with targets and a constant task label."""
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as make

    return make(x, y, targets=y, task_labels=task_label)


def task_label_of(task: Task) -> int:
    """The Avalanche task label of one of our tasks: its id when the task is given at test time, else 0."""
    return task.id if task.task_label_at_test else 0


def experience_of(task: Task, split: str = "train") -> Any:
    """One of our tasks as an Avalanche experience (`current_experience` = task id; classes known)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream

    x, y = getattr(task, split).all()
    exp = DatasetExperience(dataset=tensor_dataset(x, y, task_label_of(task)), current_experience=task.id)
    # Metrics name results by the experience's stream ("train_stream" / "test_stream"); a one-experience
    # stream that keeps our task id as the experience index is enough.
    exp.origin_stream = EagerCLStream("train" if split == "train" else "test", [exp], set_stream_info=False)
    return exp


def to_avalanche(stream: Any, tasks: Sequence[int] | None = None) -> Any:
    """An Avalanche benchmark (`train_stream`, `test_stream`) holding the (transformed) data of `stream`.

    Every task is materialised: use `experience_of(task)` task by task for long streams.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline

    ids = list(range(len(stream))) if tasks is None else list(tasks)
    train, test = [], []
    for i in ids:
        t = stream[i]
        train.append(tensor_dataset(*t.train.all(), task_label_of(t)))
        test.append(tensor_dataset(*t.eval.all(), task_label_of(t)))
    bench = with_classes_timeline(benchmark_from_datasets(train=train, test=test))
    bench.n_classes = getattr(stream, "n_classes", None)
    return bench
