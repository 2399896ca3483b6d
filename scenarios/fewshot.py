"""Few-shot episode streams: Omniglot, and MNIST / Fashion-MNIST held-out classes.

Each task of these streams has kind `episode` (scenario `fewshot`):

* `task.train` is an `EpisodeSampler` over the *training* classes: a learner
  draws as many training episodes as it wants, of the sizes it wants
  (prototypical networks train 60-way while testing 5-way);
* `task.eval` is an `EpisodeSet` of `eval_episodes` fixed test episodes over
  the *test* classes; task i holds episodes i*E .. i*E+E-1 of one seeded
  sequence, so with `eval_episodes = 1` the stream is literally one episode per
  task. The `episode` evaluator resets every memory module before each episode.
* `task.meta` holds the test protocol: `protocol`, `ways`, `shots`, `queries`, `per_class`.

Streams: `omniglot-episodes` (standard or background/evaluation split; the
test episodes can also come from MNIST or Fashion-MNIST digits as a cross-domain
check) and `mnist-episodes` (train on some MNIST / Fashion classes, test on held-out ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.task import LazyStream, Task
import agentlab.scenarios.episode_eval  # noqa: F401  (registers the `episode` evaluator wherever these streams are built)
from agentlab.scenarios.episodes import ClassPool, EpisodeSampler, EpisodeSet
from agentlab.datasets import data_root
from agentlab.scenarios.omniglot import omniglot_split
from agentlab.scenarios.vision_data import load_tensors

def load_digits28(root: Path, name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST as (N, 1, 28, 28) floats in [0, 1] and (N,) labels (the shared loader, scaled)."""
    x, y = load_tensors(name, root, train=train)
    return x.float().div(255.0), y


def class_pool(x: torch.Tensor, y: torch.Tensor, classes: list[int], rotations: tuple[int, ...] = (0,)) -> ClassPool:
    """A pool of the examples whose label is in `classes`, relabelled 0..len(classes)-1 in that order."""
    lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    keep = lut[y] >= 0
    return ClassPool(x[keep], lut[y[keep]], rotations=rotations)


@dataclass(frozen=True)
class EpisodeTestConfig:
    """The test protocol shared by the episode streams."""

    protocol: Literal["standard", "sequential"] = "standard"
    """standard N-way K-shot Q-query episodes, or the MANN sequential protocol (label shown one step later)"""
    ways: int = 5
    """classes per test episode (N)"""
    shots: int = 1
    """labelled examples per class in a test episode (K; standard protocol)"""
    queries: int = 15
    """query examples per class in a test episode (Q; standard protocol)"""
    per_class: int = 10
    """examples of each class in a sequential episode (T = ways * per_class)"""
    eval_episodes: int = 1000
    """test episodes per task"""
    n_tasks: int = 1
    """tasks in the stream; task i holds test episodes i*E .. i*E+E-1"""
    eval_seed: int = 0
    """seed of the test episodes (kept apart from the run seed so every run sees the same episodes)"""

    def __post_init__(self) -> None:
        check(self.ways >= 2, "ways", self.ways, "an integer >= 2")
        check(self.shots >= 1, "shots", self.shots, "an integer >= 1")
        check(self.queries >= 1, "queries", self.queries, "an integer >= 1")
        check(self.per_class >= 1, "per_class", self.per_class, "an integer >= 1")
        check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        check(self.n_tasks >= 1, "n_tasks", self.n_tasks, "an integer >= 1")
        check(self.eval_seed >= 0, "eval_seed", self.eval_seed, "an integer >= 0")


