"""Few-shot episodes: an N-way K-shot Q-query sampler and the MANN sequential protocol.

Axis legend: N ways (classes per episode), K shots (labelled examples per class),
Q queries per class, T steps of a sequential episode, C H W image axes.

Python API (used by learners, the `episode` evaluator and memory models):

    pool = ClassPool(x, y, rotations=(0, 1, 2, 3))   # images grouped by class; rotations = new classes
    sampler = EpisodeSampler(pool, ways=5, shots=1, queries=15)
    ep = sampler.sample(generator)                   # an Episode
    ep.support_x (N*K, C, H, W), ep.support_y (N*K,) in 0..N-1, ep.query_x (N*Q, ...), ep.query_y (N*Q,)

    seq = sequential_episode(pool, ways=5, per_class=10, generator=g)   # Santoro et al. 2016
    seq.x (T, C, H, W), seq.y (T,), seq.prev_label (T, N) one-hot of y[t-1] (zeros at t=0),
    seq.sighting (T,) 0 for a class's first appearance, 1 for its second...
    seq.model_input() (T, C*H*W + N): the flattened image concatenated with the previous label
    stack_sequential([seq, ...]) -> {"x": (B, T, C, H, W), "y": (B, T), "prev_label", "sighting", "inputs"}

    EpisodeSet(pool, n=600, seed=0, ways=5, shots=1, queries=15)   # a fixed, lazy list of test episodes

Episode i of an `EpisodeSet` depends only on (seed, i): every run, machine and
access order sees the same episodes. Labels 0..N-1 are assigned to the drawn
classes in random order, so they mean nothing across episodes (Santoro et al.
shuffle labels per episode so that a network must bind them in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

Protocol = Literal["standard", "sequential"]


def episode_generator(seed: int, i: int) -> torch.Generator:
    """A generator for episode `i` of a set seeded `seed`, independent of every other (seed, i)."""
    state = np.random.SeedSequence([int(seed), int(i)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ClassPool:
    """Images grouped by class. Class `c` is base class `c // R` turned by `rotations[c % R]` quarter turns.

    `x` (M, C, H, W), `y` (M,) base class ids 0..B-1 (every id present). With
    rotations (0, 1, 2, 3) the pool has 4B classes: each rotation of a character
    is a new class (Santoro et al. 2016; Vinyals et al. 2016).
    """

    def __init__(self, x: Tensor, y: Tensor, *, rotations: Sequence[int] = (0,)) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if not rotations or any(r not in (0, 1, 2, 3) for r in rotations) or len(set(rotations)) != len(rotations):
            raise ValueError(f"rotations={tuple(rotations)} must be distinct quarter turns from 0, 1, 2, 3")
        self.x = x
        self.rotations = tuple(int(r) for r in rotations)
        order = torch.argsort(y, stable=True)
        counts = torch.bincount(y, minlength=int(y.max()) + 1)
        if (counts == 0).any():
            raise ValueError("class ids must be 0..B-1 with every class present")
        self.order = order  # example indices grouped by base class
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (B+1,)
        self.n_base = counts.shape[0]

    @property
    def n_classes(self) -> int:
        return self.n_base * len(self.rotations)

    def class_size(self, c: int) -> int:
        b = c // len(self.rotations)
        return int(self.offsets[b + 1] - self.offsets[b])

    def min_class_size(self) -> int:
        return int((self.offsets[1:] - self.offsets[:-1]).min())

    def pick(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """Keys (n, 2) of `n` distinct examples of class `c` in random order: (row of `x`, quarter turns)."""
        b, r = divmod(c, len(self.rotations))
        lo, size = int(self.offsets[b]), self.class_size(c)
        if n > size:
            raise ValueError(f"class {c} has {size} examples; an episode asked for {n}")
        rows = self.order[lo + torch.randperm(size, generator=generator)[:n]]
        return torch.stack([rows, torch.full_like(rows, self.rotations[r])], dim=1)

    def images(self, keys: Tensor) -> Tensor:
        """(n, C, H, W) images of keys (n, 2) = (row, quarter turns)."""
        x = self.x[keys[:, 0]]
        for turns in keys[:, 1].unique().tolist():
            if turns:
                rows = keys[:, 1] == turns
                x[rows] = torch.rot90(x[rows], turns, dims=(-2, -1))
        return x

    def draw(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """`n` distinct examples of class `c` in random order: (n, C, H, W)."""
        return self.images(self.pick(c, n, generator))


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot Q-query episode; labels 0..N-1 index `classes` (the pool's class ids)."""

    support_x: Tensor  # (N*K, C, H, W), class-major: rows n*K .. n*K+K-1 are class n
    support_y: Tensor  # (N*K,)
    query_x: Tensor  # (N*Q, C, H, W), class-major
    query_y: Tensor  # (N*Q,)
    classes: Tensor  # (N,) pool class of each episode label
    ways: int
    shots: int
    queries: int
    protocol: str = "standard"
    support_keys: Tensor | None = None  # (N*K, 2) pool keys (row, quarter turns): lets a learner reuse cached embeddings
    query_keys: Tensor | None = None  # (N*Q, 2)


