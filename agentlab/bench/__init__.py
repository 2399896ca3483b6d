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
from pathlib import Path
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
    only: tuple[str, ...] = ()
    """run only these parts (benchmark-specific names, e.g. `permuted/ewc`); empty = all parts"""
    resume: bool = False
    """reuse parts a killed or earlier `--only` invocation completed with the same settings"""
    device: str = "cpu"
    """torch device the benchmark trains on ("cpu", "cuda", "cuda:1"); benchmarks that ignore it say so"""


@dataclass
class BenchResult:
    """Flat metrics for JSON, table rows for the terminal, and each goal with whether it was met."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def goal(ok: bool, got: str) -> str:
    """A goal's verdict for `BenchResult.goals`: "met", or "NOT met (<the figure reached>)"."""
    return "met" if ok else f"NOT met ({got})"


def n_params(module: Any) -> int:
    """Parameters of a module, as benchmarks report them."""
    return sum(p.numel() for p in module.parameters())


def register_bench(name: str, parts: bool = False, device: bool = False,
                   resumable: bool | None = None) -> Callable[[Callable[[BenchArgs, BuildEnv], BenchResult]], Any]:
    """Register a benchmark; `parts=True` if it honours `BenchArgs.only`, `resumable` if it honours
    `BenchArgs.resume` (reusing completed parts, or continuing a checkpointed run; None = as `parts`),
    `device=True` if it trains on `BenchArgs.device` (the others refuse `--device` other than cpu)."""

    def wrap(fn: Callable[[BenchArgs, BuildEnv], BenchResult]) -> Any:
        fn.supports_parts = parts  # type: ignore[attr-defined]
        fn.supports_resume = parts if resumable is None else resumable  # type: ignore[attr-defined]
        fn.supports_device = device  # type: ignore[attr-defined]
        return register("bench", name, BenchArgs)(fn)

    return wrap


def run_recipe_table(name: str, overrides: list[str], args: BenchArgs, *, out_dir: Path | None = None,
                     resume: bool = False) -> dict[str, Any]:
    """Run a shipped recipe with overrides; each agent's label -> (RunResult, Agent).

    The same steps as `agentlab.runner.run_recipe`, kept here so the benchmark can read the
    agents' modules afterwards (FNNSP's fraction of weights updated, SupSup's store). With
    `out_dir`, each agent checkpoints after every task into `out_dir/<label>` and `resume`
    continues from there; without it nothing is written.
    """
    import dataclasses

    from agentlab import recipe as recipes
    from agentlab.datasets import data_root
    from agentlab.loop import run
    from agentlab.seeding import seed_everything

    rname, table = recipes.read_recipe(name)
    resolved = recipes.resolve(rname, recipes.apply_overrides(table, [f"seed={args.seed}", *overrides]))
    recipes.check_components(resolved)
    env = BuildEnv(seed=resolved.seed)
    env.data_root = data_root(args.data_root or env.data_root)
    seed_everything(resolved.seed)
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    out: dict[str, Any] = {}
    for label, spec in resolved.agents.items():
        generator = seed_everything(resolved.seed)
        agent = recipes.build_agent(label, spec, env)
        cfg = dataclasses.replace(resolved.loop, checkpoint=out_dir is not None, keep_checkpoints=1)
        agent_dir = None if out_dir is None else out_dir / label
        out[label] = (run(agent, stream, generator=generator, cfg=cfg, out_dir=agent_dir, resume=resume), agent)
    return out
