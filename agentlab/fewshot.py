"""Few-shot evaluation: train an episode learner from a recipe, then report N-way K-shot test accuracy
(the library behind `agentlab fewshot`).

The recipe names an episode stream (e.g. `omniglot-episodes`) and agents with
an episode learner (e.g. `protonet`). The command overrides the stream's test
protocol with the flags, trains each agent on the stream's first task (its
training classes) and evaluates it on E fixed test episodes, printing the mean
accuracy with its 95% confidence interval (1.96 standard errors over episodes),
and for the sequential protocol the accuracy at each sighting of a class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentlab.errors import UserError

DEFAULT_RECIPE = "protonet-omniglot"


@dataclass
class FewShotResult:
    agent: str
    mean: float
    ci95: float
    episodes: int
    train_s: float
    eval_s: float
    train_episodes: int
    by_sighting: list[float]


def protocol_overrides(ways: int, shots: int, queries: int | None, episodes: int | None,
                       protocol: str | None, per_class: int | None) -> list[str]:
    """`--set` strings putting the command's flags into the recipe's [stream] table."""
    out = [f"stream.ways={ways}", f"stream.shots={shots}", "stream.n_tasks=1"]
    for key, v in (("queries", queries), ("eval_episodes", episodes), ("per_class", per_class)):
        if v is not None:
            out.append(f"stream.{key}={v}")
    if protocol is not None:
        out.append(f'stream.protocol="{protocol}"')
    return out


def prepare(resolved: Any, data_root: Path | None) -> tuple[Any, Any, Any]:
    """(stream, its first task, the build env) for a resolved recipe with an episode stream."""
    from agentlab import recipe as recipes
    from agentlab.registry import BuildEnv
    from agentlab.seeding import seed_everything

    recipes.check_components(resolved)
    env = BuildEnv(seed=resolved.seed, data_root=data_root)
    seed_everything(resolved.seed, deterministic=resolved.deterministic)
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    task = stream[0]
    if task.kind != "episode":
        raise UserError(f"stream {stream.name!r} has tasks of kind {task.kind!r}; `agentlab fewshot` needs an episode stream")
    return stream, task, env


def train_agent(resolved: Any, label: str, env: Any, task: Any) -> tuple[Any, float, int]:
    """Build agent `label` of the recipe and train it on the task's training classes: (agent, seconds, episodes)."""
    from agentlab import recipe as recipes
    from agentlab.context import FitContext
    from agentlab.seeding import seed_everything

    device = resolved.loop.device
    generator = seed_everything(resolved.seed, deterministic=resolved.deterministic)
    agent = recipes.build_agent(label, resolved.agents[label], env).to(device)
    ctx = FitContext(generator=generator, task_index=0, n_tasks=1, device=device)
    t0 = time.perf_counter()
    agent.start_task(task)
    agent.learner.fit(agent, task, ctx)
    agent.end_task(task)
    return agent, time.perf_counter() - t0, getattr(agent.learner, "episodes_done", ctx.global_step)


def run_fewshot(resolved: Any, data_root: Path | None) -> tuple[Any, list[FewShotResult]]:
    """Train every agent of the recipe on task 0's training classes; evaluate on its test episodes."""
    from agentlab.scenarios.episode_eval import evaluate_episodes

    stream, task, env = prepare(resolved, data_root)
    results = []
    for label in resolved.agents:
        agent, train_s, done = train_agent(resolved, label, env, task)
        t0 = time.perf_counter()
        report = evaluate_episodes(agent, task.eval, device=resolved.loop.device)
        eval_s = time.perf_counter() - t0
        results.append(FewShotResult(label, report.mean, report.ci95, len(report.accs), train_s, eval_s, done,
                                     report.by_sighting()))
    return stream, results


def format_results(stream: Any, results: list[FewShotResult]) -> str:
    m = stream.meta
    if m["protocol"] == "sequential":
        head = f"{stream.name}: {m['ways']}-way sequential (MANN) episodes, {m['per_class']} per class"
    else:
        head = f"{stream.name}: {m['ways']}-way {m['shots']}-shot, {m['queries']} queries per class"
    lines = [head]
    for r in results:
        lines.append(f"  {r.agent}: {100 * r.mean:.2f}% ± {100 * r.ci95:.2f}% (95% CI) over {r.episodes} test episodes"
                     f"   [trained {r.train_episodes} episodes in {r.train_s:.1f} s; evaluated in {r.eval_s:.1f} s]")
        if r.by_sighting:
            cells = "  ".join(f"{n}:{100 * a:.1f}%" for n, a in enumerate(r.by_sighting, start=1))
            lines.append(f"    accuracy by sighting of a class: {cells}")
    return "\n".join(lines)
