"""Benchmarks: commands that measure accuracy, speed and memory and write JSON.

A benchmark is a function registered with `@register_bench("name")` taking
`BenchArgs` and returning a `BenchResult`; `agentlab bench NAME [--quick]
[--json PATH]` runs it, prints its table and writes
`{"bench", "mode", "metrics": {flat figures}, "rows", "goals", "wall_s", "versions"}`.
Every benchmark has a full mode (the headline figure) and a quick mode (the
same code on real data with a smaller budget, under 2 minutes on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class BenchArgs:
    """What every benchmark takes."""

    quick: bool = False
    """the small-budget mode (under 2 minutes on 2 cores)"""
    seed: int = 0
    """random seed"""
    data_root: str = ""
    """where data sets live ('' = the default data root)"""


@dataclass
class BenchResult:
    """Flat metrics for JSON, table rows for the terminal, and each goal with whether it was met."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def register_bench(name: str) -> Callable[[Callable[[BenchArgs, BuildEnv], BenchResult]], Any]:
    return register("bench", name, BenchArgs)
