"""`memtrans`: meta-training of the memory transformer (`memtrans-conv4` backbone) over few-shot episodes.

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

The learner meta-trains everything end to end over episodes (Adam); episodes of both
protocols can be mixed. Memory starts empty for every episode (`reset = "episode"`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.backbones.memtrans import MemTransNet
from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepDriver, StepOutput
from agentlab.learners.base import BudgetCosine
from agentlab.optim import OptimizerConfig, make_optimizer
from agentlab.registry import BuildEnv, register


def _img(x: Tensor, device: str) -> Tensor:
    x = x.to(device)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def embed_all(net: MemTransNet, images: list[Tensor], device: str) -> list[Tensor]:
    """Embed several image batches in one Conv-4 call (one batch-norm batch): [(n_i, C, H, W)] -> [(n_i, E)]."""
    z = net.embed(torch.cat([_img(x, device) for x in images]))
    return list(z.split([x.shape[0] for x in images]))


def standard_rows(net: MemTransNet, eps: list[Any], device: str) -> tuple[Tensor, Tensor, Tensor, int]:
    """(rows (B, T, F), write mask (B, T), blocked attention (T, T), number of support steps S) of B N-way K-shot
    episodes of one size: support rows [e(x), e(x), onehot(y)] write, query rows [e(x), 0, 0] do not."""
    n = net.cfg.ways
    z = embed_all(net, [x for ep in eps for x in (ep.support_x, ep.query_x)], device)
    s = eps[0].support_x.shape[0]
    rows = []
    for ep, zs, zq in zip(eps, z[0::2], z[1::2]):
        support = torch.cat([zs, zs, F.one_hot(ep.support_y.to(device), n).float()], -1)
        query = torch.cat([zq, torch.zeros_like(zq), zq.new_zeros(zq.shape[0], n)], -1)
        rows.append(torch.cat([support, query]))
    rows_t = torch.stack(rows)  # (B, T, F)
    b, t = rows_t.shape[:2]
    write = torch.zeros(b, t, dtype=torch.bool, device=device)
    write[:, :s] = True
    idx = torch.arange(t, device=device)
    allowed = (idx[None, :] < s) & (idx[None, :] <= idx[:, None]) | (idx[None, :] == idx[:, None])
    return rows_t, write, ~allowed, s


def sequential_rows(net: MemTransNet, eps: list[Any], device: str) -> tuple[Tensor, Tensor]:
    """(rows (B, T, F), write mask (B, T)) of B MANN sequential episodes: row t = [e(x_t), e(x_{t-1}), onehot(y_{t-1})].

    Row t writes the binding (x_{t-1}, y_{t-1}) revealed at step t; row 0 has nothing to bind and does not write.
    """
    rows = []
    for ep, z in zip(eps, embed_all(net, [ep.x for ep in eps], device)):
        prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]])
        rows.append(torch.cat([z, prev, ep.prev_label.to(device).float()], -1))
    rows_t = torch.stack(rows)
    write = torch.ones(rows_t.shape[:2], dtype=torch.bool, device=device)
    write[:, 0] = False
    return rows_t, write


def is_sequential(eps: list[Any]) -> bool:
    """Whether a batch of episodes (all of one kind) follows the MANN sequential protocol."""
    return getattr(eps[0], "protocol", "standard") == "sequential"


def targets(eps: list[Any]) -> Tensor:
    """Labels the logits of `MemTransLearner.logits` are scored against: (B, T) per step or (B, Q) per query."""
    return torch.stack([ep.y for ep in eps] if is_sequential(eps) else [ep.query_y for ep in eps])


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
    cosine_lr: bool = False
    """anneal the learning rate to 0 along a cosine over the run's progress (the larger of the episode and time fractions)"""

    def __post_init__(self) -> None:
        check(self.episodes >= 0, "episodes", self.episodes, "an integer >= 0")
        check(self.batch >= 1, "batch", self.batch, "an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, "a number >= 0")
        check(all(s >= 1 for s in self.shots) and len(self.shots) > 0, "shots", self.shots, "a non-empty list of integers >= 1")


class MemTransLearner:
    """`fit` meta-trains on episodes from `task.train` (an episode sampler); `predict_episode` answers one episode."""

    name = "memtrans"

    def __init__(self, cfg: MemTransLearnerConfig) -> None:
        self.cfg = cfg
        self.episodes_done = 0
        self.train_s = 0.0

    @staticmethod
    def logits(net: MemTransNet, eps: list[Any], device: str) -> Tensor:
        """Logits of B episodes of one kind and size: (B, T, N) per step (sequential) or (B, Q, N) per query."""
        if is_sequential(eps):
            rows, write = sequential_rows(net, eps, device)
            return net.run(rows, write)
        rows, write, blocked, s = standard_rows(net, eps, device)
        return net.run(rows, write, blocked)[:, s:]

    @staticmethod
    def _loss(logits: Tensor, y: Tensor) -> tuple[Tensor, float]:
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, float((logits.argmax(-1) == y).float().mean())

    def batch_loss(self, net: MemTransNet, eps: list[Any], device: str) -> tuple[Tensor, float]:
        """Mean cross-entropy and accuracy over episodes of one kind and size, run as one (B, T, F) batch."""
        return self._loss(self.logits(net, eps, device), targets(eps).to(device))

    def episode_step(self, agent: Any, eps: list[Any], task_id: int, device: str) -> StepOutput:
        """One training step's loss for the step driver, the backbone run with every module set to `task_id`. The
        modules' loss terms see the logits of the scored steps and, as the batch (also what the memories are
        written with), the episodes' images with their episode labels (0..N-1)."""
        with agent.task_context(task_id):
            logits = self.logits(agent.backbone, eps, device)
        loss, acc = self._loss(logits, targets(eps).to(device))
        if is_sequential(eps):
            x, y = torch.cat([ep.x for ep in eps]), torch.cat([ep.y for ep in eps])
        else:
            x = torch.cat([t for ep in eps for t in (ep.support_x, ep.query_x)])
            y = torch.cat([t for ep in eps for t in (ep.support_y, ep.query_y)])
        seen = Batch(_img(x, device), y.to(device), task_id)
        return StepOutput({"episode_ce": loss}, logits, seen, logs={"episode_acc": acc}, examples=len(eps))

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        if task.kind != "episode":
            raise ValueError(f"learner 'memtrans' trains episode tasks; task {task.name!r} is a {task.kind!r} task")
        net: MemTransNet = agent.backbone
        sampler, c = task.train, self.cfg
        opt = make_optimizer(agent.trainable_parameters(), OptimizerConfig(lr=c.lr, optimizer="adam"))
        first = self.episodes_done
        schedule = BudgetCosine(opt, c.lr, c.episodes - first, units_per_step=c.batch, time_budget_s=c.time_budget_s) if c.cosine_lr else None
        driver = StepDriver(agent, opt, ctx, grad_clip=c.grad_clip, schedule=schedule)
        start = time.perf_counter()

        def batches(epoch: int) -> Iterator[list[Any]]:
            step = 0
            while self.episodes_done < c.episodes:
                # one kind and one size per step, so the episodes stack into one batch
                kind = c.protocol if c.protocol != "both" else ("standard", "sequential")[step % 2]
                if kind == "sequential":
                    yield [sampler.sequential(ctx.generator, ways=net.cfg.ways, per_class=c.per_class) for _ in range(c.batch)]
                else:
                    shots = c.shots[int(torch.randint(len(c.shots), (1,), generator=ctx.generator))]
                    yield [sampler.sample(ctx.generator, ways=net.cfg.ways, shots=shots, queries=c.queries) for _ in range(c.batch)]
                step += 1

        def counted(logged: dict[str, float]) -> None:
            self.episodes_done += c.batch

        out_of_time = (lambda: time.perf_counter() - start > c.time_budget_s) if c.time_budget_s else None
        driver.run(batches, lambda eps: self.episode_step(agent, eps, task.id, ctx.device), until=out_of_time, on_step=counted,
                   steps=-(-(c.episodes - first) // c.batch))
        self.train_s = time.perf_counter() - start

    def predict_episode(self, agent: Any, episode: Any, device: str = "cpu") -> Tensor:
        """Logits of one episode, every module set to `agent.prediction_task` (the evaluated task, else the last trained)."""
        with agent.task_context(agent.prediction_task):
            return self.logits(agent.backbone, [episode], device)[0]

    @torch.no_grad()
    def evaluate_set(self, agent: Any, episodes: Any, device: str = "cpu", batch: int = 50) -> Any:
        """The episode evaluator's `EpisodeReport` over a fixed `EpisodeSet`, `batch` episodes per forward pass.

        Same figures as `agentlab.scenarios.episode_eval.evaluate_episodes` (each episode starts from an empty
        memory; batch norm in evaluation mode, so an episode's logits do not depend on its batch), faster.
        """
        from agentlab.scenarios.episode_eval import EpisodeReport, reset_memories
        from agentlab.scenarios.episodes import accuracy_by_sighting

        was_training = agent.training
        agent.eval()
        report = EpisodeReport([])
        try:
            for lo in range(0, len(episodes), batch):
                eps = [episodes[i] for i in range(lo, min(lo + batch, len(episodes)))]
                reset_memories(agent)
                with agent.task_context(agent.prediction_task):
                    logits = self.logits(agent.backbone, eps, device)
                correct = (logits.argmax(-1).cpu() == targets(eps)).float()
                report.accs += correct.mean(1).tolist()
                if is_sequential(eps):
                    sighting = torch.cat([ep.sighting for ep in eps])
                    report.add_sightings(*accuracy_by_sighting(correct.reshape(-1), sighting, int(sighting.max()) + 1))
        finally:
            agent.train(was_training)
        return report

    def state_dict(self) -> dict[str, Any]:
        return {"episodes_done": self.episodes_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes_done = int(state["episodes_done"])

    def state_bytes(self) -> int:
        return 0


@register("learner", "memtrans", MemTransLearnerConfig)
def build_memtrans_learner(cfg: MemTransLearnerConfig, env: BuildEnv) -> MemTransLearner:
    """Meta-trains the memory transformer over N-way K-shot and MANN sequential episodes."""
    return MemTransLearner(cfg)
