"""Few-shot evaluation: N-way K-shot test accuracy of an episode learner, trained from a recipe or loaded from a run
directory (the library behind `agentlab fewshot`).

From Python, three lines:

    from agentlab import fewshot
    agent = fewshot.load_agent("runs/omniglot-episodes__protonet-omniglot__0__...")   # its last checkpoint
    print(fewshot.evaluate(agent, ways=5, shots=1, episodes=600))   # protonet: 5-way 1-shot 97.10% ± 0.30% ...

`evaluate` draws its test episodes from a stream (default `omniglot-episodes`: Omniglot's test characters) and
reports the mean accuracy with its 95% confidence interval (1.96 standard errors over episodes) and, for the
sequential protocol (`protocol="sequential"`), the accuracy at each sighting of a class.

The command either trains: the recipe names an episode stream and agents with an episode learner; its flags
override the stream's test protocol; each agent is trained on the stream's first task (its training classes; the
command first says how many episodes and about how long) and evaluated on the task's test episodes. Or, with
`--from RUN_DIR`, it rebuilds each agent of a finished run from the run's config.json, loads its last checkpoint
and evaluates it without training.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from agentlab.context import FitContext, Progress, StopRequested, duration, say
from agentlab.errors import UserError

DEFAULT_RECIPE = "protonet-omniglot"
DEFAULT_STREAM = "omniglot-episodes"
PROBE_STEPS = 3  # training steps timed (on a copy of the agent) before training, for the announced duration


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
    setting: str = ""
    """"5-way 1-shot" or "5-way sequential (10 per class)\""""
    checkpoint: str = ""
    """the checkpoint evaluated (`--from`), else empty"""

    def __str__(self) -> str:
        what = f"{self.setting} " if self.setting else ""
        line = f"{self.agent}: {what}{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}% (95% CI) over {self.episodes} test episodes"
        if self.by_sighting:
            line += "; by sighting " + " ".join(f"{n}:{100 * a:.1f}%" for n, a in enumerate(self.by_sighting, start=1))
        return line


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
    say(f"building stream {resolved.table['stream']['name']!r} (the first time, its data set is unpacked and cached)")
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    task = stream[0]
    if task.kind != "episode":
        raise UserError(f"stream {stream.name!r} has tasks of kind {task.kind!r}; `agentlab fewshot` needs an episode stream")
    return stream, task, env


def setting(meta: dict[str, Any]) -> str:
    if meta.get("protocol") == "sequential":
        return f"{meta['ways']}-way sequential ({meta['per_class']} per class)"
    return f"{meta['ways']}-way {meta['shots']}-shot"


# ---------------------------------------------------------------------------------------------- training


def planned_episodes(spec: dict[str, Any]) -> int | None:
    """Training episodes an agent's learner is set to (its `episodes` key, from the recipe or its default)."""
    from agentlab import registry
    from agentlab.config import ConfigError, build_config

    table = spec["learner"]
    try:
        cfg = build_config(registry.get("learner", table["name"]).config_cls, {k: v for k, v in table.items() if k != "name"})
    except ConfigError:
        return None
    return getattr(cfg, "episodes", None)


def seconds_per_step(agent: Any, task: Any, generator: Any, device: str, steps: int = PROBE_STEPS) -> float | None:
    """The time of one training step, measured on a copy of the agent (its learner included) with a copy of the
    random states, which are put back: the training that follows is the one it would be without the probe."""
    from agentlab.seeding import rng_state, set_rng_state

    saved = rng_state(generator)
    probe = copy.deepcopy(agent)
    g = copy.deepcopy(generator)
    stamps: list[float] = []
    ctx = FitContext(generator=g, task_index=0, n_tasks=1, device=device, log_every=10**9,
                     progress=lambda info: stamps.append(time.perf_counter()),
                     should_stop=lambda: len(stamps) >= steps)
    try:
        probe.start_task(task)
        probe.learner.fit(probe, task, ctx)
    except StopRequested:
        pass
    finally:
        set_rng_state(saved, generator)
        del probe
    if len(stamps) < 2:
        return None
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def train_agent(resolved: Any, label: str, env: Any, task: Any, *, hint: str = "") -> tuple[Any, float, int]:
    """Build agent `label` of the recipe and train it on the task's training classes: (agent, seconds, episodes).
    It first says how many episodes and about how long (timed on a copy; `hint` follows), then shows a bar with the
    loss and ETA (when progress is shown)."""
    from agentlab import recipe as recipes
    from agentlab.seeding import seed_everything

    device = resolved.loop.device
    generator = seed_everything(resolved.seed, deterministic=resolved.deterministic)
    spec = resolved.agents[label]
    agent = recipes.build_agent(label, spec, env).to(device)
    planned = planned_episodes(spec)
    budget = float(spec["learner"].get("time_budget_s", 0) or 0)
    if planned is not None:
        announce = f"training agent {label!r} on {planned:,} episodes (learner.episodes)"
        per_step = seconds_per_step(agent, task, generator, device) if planned > 10 * PROBE_STEPS else None
        if per_step is not None:
            total = per_step * planned if not budget else min(per_step * planned, budget)
            announce += f": about {duration(total)} at {per_step:.2f} s an episode"
            announce += " (capped by learner.time_budget_s)" if budget and budget < per_step * planned else ""
        say(announce + (f"; {hint}" if hint else ""))
    with Progress(f"{label} training", 1.0) as bar:
        def advance(info: dict[str, Any]) -> None:
            n, of = info["task_step"], info["planned"] or planned or 0
            bar.to(min(n / of, 1.0) if of else 0.0, f"episode {n:,}/{of:,}, loss {info['loss']:.3f}" if of
                   else f"step {n:,}, loss {info['loss']:.3f}")

        ctx = FitContext(generator=generator, task_index=0, n_tasks=1, device=device, progress=advance)
        if planned:
            ctx.plan(planned)
        t0 = time.perf_counter()
        agent.start_task(task)
        agent.learner.fit(agent, task, ctx)
        agent.end_task(task)
    return agent, time.perf_counter() - t0, getattr(agent.learner, "episodes_done", ctx.global_step)


