"""Few-shot learning with the memory transformer: the `memtrans-conv4` backbone and the `memtrans` episode learner.

Axis legend: B episodes, T steps, E image embedding dim, N ways, D model dim.

Every step of an episode becomes one input row [e(x_t), e(x_bound), onehot(label)] (F = 2E + N):

* N-way K-shot ("standard"): the N*K support steps carry their own image as x_bound
  and their label, and write to memory; then each query step carries [e(x_q), 0, 0],
  writes nothing, and attends only to the support steps and itself (queries are
  answered independently of each other). Logits are read at the query steps.
* MANN sequential protocol (Santoro et al. 2016): step t carries e(x_t) and the
  previous step's image and label, [e(x_t), e(x_{t-1}), onehot(y_{t-1})], so the label
  revealed at t is bound to the image it belongs to and written at t; every step writes
  and is scored (accuracy by n-th sighting).

The image embedding is the Conv-4 of matching / prototypical networks (Vinyals et al.
2016; Snell et al. 2017): four blocks of 3x3 conv (64), batch norm, ReLU, 2x2 max-pool.
The learner meta-trains everything end to end over episodes (Adam); episodes of both
protocols can be mixed. Memory starts empty for every episode (`reset = "episode"`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import check
from agentlab.learners.sgd import backward_step
from agentlab.registry import BuildEnv, register
from memory.memory_transformer import MemoryTransformer, MemoryTransformerConfig


def conv4(channels: int = 64) -> nn.Sequential:
    """(B, 1, 28, 28) -> (B, 64): 4 x [conv3x3, BN, ReLU, maxpool2], then global average."""
    blocks, c_in = [], 1
    for _ in range(4):
        blocks += [nn.Conv2d(c_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        c_in = channels
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@dataclass(frozen=True)
class MemTransNetConfig:
    """Conv-4 image embedding, memory transformer, linear read-out over the episode's N labels."""

    ways: int = 5
    """labels per episode (the read-out size)"""
    channels: int = 64
    """Conv-4 width = image embedding size"""
    memory: MemoryTransformerConfig = field(default_factory=lambda: MemoryTransformerConfig(in_features=1))
    """the memory transformer (in_features is set from the embedding and ways)"""

    def __post_init__(self) -> None:
        check(self.ways >= 2, "ways", self.ways, "an integer >= 2")
        check(self.channels >= 1, "channels", self.channels, "an integer >= 1")


class MemTransNet(nn.Module):
    def __init__(self, cfg: MemTransNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e, n = cfg.channels, cfg.ways
        mem_cfg = MemoryTransformerConfig(**{**cfg.memory.__dict__, "in_features": 2 * e + n, "address_features": e})
        self.embed = conv4(e)
        self.memory = MemoryTransformer(mem_cfg)
        self.head = nn.Linear(mem_cfg.dim, n)

    def forward(self, x: Tensor) -> Tensor:
        """Image embeddings (B, E) (a classification call has no episode context)."""
        return self.embed(x)

    def run(self, rows: Tensor, write_mask: Tensor | None = None, attend: Tensor | None = None) -> Tensor:
        """rows (B, T, F) -> logits (B, T, N); memory starts empty unless the memory is configured to carry it.

        Reads are addressed by the current image's embedding, writes by the embedding of the
        image whose label the row carries (MANN's content-based addressing).
        """
        e = self.cfg.channels
        y, state = self.memory(rows, self.memory.start_state(rows.shape[0], rows.device), write_mask=write_mask,
                               attend=attend, read_address=rows[..., :e], write_address=rows[..., e : 2 * e])
        self.memory.keep(state)
        return self.head(y)


def _img(x: Tensor, device: str) -> Tensor:
    x = x.to(device)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def standard_rows(net: MemTransNet, ep: Any, device: str) -> tuple[Tensor, Tensor, Tensor, int]:
    """(rows (1, T, F), write mask (1, T), blocked attention (T, T), number of support steps) of an N-way K-shot episode."""
    n = net.cfg.ways
    xs, xq = _img(ep.support_x, device), _img(ep.query_x, device)
    z = net.embed(torch.cat([xs, xq]))  # (S+Q, E)
    s = xs.shape[0]
    zs, zq = z[:s], z[s:]
    lab = F.one_hot(ep.support_y.to(device), n).float()
    support = torch.cat([zs, zs, lab], -1)
    query = torch.cat([zq, torch.zeros_like(zq), torch.zeros(zq.shape[0], n, device=device)], -1)
    rows = torch.cat([support, query])[None]  # (1, T, F)
    t = rows.shape[1]
    write = torch.zeros(1, t, dtype=torch.bool, device=device)
    write[:, :s] = True
    idx = torch.arange(t, device=device)
    allowed = (idx[None, :] < s) & (idx[None, :] <= idx[:, None]) | (idx[None, :] == idx[:, None])
    return rows, write, ~allowed, s


def sequential_rows(net: MemTransNet, ep: Any, device: str) -> Tensor:
    """rows (1, T, F) of a MANN sequential episode: [e(x_t), e(x_{t-1}), onehot(y_{t-1})]."""
    z = net.embed(_img(ep.x, device))  # (T, E)
    prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]])
    return torch.cat([z, prev, ep.prev_label.to(device).float()], -1)[None]


