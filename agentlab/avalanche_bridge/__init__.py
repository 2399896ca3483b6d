"""The bridge to Avalanche, both ways.

    from agentlab.avalanche_bridge import from_avalanche, to_avalanche, AgentStrategy

* `from_avalanche(benchmark)`: any Avalanche benchmark (its `train_stream` and
  `test_stream`) becomes a `TaskStream` our loop runs;
* `to_avalanche(stream)`: one of our streams becomes an Avalanche benchmark;
* `AgentStrategy(agent, ...)`: any agentlab `Agent` runs as an Avalanche
  strategy, so a user's `EvaluationPlugin` (metrics, loggers) and Avalanche
  plugins (EWC, replay, ...) work unchanged on it;
* the learner `avalanche` (`agentlab.learners.avalanche_baseline`) runs
  Avalanche's baselines (Naive, EWC, SI, LwF, Replay, GEM, A-GEM) inside our
  loop, on our streams, in our report and TensorBoard layout.

Avalanche is imported only when one of these is first used (it takes seconds).
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_avalanche", "to_avalanche", "experience_of", "split_of_dataset", "AgentStrategy"]


def __getattr__(name: str) -> Any:
    if name in ("from_avalanche", "to_avalanche", "experience_of", "split_of_dataset"):
        from agentlab.avalanche_bridge import streams

        return getattr(streams, name)
    if name == "AgentStrategy":
        from agentlab.avalanche_bridge.strategy import AgentStrategy

        return AgentStrategy
    raise AttributeError(f"module 'agentlab.avalanche_bridge' has no attribute {name!r}")
