"""Prototypical networks (Snell, Swersky & Zemel, NeurIPS 2017): the reference few-shot learner.

Axis legend: N ways, K shots, Q queries per class, S support examples, M query
examples, D embedding size, T steps of a sequential episode.

Each class's prototype is the mean embedding of its support examples (eq. 1),
c_n = 1/|S_n| sum_{x in S_n} f(x); a query is classified by a softmax over
negative squared Euclidean distances to the prototypes (eq. 2),
p(y = n | x) ∝ exp(-||f(x) - c_n||^2). Training is episodic: each step samples
an episode from the training classes and minimises the query cross-entropy.
The paper trains Omniglot with 60-way episodes, 5 queries per class and the
test's number of shots, Adam at 1e-3 halved every 2,000 episodes.

Under the MANN sequential protocol (Santoro et al. 2016) the same network is
applied online: at step t the prototypes are built from steps < t, whose
labels the protocol has revealed; a class not seen yet has no prototype and
gets logit -inf (at the first step every class is unseen and the logits are 0).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor

from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepDriver, StepOutput
from agentlab.learners.base import StatelessLearner, TorchSchedule
from agentlab.optim import OptimizerConfig, make_optimizer
from agentlab.registry import BuildEnv, register


def prototypes(z: Tensor, y: Tensor, ways: int) -> Tensor:
    """(S, D) support embeddings with labels (S,) in 0..N-1 -> (N, D) class means (Snell et al. eq. 1)."""
    one_hot = F.one_hot(y, ways).to(z.dtype)  # (S, N)
    sums = einsum(one_hot, z, "s n, s d -> n d")
    return sums / one_hot.sum(0).clamp_min(1)[:, None]


def neg_sq_dist(q: Tensor, c: Tensor) -> Tensor:
    """(M, D) queries, (N, D) prototypes -> (M, N) logits -||q - c||^2 (Snell et al. eq. 2)."""
    return -torch.cdist(q, c).pow(2)


def sequential_logits(z: Tensor, y: Tensor, ways: int) -> Tensor:
    """(T, D) step embeddings, labels (T,) -> (T, N) logits using, at step t, only the labels of steps < t."""
    one_hot = F.one_hot(y, ways).to(z.dtype)  # (T, N)
    per_step = einsum(one_hot, z, "t n, t d -> t n d")
    sums = per_step.cumsum(0) - per_step  # exclusive running sums: steps < t
    counts = one_hot.cumsum(0) - one_hot  # (T, N)
    protos = sums / counts.clamp_min(1)[..., None]  # (T, N, D)
    d = (z[:, None, :] - protos).pow(2).sum(-1)  # (T, N)
    logits = -d.masked_fill(counts == 0, float("inf"))
    none_seen = (counts == 0).all(-1)
    return torch.where(none_seen[:, None], torch.zeros_like(logits), logits)


@dataclass(frozen=True)
class ProtoNetConfig:
    """Episodic training of an embedding network with prototypes (Snell et al. 2017)."""

    episodes: int = 5000
    """training episodes (one optimiser step each) per task"""
    train_ways: int = 60
    """classes per training episode (60 for Omniglot in the paper)"""
    train_shots: int = 0
    """support examples per class in training episodes; 0 = the test episodes' shots"""
    train_queries: int = 5
    """query examples per class in training episodes"""
    lr: float = 1e-3
    """Adam learning rate"""
    lr_halve_every: int = 2000
    """halve the learning rate every this many episodes (paper: 2,000); 0 = never"""
    weight_decay: float = 0.0
    """L2 penalty"""
    time_budget_s: float = 0.0
    """stop training when the next episode (at the mean episode time so far) would end past this many seconds; 0 = no limit"""

    def __post_init__(self) -> None:
        check(self.episodes >= 0, "episodes", self.episodes, "an integer >= 0")
        check(self.train_ways >= 2, "train_ways", self.train_ways, "an integer >= 2")
        check(self.train_shots >= 0, "train_shots", self.train_shots, "an integer >= 0")
        check(self.train_queries >= 1, "train_queries", self.train_queries, "an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.lr_halve_every >= 0, "lr_halve_every", self.lr_halve_every, "an integer >= 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, "a number >= 0")