@dataclass(frozen=True)
class MemTransLearnerConfig:
    """Meta-training of the memory transformer over episodes."""

    episodes: int = 20000
    """training episodes (one optimiser step per batch of `batch` episodes)"""
    batch: int = 8
    """episodes per optimiser step"""
    lr: float = 1e-3
    """Adam learning rate"""
    protocol: Literal["standard", "sequential", "both"] = "both"
    """which episodes to train on; 'both' alternates"""
    shots: list[int] = field(default_factory=lambda: [1, 5])
    """support sizes drawn for standard training episodes"""
    queries: int = 5
    """queries per class in standard training episodes"""
    per_class: int = 10
    """examples per class in sequential training episodes"""
    time_budget_s: float = 0.0
    """stop meta-training after this many seconds (a CPU budget); 0 = no limit"""
    grad_clip: float = 1.0
    """global gradient-norm clip; 0 = off"""

    def __post_init__(self) -> None:
        check(self.episodes >= 0, "episodes", self.episodes, "an integer >= 0")
        check(self.batch >= 1, "batch", self.batch, "an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(all(s >= 1 for s in self.shots) and len(self.shots) > 0, "shots", self.shots, "a non-empty list of integers >= 1")


class MemTransLearner:
    """`fit` meta-trains on episodes from `task.train` (an episode sampler); `predict_episode` answers one episode."""

    name = "memtrans"

    def __init__(self, cfg: MemTransLearnerConfig) -> None:
        self.cfg = cfg
        self.episodes_done = 0
        self.train_s = 0.0

    def batch_loss(self, net: MemTransNet, eps: list[Any], device: str) -> tuple[Tensor, float]:
        """Mean cross-entropy and accuracy over episodes of one kind and size, run as one (B, T, F) batch."""
        if getattr(eps[0], "protocol", "standard") == "sequential":
            logits = net.run(torch.cat([sequential_rows(net, ep, device) for ep in eps]))  # (B, T, N)
            y = torch.stack([ep.y for ep in eps]).to(device)
        else:
            parts = [standard_rows(net, ep, device) for ep in eps]
            rows, write = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            s = parts[0][3]
            logits = net.run(rows, write, parts[0][2])[:, s:]  # (B, Q, N)
            y = torch.stack([ep.query_y for ep in eps]).to(device)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, float((logits.argmax(-1) == y).float().mean())

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        if task.kind != "episode":
            raise ValueError(f"learner 'memtrans' trains episode tasks; task {task.name!r} is a {task.kind!r} task")
        net: MemTransNet = agent.backbone
        sampler, c = task.train, self.cfg
        opt = torch.optim.Adam(agent.trainable_parameters(), lr=c.lr)
        agent.train()
        start = time.perf_counter()
        step = 0
        while self.episodes_done < c.episodes:
            # one kind and one size per step, so the episodes stack into one batch
            kind = c.protocol if c.protocol != "both" else ("standard", "sequential")[step % 2]
            if kind == "sequential":
                eps = [sampler.sequential(ctx.generator, ways=net.cfg.ways, per_class=c.per_class) for _ in range(c.batch)]
            else:
                shots = c.shots[int(torch.randint(len(c.shots), (1,), generator=ctx.generator))]
                eps = [sampler.sample(ctx.generator, ways=net.cfg.ways, shots=shots, queries=c.queries) for _ in range(c.batch)]
            loss, acc = self.batch_loss(net, eps, ctx.device)
            backward_step(opt, loss, agent.trainable_parameters(), c.grad_clip)
            agent.after_step(ctx.global_step)
            ctx.step({"episode_ce": float(loss.detach()), "episode_acc": acc}, c.batch)
            self.episodes_done += c.batch
            step += 1
            if c.time_budget_s and time.perf_counter() - start > c.time_budget_s:
                break
        self.train_s = time.perf_counter() - start

    def predict_episode(self, agent: Any, episode: Any, device: str = "cpu") -> Tensor:
        net: MemTransNet = agent.backbone
        if getattr(episode, "protocol", "standard") == "sequential":
            return net.run(sequential_rows(net, episode, device))[0]
        rows, write, blocked, s = standard_rows(net, episode, device)
        return net.run(rows, write, blocked)[0, s:]

    def state_dict(self) -> dict[str, Any]:
        return {"episodes_done": self.episodes_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes_done = int(state["episodes_done"])

    def state_bytes(self) -> int:
        return 0


@register("backbone", "memtrans-conv4", MemTransNetConfig)
def build_memtrans_net(cfg: MemTransNetConfig, env: BuildEnv) -> MemTransNet:
    """Conv-4 embedding + memory transformer (500-slot LRU key-value memory) for few-shot episodes."""
    return MemTransNet(cfg)


@register("learner", "memtrans", MemTransLearnerConfig)
def build_memtrans_learner(cfg: MemTransLearnerConfig, env: BuildEnv) -> MemTransLearner:
    """Meta-trains the memory transformer over N-way K-shot and MANN sequential episodes."""
    return MemTransLearner(cfg)