@dataclass(frozen=True)
class SequentialEpisode:
    """An episode of the MANN protocol (Santoro et al. 2016): one example per step, its label one step later.

    At step t a model sees `x[t]` and `prev_label[t]` = one-hot(y[t-1]) (zeros at
    t = 0) and must output y[t]. `sighting[t]` counts earlier steps of the same
    class, so accuracy "at the n-th instance" is accuracy over steps with
    sighting == n - 1.
    """

    x: Tensor  # (T, C, H, W)
    y: Tensor  # (T,) labels 0..N-1, shuffled per episode
    prev_label: Tensor  # (T, N)
    sighting: Tensor  # (T,)
    classes: Tensor  # (N,)
    ways: int
    protocol: str = "sequential"

    def model_input(self) -> Tensor:
        """(T, C*H*W + N): the flattened image concatenated with the one-hot previous label."""
        flat = rearrange(self.x, "t c h w -> t (c h w)")
        return torch.cat([flat, self.prev_label], dim=-1)


def _choose_classes(pool: ClassPool, ways: int, generator: torch.Generator) -> Tensor:
    if ways > pool.n_classes:
        raise ValueError(f"{ways}-way episodes need {ways} classes; the pool has {pool.n_classes}")
    return torch.randperm(pool.n_classes, generator=generator)[:ways]  # (N,) random order = shuffled labels


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a `ClassPool`; `sample(generator)` is deterministic in the generator."""

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int) -> None:
        if ways < 2 or shots < 1 or queries < 1:
            raise ValueError(f"need ways >= 2, shots >= 1, queries >= 1; got {ways}, {shots}, {queries}")
        if shots + queries > pool.min_class_size():
            raise ValueError(
                f"shots + queries = {shots + queries} exceeds the smallest class ({pool.min_class_size()} examples)"
            )
        self.pool, self.ways, self.shots, self.queries = pool, ways, shots, queries

    def sample(self, generator: torch.Generator, *, ways: int | None = None, shots: int | None = None,
               queries: int | None = None) -> Episode:
        """One episode; `ways`/`shots`/`queries` override the sampler's sizes (training episodes differ from test)."""
        n, k, q = ways or self.ways, shots or self.shots, queries or self.queries
        classes = _choose_classes(self.pool, n, generator)
        keys = torch.stack([self.pool.pick(int(c), k + q, generator) for c in classes])  # (N, K+Q, 2)
        support_keys = rearrange(keys[:, :k], "n k two -> (n k) two")
        query_keys = rearrange(keys[:, k:], "n q two -> (n q) two")
        labels = torch.arange(n)
        return Episode(
            support_x=self.pool.images(support_keys),
            support_y=labels.repeat_interleave(k),
            query_x=self.pool.images(query_keys),
            query_y=labels.repeat_interleave(q),
            classes=classes, ways=n, shots=k, queries=q,
            support_keys=support_keys, query_keys=query_keys,
        )

    def sequential(self, generator: torch.Generator, *, ways: int | None = None, per_class: int = 10) -> "SequentialEpisode":
        """One MANN-protocol episode from the same pool (for memory models trained on the sequential protocol)."""
        return sequential_episode(self.pool, ways or self.ways, per_class, generator)


