"""The evaluator for tasks of kind `episode`: mean accuracy over test episodes, its 95% CI, and by-sighting accuracy.

A learner that can be evaluated on episodes implements

    predict_episode(agent, episode, device) -> logits

returning (N*Q, N) query logits for an `Episode` (labels 0..N-1 of that
episode), or (T, N) per-step logits for a `SequentialEpisode` (step t may use
the labels of steps < t only, which the episode supplies as `prev_label`).

Every memory module of the agent is `reset()` before each episode, so nothing
stored in one episode can leak into the next (labels mean nothing across
episodes). Recurrent state is explicit and starts from `initial_state` inside
`predict_episode`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from agentlab.evaluate import EvalResult, register_evaluator
from agentlab.scenarios.episodes import Episode, SequentialEpisode, accuracy_by_sighting, mean_ci95


def reset_memories(agent: Any) -> None:
    """Empty every memory module's stored content (between episodes)."""
    for m in agent.memories():
        m.reset()


def episode_logits(agent: Any, episode: Episode | SequentialEpisode, device: str = "cpu") -> torch.Tensor:
    learner = agent.learner
    if not hasattr(learner, "predict_episode"):
        name = getattr(learner, "name", type(learner).__name__)
        raise ValueError(
            f"learner {name!r} cannot answer episodes (it has no predict_episode); "
            "use an episode learner such as 'protonet' for streams of kind 'episode'"
        )
    return learner.predict_episode(agent, episode, device)


@dataclass
class EpisodeReport:
    """Per-episode accuracies and, for the sequential protocol, accuracy by the n-th sighting of a class."""

    accs: list[float]
    sighting_hits: torch.Tensor | None = None  # (P,)
    sighting_counts: torch.Tensor | None = None  # (P,)
    protocol: str = "standard"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return mean_ci95(self.accs)[0]

    @property
    def ci95(self) -> float:
        return mean_ci95(self.accs)[1]

    def add_sightings(self, hits: torch.Tensor, counts: torch.Tensor) -> None:
        """Add one episode's (or batch's) hits and counts by sighting (P,), padding the shorter of the two."""
        self.protocol = "sequential"
        if self.sighting_hits is None:
            self.sighting_hits, self.sighting_counts = hits, counts
            return
        p = max(hits.shape[0], self.sighting_hits.shape[0])
        pad = lambda v: torch.nn.functional.pad(v, (0, p - v.shape[0]))  # noqa: E731
        self.sighting_hits = pad(self.sighting_hits) + pad(hits)
        self.sighting_counts = pad(self.sighting_counts) + pad(counts)

    def by_sighting(self) -> list[float]:
        """Accuracy at the 1st, 2nd, ... instance of a class (sequential protocol), else []."""
        if self.sighting_counts is None:
            return []
        return (self.sighting_hits / self.sighting_counts.clamp_min(1)).tolist()

    def figures(self) -> dict[str, float]:
        out = {"ci95": self.ci95}
        for n, a in enumerate(self.by_sighting(), start=1):
            out[f"acc_sighting_{n:02d}"] = a
        return out


def evaluate_episodes(agent: Any, episodes: Iterable[Episode | SequentialEpisode], *, device: str = "cpu") -> EpisodeReport:
    """Run the agent's learner on every episode (memories reset before each) and collect accuracies."""
    was_training = agent.training
    agent.eval()
    report = EpisodeReport([])
    try:
        with _embedding_cache(agent, episodes, device):
            _collect(agent, episodes, device, report)
    finally:
        agent.train(was_training)
    return report


def _embedding_cache(agent: Any, episodes: Any, device: str) -> Any:
    """The learner's embedding cache over the episodes' pool when both exist and it saves work (standard protocol)."""
    cache = getattr(agent.learner, "embedding_cache", None)
    pool = getattr(episodes, "pool", None)
    if cache is None or pool is None or getattr(episodes, "protocol", "") != "standard":
        return nullcontext()
    per_episode = episodes.ways * (episodes.shots + episodes.queries)
    if len(episodes) * per_episode < pool.x.shape[0] * len(pool.rotations):
        return nullcontext()  # fewer images in the episodes than in the pool: embedding them directly is cheaper
    return cache(agent, pool, device)


def _collect(agent: Any, episodes: Iterable[Episode | SequentialEpisode], device: str, report: EpisodeReport) -> None:
    for ep in episodes:
        reset_memories(agent)
        with torch.no_grad():
            logits = episode_logits(agent, ep, device).cpu()
        if isinstance(ep, SequentialEpisode):
            correct = (logits.argmax(-1) == ep.y).float()  # (T,)
            report.add_sightings(*accuracy_by_sighting(correct, ep.sighting, int(ep.sighting.max()) + 1))
        else:
            correct = (logits.argmax(-1) == ep.query_y).float()  # (N*Q,)
        report.accs.append(float(correct.mean()))


@register_evaluator("episode")
def evaluate_episode_task(agent: Any, task: Any, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    """Mean accuracy over the task's test episodes; extra: `ci95` and `acc_sighting_NN` (sequential protocol). With
    the task label given at test, predictions use the task's own modules (per-task plasticity); without it, the
    modules of the task trained last."""
    answering = task.id if task.task_label_at_test else None
    with agent.predicting_for(answering):
        report = evaluate_episodes(agent, task.eval, device=device)
    return EvalResult(report.mean, len(report.accs), report.figures())
