"""The `env` task kind: a gymnasium environment as one task of a stream, and how it is evaluated.

A task of kind "env" holds

    train   EnvTrain(spec, budget_steps)     the environment factory and the training budget (environment steps)
    eval    EnvEval(spec, episodes, seed, ...) the evaluation protocol: mean return over `episodes` episodes whose
                                             resets are seeded seed, seed + 1, ..., with the random policy's and
                                             the solved return that normalise it

`EnvSpec` is the factory: a gymnasium id, the task's parameters (CartPole's physics) and the observation
wrappers, all gymnasium's own (`TransformObservation`, `FlattenObservation`, `TimeLimit`); `EnvSpec.vector(n)` is
gymnasium's `SyncVectorEnv` of n copies with episode statistics recorded (`RecordEpisodeStatistics`).

The agent is the policy: its outputs are the action logits, as a classifier's are over classes (A = the stream's
widest action set, its `n_classes`; a task with fewer actions uses the first ones, the others masked through
`Task.classes`), so a backbone sized from the stream needs no other setting. Value functions are the learners' own
(PPO's critic): they serve training only, never acting or evaluating.

Evaluation (the evaluator registered for "env") runs the agent greedily (argmax of the logits; `greedy = false`
samples with a generator of its own, so evaluating never moves the training's random state) on `episodes`
environments at once, each reset with its fixed seed, until every one has ended its first episode. Its accuracy
is the *normalised* return

    acc = (return - random) / (solved - random),  capped at 1 (`clip`)

(`random`: the uniform random policy's mean return under the same protocol; `solved`: the task's solved return),
so the return matrix R[i][j] lies roughly in [0, 1] and ACC, BWT, FWT and forgetting keep their meaning; the raw
mean return and its spread are in the evaluation's extras (`return`, `return_sd`, `length`, `episodes`,
`random_return`, `solved_return`, `solved`).

Memories whose state is carried between forward calls (attached with `reset = "episode"`) see one step per call,
(N, 1, F), are reset with `agent.reset_memory()` before the episodes and row by row at episode ends; an agent
without one sees (N, F).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from agentlab.agent import restrict_to_classes
from agentlab.attachment import PER_CALL, AttachedMemory
from agentlab.errors import UserError
from agentlab.evaluate import EvalResult, register_evaluator

# CartPole's quantities computed from the parameters a task changes (gymnasium's CartPoleEnv.__init__).
_DERIVED = {"total_mass": lambda e: e.masspole + e.masscart, "polemass_length": lambda e: e.masspole * e.length}


@dataclass(frozen=True)
class EnvSpec:
    """How to build one task's environment: a gymnasium id, its parameters and observation wrappers."""

    env_id: str
    """gymnasium id ("CartPole-v1", "MiniGrid-DoorKey-5x5-v0", ...)"""
    params: tuple[tuple[str, float], ...] = ()
    """attributes of the unwrapped environment set after it is made (CartPole's gravity, masscart, masspole,
    length, force_mag, tau; the quantities derived from them are recomputed)"""
    keep: tuple[int, ...] = ()
    """indices of the flat observation the agent sees (cartpole-po keeps position and angle); () = all"""
    pad_to: int = 0
    """zero-pad the flat observation to this width (streams mixing observation sizes); 0 = no padding"""
    image: bool = False
    """MiniGrid: the agent's partial view only (minigrid's ImgObsWrapper), flattened and scaled by 1/10"""
    max_episode_steps: int = 0
    """gymnasium's TimeLimit; 0 = the id's registered limit"""
    package: str = ""
    """module that registers the id ("minigrid"); imported first, with a clear message when missing"""

    def make(self) -> Any:
        """A fresh gymnasium environment of this task (float32 flat observations)."""
        import gymnasium as gym
        from gymnasium.wrappers import FlattenObservation, TransformObservation

        if self.package:
            from agentlab.extras import require

            require(self.package, extra=self.package, feature=f"environment {self.env_id!r}")
        kw = {"max_episode_steps": self.max_episode_steps} if self.max_episode_steps else {}
        try:
            env = gym.make(self.env_id, **kw)
        except gym.error.Error as e:
            raise UserError(f"environment {self.env_id!r} cannot be made by gymnasium: {e}") from None
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise UserError(f"environment {self.env_id!r} has a {type(env.action_space).__name__} action space; "
                            "env tasks take discrete actions (the agent's logits choose one)")
        base = env.unwrapped
        for k, v in self.params:
            if not hasattr(base, k):
                raise UserError(f"environment {self.env_id!r} has no parameter {k!r} to set")
            setattr(base, k, float(v))
        for k, f in _DERIVED.items():
            if self.params and hasattr(base, k):
                setattr(base, k, f(base))
        if self.image:
            from minigrid.wrappers import ImgObsWrapper

            env = FlattenObservation(ImgObsWrapper(env))
        elif not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
            env = FlattenObservation(env)
        scale = 0.1 if self.image else 1.0
        width = int(env.observation_space.shape[0])
        keep = np.array(self.keep if self.keep else range(width), dtype=np.int64)
        out = max(self.pad_to, len(keep))

        def view(obs: np.ndarray, keep: np.ndarray = keep, out: int = out, scale: float = scale) -> np.ndarray:
            v = np.zeros(out, dtype=np.float32)
            v[: len(keep)] = np.asarray(obs, dtype=np.float32)[keep] * scale
            return v

        space = gym.spaces.Box(-np.inf, np.inf, (out,), np.float32)
        return TransformObservation(env, view, space)

    def vector(self, n: int) -> Any:
        """gymnasium's SyncVectorEnv of n copies (an ended episode's environment resets in the same step; its last
        observation is in info["final_obs"]) with `RecordEpisodeStatistics` (info["episode"] at episode ends)."""
        from gymnasium.vector import AutoresetMode, SyncVectorEnv
        from gymnasium.wrappers.vector import RecordEpisodeStatistics

        return RecordEpisodeStatistics(SyncVectorEnv([self.make] * n, autoreset_mode=AutoresetMode.SAME_STEP))

    @functools.cached_property
    def shapes(self) -> tuple[int, int]:
        """(observation width, number of actions) of this task's environment."""
        env = self.make()
        try:
            return int(env.observation_space.shape[0]), int(env.action_space.n)
        finally:
            env.close()


