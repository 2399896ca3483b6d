"""Algorithmic sequence tasks for memory modules: copy, repeat-copy, associative recall.

Every sequence is x (t, bits + 2) in, y (t, bits) target, mask (t,) marking the
steps whose output is scored (Graves et al. 2014 NTM; 2016 DNC). Channel `bits`
is the start/delimiter flag, channel `bits + 1` the query/repeat flag.

    copy         L pattern steps, a delimiter step; then L steps to reproduce the pattern
    repeat_copy  L pattern steps, a delimiter step carrying repeats / max_repeats in the
                 repeat channel; then the pattern reproduced `repeats` times
    recall       `items` items of `item_len` steps, each after a delimiter step; then a
                 query delimiter, one of the items (not the last), a query delimiter; then
                 the item that followed it (item_len steps)

Lengths: training samples L uniformly from [min_len, curriculum max] (the learner's
`Curriculum` raises the max from `start_len` to `max_len` as the cost falls); each
task also holds a fixed evaluation set at the trained lengths and another at the
generalisation lengths [gen_min_len, gen_max_len]. Everything is deterministic by seed.

Cost: bits per sequence = the masked binary cross-entropy summed over bits and time,
in bits (log base 2), averaged over sequences (the DNC paper's figure).

Axis legend: b batch (sequences), t time, c channels (bits + 2 in, bits out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.config import check
from agentlab.evaluate import EvalResult, register_evaluator
from agentlab.registry import BuildEnv, register
from agentlab.task import LazyStream, Task

TASK_NAMES = ("copy", "repeat_copy", "recall")


class SeqBatch(NamedTuple):
    """x (b, t, bits + 2), y (b, t, bits), mask (b, t) of 0/1 floats; padded steps have mask 0."""

    x: Tensor
    y: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> "SeqBatch":
        return SeqBatch(self.x.to(device), self.y.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]


def _bits(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randint(0, 2, shape, generator=g).float()


def copy_sequence(g: torch.Generator, bits: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """One copy sequence of total length 2L + 1."""
    pat = _bits(g, length, bits)
    t = 2 * length + 1
    x, y, m = torch.zeros(t, bits + 2), torch.zeros(t, bits), torch.zeros(t)
    x[:length, :bits] = pat
    x[length, bits] = 1.0
    y[length + 1 :] = pat
    m[length + 1 :] = 1.0
    return x, y, m


def repeat_copy_sequence(g: torch.Generator, bits: int, length: int, repeats: int, max_repeats: int) -> tuple[Tensor, Tensor, Tensor]:
    """One repeat-copy sequence of total length L + 1 + repeats * L."""
    pat = _bits(g, length, bits)
    t = length + 1 + repeats * length
    x, y, m = torch.zeros(t, bits + 2), torch.zeros(t, bits), torch.zeros(t)
    x[:length, :bits] = pat
    x[length, bits] = 1.0
    x[length, bits + 1] = repeats / max_repeats
    y[length + 1 :] = pat.repeat(repeats, 1)
    m[length + 1 :] = 1.0
    return x, y, m


def recall_sequence(g: torch.Generator, bits: int, items: int, item_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """One associative-recall sequence with `items` >= 2 items."""
    pats = _bits(g, items, item_len, bits)
    q = int(torch.randint(0, items - 1, (1,), generator=g))
    span = item_len + 1
    t = items * span + 2 + item_len + item_len
    x, y, m = torch.zeros(t, bits + 2), torch.zeros(t, bits), torch.zeros(t)
    for k in range(items):
        x[k * span, bits] = 1.0
        x[k * span + 1 : (k + 1) * span, :bits] = pats[k]
    s = items * span
    x[s, bits + 1] = 1.0
    x[s + 1 : s + 1 + item_len, :bits] = pats[q]
    x[s + 1 + item_len, bits + 1] = 1.0
    y[s + 2 + item_len :] = pats[q + 1]
    m[s + 2 + item_len :] = 1.0
    return x, y, m


def pad_stack(seqs: list[tuple[Tensor, Tensor, Tensor]]) -> SeqBatch:
    """Right-pad sequences to the longest and stack them; padding has mask 0."""
    t = max(s[0].shape[0] for s in seqs)
    pad = lambda a: F.pad(a, (0, 0, 0, t - a.shape[0]) if a.dim() == 2 else (0, t - a.shape[0]))  # noqa: E731
    return SeqBatch(*(torch.stack([pad(s[k]) for s in seqs]) for k in range(3)))


@dataclass(frozen=True)
class SequenceTaskSpec:
    """What one algorithmic task generates."""

    kind: Literal["copy", "repeat_copy", "recall"]
    bits: int = 8
    min_len: int = 1
    max_len: int = 20
    max_repeats: int = 5
    item_len: int = 3

    def sample(self, g: torch.Generator, n: int, lo: int, hi: int) -> SeqBatch:
        """n sequences with lengths (pattern length or item count) uniform in [lo, hi]."""
        seqs = []
        for _ in range(n):
            length = int(torch.randint(lo, hi + 1, (1,), generator=g))
            if self.kind == "copy":
                seqs.append(copy_sequence(g, self.bits, length))
            elif self.kind == "repeat_copy":
                reps = int(torch.randint(1, self.max_repeats + 1, (1,), generator=g))
                seqs.append(repeat_copy_sequence(g, self.bits, length, reps, self.max_repeats))
            else:
                seqs.append(recall_sequence(g, self.bits, max(length, 2), self.item_len))
        return pad_stack(seqs)


@dataclass
class SequenceSource:
    """A task's data: a generator of training batches and fixed evaluation sets."""

    spec: SequenceTaskSpec
    seed: int
    eval: SeqBatch
    generalisation: SeqBatch | None = None

    def batch(self, g: torch.Generator, n: int, max_len: int | None = None) -> SeqBatch:
        hi = self.spec.max_len if max_len is None else min(max_len, self.spec.max_len)
        return self.spec.sample(g, n, self.spec.min_len, max(hi, self.spec.min_len))