class ProtoNet(StatelessLearner):
    """Learner: `fit` trains on episodes from `task.train` (an `EpisodeSampler`); `predict_episode` answers test episodes."""

    name = "protonet"

    def __init__(self, cfg: ProtoNetConfig) -> None:
        self.cfg = cfg
        self.episodes_done = 0  # training episodes of the last `fit` (less than cfg.episodes when the time budget ran out)

    @staticmethod
    def embed(agent: Any, x: Tensor, task_id: int | None = None) -> Tensor:
        """(B, D) embeddings with every module set to `task_id` (prediction: `agent.prediction_task`)."""
        return agent(x, task_id if task_id is not None else agent.prediction_task).flatten(1)

    def episode_loss(self, agent: Any, ep: Any, device: str, task_id: int | None = None) -> StepOutput:
        """The query cross-entropy of one episode (Snell et al. eq. 2), with its accuracy logged; the modules' loss
        terms see the episode's support and query examples (episode labels 0..N-1) and their embeddings."""
        x = torch.cat([ep.support_x, ep.query_x]).to(device)
        z = self.embed(agent, x, task_id)  # one batch: BN sees the whole episode
        zs, zq = z[: ep.support_x.shape[0]], z[ep.support_x.shape[0] :]
        logits = neg_sq_dist(zq, prototypes(zs, ep.support_y.to(device), ep.ways))  # (M, N)
        yq = ep.query_y.to(device)
        acc = float((logits.argmax(-1) == yq).float().mean())
        batch = Batch(x, torch.cat([ep.support_y.to(device), yq]), task_id)
        return StepOutput({"ce": F.cross_entropy(logits, yq)}, z, batch, logs={"train_episode_acc": acc}, examples=yq.shape[0])

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        if task.kind != "episode":
            raise ValueError(f"learner 'protonet' trains on tasks of kind 'episode'; {task.name!r} is {task.kind!r}")
        c = self.cfg
        if c.episodes == 0:
            return
        shots = c.train_shots or int(task.meta.get("shots", 1))
        ways = min(c.train_ways, task.train.pool.n_classes)
        opt = make_optimizer(agent.trainable_parameters(), OptimizerConfig(lr=c.lr, optimizer="adam", weight_decay=c.weight_decay))
        schedule = TorchSchedule(torch.optim.lr_scheduler.StepLR(opt, c.lr_halve_every, 0.5)) if c.lr_halve_every else None
        driver = StepDriver(agent, opt, ctx, schedule=schedule)
        start, self.episodes_done = time.perf_counter(), 0

        def out_of_time() -> bool:  # stop before an episode would overrun, at the mean episode time so far
            elapsed = time.perf_counter() - start
            return elapsed + elapsed / max(self.episodes_done, 1) > c.time_budget_s

        def episodes(epoch: int) -> Iterator[Any]:
            for _ in range(c.episodes):
                yield task.train.sample(ctx.generator, ways=ways, shots=shots, queries=c.train_queries)

        def counted(logged: dict[str, float]) -> None:
            self.episodes_done += 1

        driver.run(episodes, lambda ep: self.episode_loss(agent, ep, ctx.device, task.id), steps=c.episodes,
                   until=out_of_time if c.time_budget_s else None,
                   on_step=counted)

    @contextmanager
    def embedding_cache(self, agent: Any, pool: Any, device: str = "cpu", batch: int = 1024) -> Iterator[None]:
        """Embed every example of `pool` (each rotation) once; episodes with pool keys then look embeddings up.

        Exact in evaluation mode, where batch norm uses its running statistics and
        an image's embedding does not depend on the rest of the batch: 1,000 test
        episodes then cost one pass over the test pool instead of 1,000 passes.
        """
        if getattr(self, "_table", None) is not None and getattr(self, "_table_pool", None) is pool:
            yield  # already inside a cache of this pool (re-entrant: several episode sets share one pass)
            return
        table: Tensor | None = None  # (M, 4, D) by (row, quarter turns)
        with torch.no_grad():
            for turns in pool.rotations:
                for lo in range(0, pool.x.shape[0], batch):
                    x = pool.x[lo : lo + batch]
                    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
                    z = self.embed(agent, x.to(device))
                    if table is None:
                        table = z.new_zeros(pool.x.shape[0], 4, z.shape[1])
                    table[lo : lo + batch, turns] = z
        outer = getattr(self, "_table", None), getattr(self, "_table_pool", None)
        self._table, self._table_pool = table, pool
        try:
            yield
        finally:
            self._table, self._table_pool = outer

    def _embed_keyed(self, agent: Any, x: Tensor, keys: Tensor | None, device: str) -> Tensor:
        table = getattr(self, "_table", None)
        if table is not None and keys is not None:
            return table[keys[:, 0], keys[:, 1]]
        return self.embed(agent, x.to(device))

    def predict_episode(self, agent: Any, episode: Any, device: str = "cpu") -> Tensor:
        """(N*Q, N) query logits for an `Episode`; (T, N) step logits for a `SequentialEpisode`."""
        if getattr(episode, "protocol", "standard") == "sequential":
            return sequential_logits(self.embed(agent, episode.x.to(device)), episode.y.to(device), episode.ways)
        zs = self._embed_keyed(agent, episode.support_x, episode.support_keys, device)
        zq = self._embed_keyed(agent, episode.query_x, episode.query_keys, device)
        return neg_sq_dist(zq, prototypes(zs, episode.support_y.to(device), episode.ways))


@register("learner", "protonet", ProtoNetConfig)
def build_protonet(cfg: ProtoNetConfig, env: BuildEnv) -> ProtoNet:
    """Prototypical networks: episodic training, nearest class mean in embedding space."""
    return ProtoNet(cfg)
