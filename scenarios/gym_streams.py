"""Continual reinforcement-learning streams on gymnasium: each task an environment (kind "env", scenario "rl").

    cartpole-physics   task 0 the default CartPole-v1; task i > 0 multiplies gravity, masscart, masspole, length,
                       force_mag and tau by factors drawn from N(1, scale^2) with the task's seed (Sequoia's recipe)
    cartpole-po        the same tasks with the velocities hidden (position and angle only, POPGym's
                       PositionOnlyCartPole): only a memory can recover them
    minigrid           MiniGrid rooms one after another (Empty, DoorKey, LavaGap by default; the `minigrid` extra)
    classic-control    CartPole, Acrobot and MountainCar: observations zero-padded to the widest (6), actions the
                       widest set (3) with each task's own actions unmasked (`Task.classes`), so one agent sizes its
                       input and output for all of them

Every task's budget is `budget_steps` environment steps (a learner may override it); its evaluation is the mean
return over `eval_episodes` episodes seeded `eval_seed`, `eval_seed` + 1, ..., normalised by the random policy's
return and the solved return (`agentlab.scenarios.env_task`). Task labels are given at test time (`task_label_at_test`),
as in Continual World. The physics draws depend on the stream's `seed`, not the run's, so every run and method sees the
same stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.env_task import EnvEval, EnvSpec, EnvTrain
from agentlab.task import LazyStream, Task

CARTPOLE_PHYSICS = ("gravity", "masscart", "masspole", "length", "force_mag", "tau")
CARTPOLE_DEFAULTS = {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5, "force_mag": 10.0, "tau": 0.02}
CARTPOLE_SOLVED = 475.0  # gymnasium's reward_threshold for CartPole-v1 (returns are capped at 500)


@dataclass(frozen=True)
class EnvStreamConfig:
    """What every environment stream shares: budget and evaluation protocol."""

    budget_steps: int = 100_000
    """environment steps each task trains for (the learner's total_steps overrides it when set)"""
    eval_episodes: int = 20
    """episodes of every evaluation (one environment each, reset with its fixed seed)"""
    eval_seed: int = 10_000
    """seed of the first evaluation episode (the others follow it); also seeds the random policy's actions"""
    greedy: bool = True
    """evaluate the most likely action (false: sample actions with the evaluation's own generator)"""
    clip: bool = True
    """cap the normalised return at 1 (a return at or above the solved return counts as solved)"""

    def __post_init__(self) -> None:
        check(self.budget_steps >= 1, "budget_steps", self.budget_steps, "an integer >= 1")
        check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        check(self.eval_seed >= 0, "eval_seed", self.eval_seed, "an integer >= 0")


@dataclass(frozen=True)
class CartPoleStreamConfig(EnvStreamConfig):
    """CartPole-v1 tasks with physics drawn per task."""

    n_tasks: int = 5
    """tasks in the stream (any number)"""
    scale: float = 0.2
    """standard deviation of the multiplicative physics factors, drawn from N(1, scale^2)"""
    min_factor: float = 0.25
    """factors below this are raised to it (a negative mass or time step is not a CartPole)"""
    seed: int = 0
    """seed of the physics draws: task i draws with the seed (seed, i)"""
    max_episode_steps: int = 500
    """episode cap (CartPole-v1's 500)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_tasks >= 1, "n_tasks", self.n_tasks, "an integer >= 1")
        check(self.scale >= 0, "scale", self.scale, "a number >= 0")
        check(0 < self.min_factor <= 1, "min_factor", self.min_factor, "in (0, 1]")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, "an integer >= 1")


def cartpole_physics(cfg: CartPoleStreamConfig, i: int) -> dict[str, float]:
    """Task i's physics: the defaults for task 0, else each multiplied by a factor from N(1, scale^2) drawn with (seed, i)."""
    if i == 0:
        return dict(CARTPOLE_DEFAULTS)
    factors = np.random.default_rng([cfg.seed, i]).normal(1.0, cfg.scale, len(CARTPOLE_PHYSICS))
    return {k: CARTPOLE_DEFAULTS[k] * float(max(f, cfg.min_factor)) for k, f in zip(CARTPOLE_PHYSICS, factors)}


def _env_task(i: int, name: str, spec: EnvSpec, cfg: EnvStreamConfig, solved: float, *, classes: tuple[int, ...] | None = None,
              meta: dict | None = None) -> Task:
    ev = EnvEval(spec, episodes=cfg.eval_episodes, seed=cfg.eval_seed, solved_return=solved, greedy=cfg.greedy, clip=cfg.clip)
    return Task(id=i, name=name, kind="env", train=EnvTrain(spec, cfg.budget_steps), eval=ev, classes=classes,
                task_label_at_test=True, meta={"env_id": spec.env_id, "solved_return": solved, **(meta or {})})


def cartpole_stream(name: str, cfg: CartPoleStreamConfig, keep: tuple[int, ...] = ()) -> LazyStream:
    def make(i: int) -> Task:
        physics = cartpole_physics(cfg, i)
        spec = EnvSpec("CartPole-v1", params=tuple(physics.items()) if i else (), keep=keep,
                       max_episode_steps=cfg.max_episode_steps)
        return _env_task(i, f"{name}-{i}", spec, cfg, CARTPOLE_SOLVED, meta={"physics": physics})

    width = len(keep) if keep else 4
    return LazyStream(name, "rl", cfg.n_tasks, make, n_classes=2, input_shape=(width,),
                      meta={"outputs": "2 action logits"})


@register("stream", "cartpole-physics", CartPoleStreamConfig)
def build_cartpole_physics(cfg: CartPoleStreamConfig, env: BuildEnv) -> LazyStream:
    """CartPole-v1 with physics (gravity, masses, pole length, force, time step) drawn per task."""
    return cartpole_stream("cartpole-physics", cfg)


@dataclass(frozen=True)
class CartPolePOConfig(CartPoleStreamConfig):
    """CartPole tasks whose observations hide the velocities (position and angle only)."""

    n_tasks: int = 1
    """tasks in the stream (task 0 the default physics, later ones drawn as in cartpole-physics)"""


@register("stream", "cartpole-po", CartPolePOConfig)
def build_cartpole_po(cfg: CartPolePOConfig, env: BuildEnv) -> LazyStream:
    """CartPole with the cart's and the pole's velocities hidden: a memory must recover them."""
    return cartpole_stream("cartpole-po", cfg, keep=(0, 2))


@dataclass(frozen=True)
class MiniGridStreamConfig(EnvStreamConfig):
    """MiniGrid environments one after another (needs the `minigrid` package)."""

    envs: list[str] = field(default_factory=lambda: ["MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-LavaGapS5-v0"])
    """MiniGrid ids, one task each, in order"""
    solved_return: float = 0.9
    """return counted as solved (MiniGrid pays 1 - 0.9 * steps / max_steps on reaching the goal, 0 otherwise)"""
    budget_steps: int = 200_000
    """environment steps each task trains for"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.envs) >= 1 and all(e.startswith("MiniGrid-") for e in self.envs), "envs", self.envs,
              "a non-empty list of MiniGrid ids (MiniGrid-...)")
        check(0 < self.solved_return <= 1, "solved_return", self.solved_return, "in (0, 1]")


@register("stream", "minigrid", MiniGridStreamConfig)
def build_minigrid(cfg: MiniGridStreamConfig, env: BuildEnv) -> LazyStream:
    """MiniGrid rooms (Empty, DoorKey, LavaGap) as tasks: a 7x7 partial view, 7 actions (the `minigrid` extra)."""
    specs = [EnvSpec(e, image=True, package="minigrid") for e in cfg.envs]
    width, actions = specs[0].shapes  # every MiniGrid id gives a 7x7x3 view and 7 actions

    def make(i: int) -> Task:
        return _env_task(i, cfg.envs[i].removeprefix("MiniGrid-"), specs[i], cfg, cfg.solved_return)

    return LazyStream("minigrid", "rl", len(specs), make, n_classes=actions, input_shape=(width,),
                      meta={"outputs": f"{actions} action logits"})


# gymnasium's reward thresholds (the registered `reward_threshold`) of the discrete classic-control tasks
CLASSIC_SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "MountainCar-v0": -110.0}


@dataclass(frozen=True)
class ClassicControlConfig(EnvStreamConfig):
    """Classic-control tasks of different observation and action sizes, padded to the widest."""

    envs: list[str] = field(default_factory=lambda: ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
    """gymnasium ids with discrete actions, one task each (known solved returns: CartPole-v1, Acrobot-v1, MountainCar-v0)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.envs) >= 1 and all(e in CLASSIC_SOLVED for e in self.envs), "envs", self.envs,
              f"a non-empty list of {', '.join(CLASSIC_SOLVED)}")


@register("stream", "classic-control", ClassicControlConfig)
def build_classic_control(cfg: ClassicControlConfig, env: BuildEnv) -> LazyStream:
    """CartPole, Acrobot, MountainCar in turn: observations zero-padded, each task's actions unmasked."""
    shapes = [EnvSpec(e).shapes for e in cfg.envs]
    width, actions = max(s[0] for s in shapes), max(s[1] for s in shapes)
    specs = [EnvSpec(e, pad_to=width) for e in cfg.envs]

    def make(i: int) -> Task:
        own = tuple(range(shapes[i][1]))
        return _env_task(i, cfg.envs[i], specs[i], cfg, CLASSIC_SOLVED[cfg.envs[i]],
                         classes=own if len(own) < actions else None, meta={"observation_width": shapes[i][0]})

    return LazyStream("classic-control", "rl", len(specs), make, n_classes=actions, input_shape=(width,),
                      meta={"outputs": f"{actions} action logits (each task its first ones)"})