def bits_per_sequence(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked sigmoid cross-entropy summed over bits and time, in bits, mean over sequences.

    logits, target (b, t, c); mask (b, t) -> scalar.
    """
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)  # (b, t) nats
    return (ce * mask).sum(-1).mean() / math.log(2.0)


def sequences_correct(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(b,) bool: every scored bit of the sequence on the right side of 0.5."""
    wrong = ((logits > 0).float() != target).any(-1) & (mask > 0)  # (b, t)
    return ~wrong.any(-1)


@dataclass(frozen=True)
class AlgorithmicConfig:
    """Copy, repeat-copy and associative recall tasks, one task each, in the order given."""

    tasks: list[str] = field(default_factory=lambda: ["copy"])
    """task kinds in stream order, from 'copy', 'repeat_copy', 'recall'"""
    bits: int = 8
    """pattern width"""
    min_len: int = 1
    """shortest trained length (pattern steps; items for recall)"""
    max_len: int = 20
    """longest trained length"""
    gen_min_len: int = 21
    """shortest generalisation length"""
    gen_max_len: int = 40
    """longest generalisation length (0 = no generalisation set)"""
    max_repeats: int = 5
    """most repeats in repeat-copy"""
    item_len: int = 3
    """steps per item in associative recall"""
    n_eval: int = 100
    """sequences in each fixed evaluation set"""
    data_seed: int = 1234
    """seed of the evaluation sets (apart from the run seed, so every run sees the same ones)"""

    def __post_init__(self) -> None:
        check(len(self.tasks) >= 1 and all(t in TASK_NAMES for t in self.tasks), "tasks", self.tasks, f"a non-empty list of {TASK_NAMES}")
        check(self.bits >= 1, "bits", self.bits, "an integer >= 1")
        check(1 <= self.min_len <= self.max_len, "min_len", self.min_len, "an integer in [1, max_len]")
        check(self.gen_max_len == 0 or self.gen_min_len <= self.gen_max_len, "gen_min_len", self.gen_min_len, "<= gen_max_len")
        check(self.max_repeats >= 1, "max_repeats", self.max_repeats, "an integer >= 1")
        check(self.item_len >= 1, "item_len", self.item_len, "an integer >= 1")
        check(self.n_eval >= 1, "n_eval", self.n_eval, "an integer >= 1")


def algorithmic_stream(cfg: AlgorithmicConfig) -> LazyStream:
    """A stream with one `sequence` task per entry of cfg.tasks."""

    def make(i: int) -> Task:
        kind = cfg.tasks[i]
        spec = SequenceTaskSpec(kind, cfg.bits, cfg.min_len, cfg.max_len, cfg.max_repeats, cfg.item_len)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(cfg.data_seed + 7919 * i)
        ev = spec.sample(g, cfg.n_eval, cfg.min_len, cfg.max_len)
        gen = spec.sample(g, cfg.n_eval, cfg.gen_min_len, cfg.gen_max_len) if cfg.gen_max_len else None
        src = SequenceSource(spec, cfg.data_seed + i, ev, gen)
        return Task(id=i, name=f"{kind}", kind="sequence", train=src, eval=src,
                    meta={"lengths": (cfg.min_len, cfg.max_len), "gen_lengths": (cfg.gen_min_len, cfg.gen_max_len)})

    return LazyStream(f"algorithmic-{'-'.join(cfg.tasks)}", "task", len(cfg.tasks), make,
                      n_classes=cfg.bits, input_shape=(cfg.bits + 2,), meta={"bits": cfg.bits})


@register("stream", "algorithmic", AlgorithmicConfig)
def build_algorithmic(cfg: AlgorithmicConfig, env: BuildEnv) -> LazyStream:
    """Copy, repeat-copy and associative recall sequence tasks (bits per sequence)."""
    return algorithmic_stream(cfg)


@register_evaluator("sequence")
def evaluate_sequence(agent: Any, task: Task, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    """acc: share of evaluation sequences with every scored bit right; extra: bits per sequence
    at the trained lengths (`bits_per_seq`) and at the generalisation lengths (`bits_per_seq_gen`, `acc_gen`)."""
    was_training = agent.training
    agent.eval()
    src: SequenceSource = task.eval
    extra: dict[str, float] = {}
    acc = 0.0
    with torch.no_grad():
        for key, data in (("", src.eval), ("_gen", src.generalisation)):
            if data is None:
                continue
            cost = right = 0.0
            for start in range(0, len(data), batch_size):
                b = SeqBatch(*(a[start : start + batch_size] for a in data)).to(device)
                logits = agent(b.x, task.id)
                cost += float(bits_per_sequence(logits, b.y, b.mask)) * len(b)
                right += float(sequences_correct(logits, b.y, b.mask).sum())
            extra[f"bits_per_seq{key}"] = cost / len(data)
            extra[f"acc{key}"] = right / len(data)
            if not key:
                acc = right / len(data)
    agent.train(was_training)
    return EvalResult(acc, len(src.eval), extra)