@dataclass(frozen=True)
class EnvTrain:
    """What a learner trains on: the environment factory and a budget of environment steps."""

    spec: EnvSpec
    budget_steps: int


@dataclass(frozen=True)
class EnvEval:
    """The evaluation protocol of one task: mean return over `episodes` episodes with fixed seeds, normalised."""

    spec: EnvSpec
    episodes: int = 20
    seed: int = 10_000
    solved_return: float = 475.0
    greedy: bool = True
    clip: bool = True

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.episodes)]

    @property
    def random_return(self) -> float:
        """The uniform random policy's mean return under this protocol (computed once per process)."""
        return random_policy_return(self.spec, self.episodes, self.seed)

    def normalise(self, ret: float) -> float:
        return normalised_return(ret, self.random_return, self.solved_return, clip=self.clip)


def normalised_return(ret: float, random: float, solved: float, *, clip: bool = True) -> float:
    """(ret - random) / (solved - random): 0 = the random policy, 1 = solved; capped at 1 with `clip`."""
    if not solved > random:
        raise ValueError(f"the solved return {solved} must exceed the random policy's return {random}")
    v = (ret - random) / (solved - random)
    return min(v, 1.0) if clip else v


# ---------------------------------------------------------------------------- running episodes


def run_episodes(spec: EnvSpec, seeds: Sequence[int], act: Callable[[np.ndarray], np.ndarray],
                 on_done: Callable[[np.ndarray], None] = lambda done: None) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths (len(seeds),) of the first episode of one environment per seed, run side by side.

    `act(obs (N, F)) -> actions (N,)`; `on_done(done (N,) bool)` after every step whose episodes ended (memories
    reset there). Steps of environments whose first episode has ended are ignored."""
    n = len(seeds)
    envs = spec.vector(n)
    try:
        obs, _ = envs.reset(seed=list(seeds))
        returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
        running = np.ones(n, dtype=bool)
        while running.any():
            obs, reward, term, trunc, _ = envs.step(act(obs))
            returns += np.where(running, reward, 0.0)
            lengths += running
            done = np.logical_or(term, trunc)
            running &= ~done
            if done.any():
                on_done(done)
        return returns, lengths
    finally:
        envs.close()


@functools.cache
def random_policy_return(spec: EnvSpec, episodes: int, seed: int) -> float:
    """Mean return of uniformly random actions over the protocol's episodes (actions seeded by `seed`)."""
    rng = np.random.default_rng(seed)
    n_actions = spec.shapes[1]
    returns, _ = run_episodes(spec, [seed + k for k in range(episodes)], lambda obs: rng.integers(0, n_actions, len(obs)))
    return float(returns.mean())