# ---------------------------------------------------------------------------------------------- saved agents


def open_run(run_dir: Path | str, overrides: list[str] | None = None, data_root: Path | None = None) -> tuple[Any, Any, Any, Any]:
    """(resolved recipe, stream, its first task, build env) of a run directory, its [stream] table changed by
    `overrides` (`stream.ways=20`...); the data root saved in the run unless given (or missing here)."""
    from agentlab import recipe as recipes
    from agentlab.datasets import data_root as default_root
    from agentlab.runner import load_run_config

    name, table, saved_root, _ = load_run_config(Path(run_dir))
    resolved = recipes.resolve(name, recipes.apply_overrides(table, list(overrides or [])))
    root = data_root or (saved_root if saved_root is not None and saved_root.is_dir() else default_root())
    stream, task, env = prepare(resolved, root)
    return resolved, stream, task, env


def load_saved(run_dir: Path | str, label: str, resolved: Any, env: Any) -> tuple[Any, Path]:
    """Agent `label` of a run rebuilt from its config and loaded from its newest usable checkpoint: (agent, the
    checkpoint's folder). A `UserError` names what is missing."""
    from agentlab import recipe as recipes
    from agentlab.checkpoint import load_latest
    from agentlab.runstate import CHECKPOINTS

    if label not in resolved.agents:
        raise UserError(f"--agent {label!r}: the run has no such agent; its agents: {', '.join(resolved.agents)}")
    folder = Path(run_dir) / label / CHECKPOINTS
    found = load_latest(folder) if folder.is_dir() else None
    if found is None:
        raise UserError(f"agent {label!r} has no usable checkpoint in {folder}: it saves one after each task "
                        "(with loop.checkpoint = true); a run stopped before its first task ended has none")
    path, state = found
    agent = recipes.build_agent(label, resolved.agents[label], env)
    try:
        agent.load_state_dict(state["agent"])
        if agent.learner is not None:
            agent.learner.load_state_dict(state.get("learner", {}))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint {path} does not fit agent {label!r} as config.json builds it: "
                        f"{type(e).__name__}: {e}".replace("\n", " ")) from None
    loop = state.get("loop", {})
    if isinstance(loop.get("next_task"), int):
        agent.current_task = loop["next_task"] - 1  # the task it trained last, as the loop left it
    return agent.to(resolved.loop.device), path


def load_agent(run_dir: Path | str, label: str | None = None, *, data_root: Path | str | None = None) -> Any:
    """A saved agent of a run directory (`agentlab run`'s), with its last checkpoint loaded; `label` may be left
    out when the run has one agent."""
    resolved, _, _, env = open_run(run_dir, data_root=Path(data_root) if data_root else None)
    if label is None:
        if len(resolved.agents) != 1:
            raise UserError(f"{run_dir} holds agents {', '.join(resolved.agents)}: say which (label=...)")
        label = next(iter(resolved.agents))
    return load_saved(run_dir, label, resolved, env)[0]


# ---------------------------------------------------------------------------------------------- evaluation


class _Shown:
    """The test episodes as `evaluate_episodes` reads them, advancing a progress bar as they are drawn."""

    def __init__(self, episodes: Any, bar: Progress) -> None:
        self._episodes, self._bar = episodes, bar

    def __getattr__(self, name: str) -> Any:
        return getattr(self._episodes, name)

    def __len__(self) -> int:
        return len(self._episodes)

    def __iter__(self) -> Iterator[Any]:
        n = len(self._episodes)
        for i, ep in enumerate(self._episodes):
            yield ep
            self._bar.to(i + 1, f"episode {i + 1:,}/{n:,}")