def episode_stream(name: str, train_pool: ClassPool, test_pool: ClassPool, cfg: EpisodeTestConfig) -> LazyStream:
    """Tasks of kind `episode`: train = a sampler over training classes, eval = fixed test episodes."""
    if cfg.ways > test_pool.n_classes:
        raise ValueError(f"ways={cfg.ways} but the test classes number {test_pool.n_classes}")
    sampler = EpisodeSampler(train_pool, min(cfg.ways, train_pool.n_classes), cfg.shots, cfg.queries)
    meta = {"protocol": cfg.protocol, "ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries, "per_class": cfg.per_class}
    tag = f"{cfg.ways}w{cfg.shots}s" if cfg.protocol == "standard" else f"{cfg.ways}w-seq{cfg.per_class}"

    def make(i: int) -> Task:
        episodes = EpisodeSet(test_pool, cfg.eval_episodes, cfg.eval_seed, ways=cfg.ways, shots=cfg.shots,
                              queries=cfg.queries, protocol=cfg.protocol, per_class=cfg.per_class,
                              start=i * cfg.eval_episodes)
        return Task(id=i, name=f"{name}/{tag}/{i:03d}", kind="episode", train=sampler, eval=episodes, meta=meta)

    return LazyStream(name, "fewshot", cfg.n_tasks, make, n_classes=cfg.ways, input_shape=tuple(train_pool.x.shape[1:]),
                      meta={**meta, "train_classes": train_pool.n_classes, "test_classes": test_pool.n_classes})


@dataclass(frozen=True)
class OmniglotEpisodesConfig(EpisodeTestConfig):
    """Omniglot few-shot episodes (28x28), trained on one set of characters and tested on another."""

    split: Literal["standard", "background"] = "standard"
    """standard: 1,200 training / 423 test characters; background: Lake's background / evaluation sets"""
    train_rotations: bool = True
    """training classes include each character turned by 90, 180, 270 degrees as new classes"""
    test_rotations: bool = True
    """test classes include the rotations too (the prototypical-networks convention)"""
    eval_source: Literal["omniglot", "mnist", "fashion"] = "omniglot"
    """where test episodes come from: Omniglot test characters, or MNIST / Fashion digits (cross-domain check)"""
    eval_classes: list[int] = field(default_factory=lambda: list(range(10)))
    """MNIST / Fashion classes used for cross-domain test episodes"""


ROT4 = (0, 1, 2, 3)


@register("stream", "omniglot-episodes", OmniglotEpisodesConfig)
def build_omniglot_episodes(cfg: OmniglotEpisodesConfig, env: BuildEnv) -> LazyStream:
    """Omniglot N-way K-shot episodes (standard 1,200-character split, rotations as classes)."""
    root = data_root(env.data_root)
    s = omniglot_split(root, cfg.split)
    train_pool = ClassPool(s.train_x, s.train_y, rotations=ROT4 if cfg.train_rotations else (0,))
    if cfg.eval_source == "omniglot":
        test_pool = ClassPool(s.test_x, s.test_y, rotations=ROT4 if cfg.test_rotations else (0,))
        name = f"omniglot-{cfg.split}"
    else:
        x, y = load_digits28(root, cfg.eval_source, train=False)
        test_pool = class_pool(x, y, list(cfg.eval_classes))
        name = f"omniglot-to-{cfg.eval_source}"
    return episode_stream(name, train_pool, test_pool, cfg)


@dataclass(frozen=True)
class DigitEpisodesConfig(EpisodeTestConfig):
    """MNIST or Fashion-MNIST episodes: train on some classes, test on held-out ones (a cheap check)."""

    dataset: Literal["mnist", "fashion"] = "mnist"
    """which data set"""
    train_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """classes of the training episodes (from the training images)"""
    eval_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    """held-out classes of the test episodes (from the test images)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, v in (("train_classes", self.train_classes), ("eval_classes", self.eval_classes)):
            check(len(v) >= 2 and len(set(v)) == len(v) and all(0 <= c <= 9 for c in v), key, v, "at least 2 distinct classes in 0..9")
        check(not set(self.train_classes) & set(self.eval_classes), "eval_classes", self.eval_classes,
              "disjoint from train_classes (held-out classes)")
        check(self.ways <= len(self.eval_classes), "ways", self.ways, f"at most len(eval_classes) = {len(self.eval_classes)}")


@register("stream", "mnist-episodes", DigitEpisodesConfig)
def build_digit_episodes(cfg: DigitEpisodesConfig, env: BuildEnv) -> LazyStream:
    """MNIST / Fashion-MNIST few-shot episodes over held-out classes."""
    root = data_root(env.data_root)
    xtr, ytr = load_digits28(root, cfg.dataset, train=True)
    xte, yte = load_digits28(root, cfg.dataset, train=False)
    return episode_stream(f"{cfg.dataset}-heldout", class_pool(xtr, ytr, list(cfg.train_classes)),
                          class_pool(xte, yte, list(cfg.eval_classes)), cfg)
