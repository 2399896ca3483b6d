"""Class splits of one labelled data set into task-, domain- or class-incremental tasks.

The same class order gives all three scenarios of van de Ven & Tolias (2019):

* task-incremental: task label visible at test time; predictions restricted to the task's classes;
* domain-incremental: every task relabelled to 0..k-1 (e.g. "first or second digit"), no task label;
* class-incremental: original labels, no task label, the agent must tell all classes apart.
"""

from __future__ import annotations

from typing import Sequence

import torch

from agentlab.data import Split, class_subset
from agentlab.task import LazyStream, Task


def class_task(
    name: str, i: int, train: Split, test: Split, classes: tuple[int, ...], scenario: str, n_labels: int
) -> Task:
    """Task i holding the examples of `classes`, in `scenario` form (domain: labels 0..k-1 in `classes` order)."""
    if scenario == "domain":
        lut = torch.full((n_labels,), -1, dtype=torch.long)
        lut[list(classes)] = torch.arange(len(classes))
        train, test = Split(train.x, lut[train.y], train.transform), Split(test.x, lut[test.y], test.transform)
        out_classes = tuple(range(len(classes)))
    else:
        out_classes = tuple(classes)
    return Task(
        id=i,
        name=f"{name}/{'-'.join(map(str, classes))}",
        kind="classification",
        train=train,
        eval=test,
        classes=out_classes,
        task_label_at_test=scenario == "task",
        meta={"original_classes": list(classes)},
    )


def class_split_stream(
    name: str,
    train: Split,
    test: Split,
    class_order: Sequence[int],
    classes_per_task: int,
    scenario: str,
    *,
    input_shape: Sequence[int],
) -> LazyStream:
    """Tasks of `classes_per_task` consecutive classes of `class_order` each, in `scenario` form."""
    order = [int(c) for c in class_order]
    if len(order) % classes_per_task:
        raise ValueError(f"{len(order)} classes do not split into tasks of {classes_per_task}")
    groups = [tuple(order[i : i + classes_per_task]) for i in range(0, len(order), classes_per_task)]
    n_classes = classes_per_task if scenario == "domain" else max(order) + 1

    def make(i: int) -> Task:
        classes = groups[i]
        return class_task(name, i, class_subset(train, classes), class_subset(test, classes), classes, scenario, max(order) + 1)

    return LazyStream(
        name, scenario, len(groups), make, n_classes=n_classes, input_shape=input_shape,
        meta={"class_order": order, "classes_per_task": classes_per_task},
    )