def evaluate_shown(agent: Any, episodes: Any, *, device: str = "cpu", desc: str = "evaluating") -> Any:
    """`evaluate_episodes` with a progress bar over the episodes (when progress is shown): its `EpisodeReport`."""
    from agentlab.scenarios.episode_eval import evaluate_episodes

    with Progress(desc, len(episodes)) as bar:
        bar.phase("preparing the test episodes")
        return evaluate_episodes(agent, _Shown(episodes, bar), device=device)


def evaluate_task(agent: Any, task: Any, *, device: str = "cpu", label: str = "") -> FewShotResult:
    """Mean accuracy, 95% CI and accuracy by sighting over the test episodes of an episode task."""
    label = label or agent.label
    t0 = time.perf_counter()
    report = evaluate_shown(agent, task.eval, device=device, desc=f"{label} evaluating")
    return FewShotResult(label, report.mean, report.ci95, len(report.accs), 0.0, time.perf_counter() - t0, 0,
                         report.by_sighting(), setting(task.meta))


def evaluate(agent: Any, *, ways: int, shots: int = 1, episodes: int = 1000, queries: int = 15,
             protocol: str = "standard", per_class: int = 10, stream: str = DEFAULT_STREAM,
             data_root: Path | str | None = None, device: str | None = None, seed: int = 0,
             **stream_keys: Any) -> FewShotResult:
    """`episodes` fixed N-way K-shot test episodes (Q queries per class; or the sequential protocol with
    `per_class` examples of each class) from `stream`'s first task, answered by `agent`'s learner. Other keys of
    the stream (`split="background"`, `eval_source="mnist"`) go through `stream_keys`; `seed` picks the episodes."""
    from agentlab import registry
    from agentlab.datasets import data_root as default_root
    from agentlab.plugins import load_plugins

    load_plugins()
    table = {"name": stream, "ways": ways, "shots": shots, "queries": queries, "eval_episodes": episodes,
             "protocol": protocol, "per_class": per_class, "n_tasks": 1, "eval_seed": seed, **stream_keys}
    root = Path(data_root) if data_root else default_root()
    say(f"building stream {stream!r}")
    built = registry.build("stream", table, registry.BuildEnv(seed=seed, data_root=root), where="stream")
    task = built[0]
    if task.kind != "episode":
        raise UserError(f"stream {stream!r} has tasks of kind {task.kind!r}; few-shot evaluation needs an episode stream")
    if device is None:
        device = next((p.device.type for p in agent.parameters()), "cpu")
    return evaluate_task(agent, task, device=device)


def run_fewshot(resolved: Any, data_root: Path | None) -> tuple[Any, list[FewShotResult]]:
    """Train every agent of the recipe on task 0's training classes; evaluate on its test episodes."""
    stream, task, env = prepare(resolved, data_root)
    results = []
    hint = "--train-episodes N trains fewer; --from RUN_DIR evaluates a saved agent without training"
    for label in resolved.agents:
        agent, train_s, done = train_agent(resolved, label, env, task, hint=hint)
        r = evaluate_task(agent, task, device=resolved.loop.device, label=label)
        results.append(dataclasses.replace(r, train_s=train_s, train_episodes=done))
    return stream, results


def run_saved(run_dir: Path, overrides: list[str], data_root: Path | None,
              labels: list[str] | None = None) -> tuple[Any, list[FewShotResult]]:
    """Evaluate the saved agents of a run directory (all, or `labels`) on the test episodes its stream, changed by
    `overrides`, gives; nothing is trained."""
    resolved, stream, task, env = open_run(run_dir, overrides, data_root)
    results = []
    for label in labels or list(resolved.agents):
        agent, path = load_saved(run_dir, label, resolved, env)
        say(f"agent {label!r}: loaded {path}")
        r = evaluate_task(agent, task, device=resolved.loop.device, label=label)
        results.append(dataclasses.replace(r, checkpoint=str(path)))
    return stream, results


def format_results(stream: Any, results: list[FewShotResult]) -> str:
    m = stream.meta
    if m["protocol"] == "sequential":
        head = f"{stream.name}: {m['ways']}-way sequential (MANN) episodes, {m['per_class']} per class"
    else:
        head = f"{stream.name}: {m['ways']}-way {m['shots']}-shot, {m['queries']} queries per class"
    lines = [head]
    for r in results:
        how = (f"saved agent: {r.checkpoint}; evaluated in {r.eval_s:.1f} s" if r.checkpoint else
               f"trained {r.train_episodes} episodes in {r.train_s:.1f} s; evaluated in {r.eval_s:.1f} s")
        lines.append(f"  {r.agent}: {100 * r.mean:.2f}% ± {100 * r.ci95:.2f}% (95% CI) over {r.episodes} test episodes"
                     f"   [{how}]")
        if r.by_sighting:
            cells = "  ".join(f"{n}:{100 * a:.1f}%" for n, a in enumerate(r.by_sighting, start=1))
            lines.append(f"    accuracy by sighting of a class: {cells}")
    return "\n".join(lines)