# ---------------------------------------------------------------------------- the agent as a policy


def carries_state(agent: Any) -> bool:
    """Whether the agent has a memory whose state is carried across forward calls (reset per episode).

    Such an agent sees one step per call, (N, 1, F), and sequences (N, T, F) in training; a memory that resets
    per task or never would outlive the episodes the learners reset, and is refused."""
    carried = False
    for m in agent.memories():
        if not isinstance(m, AttachedMemory) or m.reset_on in PER_CALL:
            continue
        if m.reset_on != "episode":
            raise UserError(f"memory {m.name!r} has reset = {m.reset_on!r}; on environment tasks a carried memory "
                            "resets at episode ends: set reset = 'episode' (or 'sequence' for none carried)")
        carried = True
    return carried


def check_stepwise(agent: Any, device: str = "cpu") -> None:
    """Refuse a carried memory that reads a sequence otherwise than its steps one call at a time.

    Acting feeds one step per call, (N, 1, F); training replays sequences, (N, T, F). The two agree for a recurrent
    memory (the DNC); a memory with self-attention across the steps of a call (the memory transformer's encoder) sees
    more in a sequence than in a step, and the probabilities of its actions would not be the ones it acted with. The
    memories' reads are compared directly (a fused read starts with no effect on the agent's outputs)."""
    for m in agent.memories():
        if not isinstance(m, AttachedMemory) or m.reset_on != "episode":
            continue
        x = torch.randn(2, 3, m.width, generator=torch.Generator().manual_seed(0)).to(device)
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                whole, _ = m.retrieve(x, m.initial_state(2, device))
                state, steps = m.initial_state(2, device), []
                for t in range(x.shape[1]):
                    r, state = m.retrieve(x[:, t: t + 1], state)
                    steps.append(r)
        finally:
            m.train(was)
        if whole is None or any(r is None for r in steps):
            continue
        if not torch.allclose(whole, torch.cat(steps, 1), rtol=1e-3, atol=1e-5):
            raise UserError(f"memory {m.name!r} reads a sequence otherwise than its steps one at a time (attention "
                            "across the steps of a call); environment tasks act one step at a time and train on "
                            "sequences, so a memory reset per episode must be recurrent step by step (dnc)")


def policy_logits(agent: Any, obs: Tensor, task_id: int | None, classes: Sequence[int] | None,
                  *, stepwise: bool, infer: bool = False) -> Tensor:
    """Action logits (N, A) for observations (N, F), actions outside `classes` masked; `stepwise` agents (a carried
    memory) get (N, 1, F). With `infer`, the task is inferred where a module can (`agent.predict` without a label)."""
    x = obs[:, None] if stepwise else obs
    out = agent.predict(x, None)[0] if infer else agent(x, task_id)
    if stepwise:
        if out.dim() != 3:
            raise UserError("an agent with a memory carried across steps needs a backbone that keeps the step axis: "
                            "set backbone.per_step = true (the MLP applies its layers to every step)")
        out = out[:, 0]
    return restrict_to_classes(out, classes)


@register_evaluator("env")
def evaluate_env(agent: Any, task: Any, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    """Normalised mean return over the task's evaluation episodes (see the module docstring); raw figures in extra."""
    ev: EnvEval = task.eval
    was_training = agent.training
    agent.eval()
    stepwise = carries_state(agent)
    given = task.id if task.task_label_at_test else None
    gen = torch.Generator().manual_seed(ev.seed)
    agent.reset_memory()

    def act(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)
        with torch.no_grad() if given is not None else torch.enable_grad():
            logits = policy_logits(agent, x, given, task.classes, stepwise=stepwise, infer=given is None).detach()
        if ev.greedy:
            return logits.argmax(-1).cpu().numpy()
        probs = torch.softmax(logits.cpu(), -1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0].numpy()

    def on_done(done: np.ndarray) -> None:
        agent.reset_memory(torch.as_tensor(done, device=device))

    try:
        returns, lengths = run_episodes(ev.spec, ev.seeds, act, on_done)
    finally:
        agent.reset_memory()
        agent.train(was_training)
    mean = float(returns.mean())
    extra = {
        "return": mean, "return_sd": float(returns.std()), "length": float(lengths.mean()), "episodes": float(len(returns)),
        "random_return": ev.random_return, "solved_return": ev.solved_return, "solved": float(mean >= ev.solved_return),
    }
    acc = ev.normalise(mean)
    return EvalResult(acc if math.isfinite(acc) else float("nan"), len(returns), extra)