def sequential_episode(pool: ClassPool, ways: int, per_class: int, generator: torch.Generator) -> SequentialEpisode:
    """A MANN episode: `per_class` examples of each of `ways` classes in random order, T = ways * per_class."""
    classes = _choose_classes(pool, ways, generator)
    drawn = torch.stack([pool.draw(int(c), per_class, generator) for c in classes])  # (N, P, C, H, W)
    x = rearrange(drawn, "n p c h w -> (n p) c h w")
    y = torch.arange(ways).repeat_interleave(per_class)
    order = torch.randperm(x.shape[0], generator=generator)
    x, y = x[order], y[order]
    prev = torch.zeros(y.shape[0], ways)
    prev[1:] = torch.nn.functional.one_hot(y[:-1], ways).float()  # label of step t-1 shown at step t
    seen = torch.nn.functional.one_hot(y, ways).cumsum(0) - 1  # (T, N) running count per class, minus self
    sighting = seen.gather(1, y[:, None]).squeeze(1)
    return SequentialEpisode(x, y, prev, sighting, classes, ways)


def stack_sequential(episodes: Sequence[SequentialEpisode]) -> dict[str, Tensor]:
    """A batch of B sequential episodes of equal length: x (B, T, C, H, W), y (B, T), prev_label (B, T, N),
    sighting (B, T), inputs (B, T, C*H*W + N) (`model_input` of each), for memory models trained on batches."""
    if not episodes or len({(e.x.shape, e.ways) for e in episodes}) != 1:
        raise ValueError("stack_sequential needs at least one episode, all of the same length and ways")
    return {
        "x": torch.stack([e.x for e in episodes]),
        "y": torch.stack([e.y for e in episodes]),
        "prev_label": torch.stack([e.prev_label for e in episodes]),
        "sighting": torch.stack([e.sighting for e in episodes]),
        "inputs": torch.stack([e.model_input() for e in episodes]),
    }


class EpisodeSet:
    """A fixed, lazy list of `n` episodes: item i is episode `start + i` of the sequence seeded `seed`,
    and depends only on (seed, start + i).

    `protocol="standard"` gives `Episode`s (ways, shots, queries);
    `protocol="sequential"` gives `SequentialEpisode`s (ways, per_class).
    """

    def __init__(self, pool: ClassPool, n: int, seed: int, *, ways: int, shots: int = 1, queries: int = 15,
                 protocol: Protocol = "standard", per_class: int = 10, start: int = 0) -> None:
        if n < 1:
            raise ValueError(f"an episode set needs n >= 1, got {n}")
        if protocol not in ("standard", "sequential"):
            raise ValueError(f"protocol={protocol!r} must be 'standard' or 'sequential'")
        self.pool, self.n, self.seed, self.protocol, self.per_class = pool, n, seed, protocol, per_class
        self.start = start
        self.ways, self.shots, self.queries = ways, shots, queries
        self.sampler = EpisodeSampler(pool, ways, shots, queries) if protocol == "standard" else None
        if protocol == "sequential" and per_class > pool.min_class_size():
            raise ValueError(f"per_class={per_class} exceeds the smallest class ({pool.min_class_size()} examples)")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Episode | SequentialEpisode:
        if not 0 <= i < self.n:
            raise IndexError(f"episode {i} of {self.n}")
        g = episode_generator(self.seed, self.start + i)
        if self.sampler is not None:
            return self.sampler.sample(g)
        return sequential_episode(self.pool, self.ways, self.per_class, g)

    def __iter__(self) -> Iterator[Episode | SequentialEpisode]:
        for i in range(self.n):
            yield self[i]


def accuracy_by_sighting(correct: Tensor, sighting: Tensor, max_sighting: int) -> tuple[Tensor, Tensor]:
    """Per-sighting (hits, counts), each (max_sighting,): entry n counts steps at the (n+1)-th instance of a class."""
    keep = sighting < max_sighting
    s = sighting[keep]
    hits = torch.bincount(s, weights=correct[keep].double(), minlength=max_sighting)
    counts = torch.bincount(s, minlength=max_sighting).double()
    return hits, counts


def mean_ci95(values: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval, 1.96 * s / sqrt(n) (s: sample std).

    The convention of few-shot papers (Vinyals et al. 2016; Snell et al. 2017): mean over test episodes.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("mean_ci95 of no values")
    if v.numel() == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / v.numel() ** 0.5)
