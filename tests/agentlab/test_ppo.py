"""PPO on environment tasks with tiny budgets: GAE, determinism by seed, resume, carried memories reset at episode ends
and replayed as they acted, isolation under SupSup, the recipes from the command line and their TensorBoard tags."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from agentlab import recipe as recipes
from agentlab import registry
from agentlab.agent import Agent
from agentlab.attachment import AttachConfig, AttachedMemory
from agentlab.context import FitContext
from agentlab.errors import UserError
from agentlab.learners.ppo import PPO, PPOConfig, Rollout, gae, segments
from agentlab.loop import LoopConfig, run
from agentlab.registry import BuildEnv
from agentlab.runner import run_recipe
from agentlab.seeding import seed_everything

TINY = ["stream.budget_steps=256", "stream.eval_episodes=2", "learner.num_envs=4", "learner.num_steps=32",
        "learner.update_epochs=2"]


def _resolved(name: str, overrides: list[str]):
    rname, table = recipes.read_recipe(name)
    return recipes.resolve(rname, recipes.apply_overrides(table, [*TINY, *overrides]))


def _stream(name: str = "cartpole-physics", **cfg):
    return registry.build("stream", {"name": name, "budget_steps": 256, "eval_episodes": 2, **cfg}, BuildEnv())


def _agent(stream, *, memory: list | None = None, plasticity: list | None = None, per_step: bool = False, **ppo) -> Agent:
    env = BuildEnv(stream=stream)
    bb = registry.build("backbone", {"name": "mlp", "hidden": [16], "activation": "tanh", "per_step": per_step}, env)
    learner = PPO(PPOConfig(num_envs=4, num_steps=32, update_epochs=2, **ppo))
    return Agent(bb, memory=memory or [], plasticity=plasticity or [], learner=learner, input_shape=stream.input_shape)


# ---------------------------------------------------------------------------- GAE and pieces


def test_gae_by_hand():
    # one environment, 3 steps, an episode boundary before step 2; gamma 0.5, lambda 0.5
    r = Rollout(obs=torch.zeros(3, 1, 1), actions=torch.zeros(3, 1, dtype=torch.long), logprobs=torch.zeros(3, 1),
                values=torch.tensor([[1.0], [2.0], [4.0]]), rewards=torch.tensor([[1.0], [1.0], [1.0]]),
                starts=torch.tensor([[True], [False], [True]]), memory={})
    adv, ret = gae(r, next_value=torch.tensor([8.0]), next_start=torch.tensor([False]), gamma=0.5, lam=0.5)
    d2 = 1 + 0.5 * 8 - 4  # bootstrapped from the value after the rollout
    d1 = 1 + 0 - 2  # the episode ended after step 1: no bootstrap
    d0 = 1 + 0.5 * 2 - 1
    expected = torch.tensor([[d0 + 0.25 * d1], [d1], [d2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + r.values)


def test_segments_cut_at_episode_starts_and_every_bptt_steps():
    starts = torch.tensor([[True, False], [False, False], [True, False], [False, True], [False, False]])
    assert segments(starts) == [(0, 0, 2), (0, 2, 5), (1, 0, 3), (1, 3, 5)]
    assert segments(starts, 2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 3), (1, 3, 4), (1, 4, 5)]


# ---------------------------------------------------------------------------- runs


def test_run_trains_and_logs(tmp_path):
    resolved = _resolved("rl-cartpole-finetune", ["stream.n_tasks=2", "loop.log_every=1"])
    run_dir, results = run_recipe(resolved, run_dir=tmp_path / "run")
    r = results["finetune"]
    assert r.completed and r.R.shape == (2, 2) and not np.isnan(r.R).any()
    summary = json.loads((run_dir / "finetune" / "summary.json").read_text())
    assert summary["tasks"] == ["cartpole-physics-0", "cartpole-physics-1"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "finetune"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"charts/episodic_return", "charts/episodic_length", "charts/sps", "charts/env_steps", "losses/policy_loss",
            "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac", "eval/acc/task_000",
            "cl/avg_acc", "cl/bwt"} <= tags


def test_same_seed_same_matrix_other_seed_other_policy():
    def once(seed: int) -> tuple[np.ndarray, torch.Tensor]:
        stream = _stream(n_tasks=2, eval_episodes=3, greedy=False)
        gen = seed_everything(seed)
        agent = _agent(stream)
        r = run(agent, stream, generator=gen, cfg=LoopConfig(checkpoint=False))
        return r.R, torch.cat([p.detach().flatten() for p in agent.parameters()])

    (ra, pa), (rb, pb), (_, pc) = once(0), once(0), once(1)
    np.testing.assert_array_equal(ra, rb)
    torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not torch.equal(pa, pc)


@pytest.mark.parametrize("recipe, label, n", [("rl-cartpole-finetune", "finetune", 3), ("rl-cartpole-po", "dnc", 2)])
def test_resume_mid_stream_gives_the_same_matrix(tmp_path, recipe, label, n):
    over = [f"stream.n_tasks={n}", "stream.greedy=false", "stream.eval_episodes=3"]
    _, full = run_recipe(_resolved(recipe, over), run_dir=tmp_path / "full", only=[label])
    _, part = run_recipe(_resolved(recipe, [*over, "loop.stop_after_tasks=1"]), run_dir=tmp_path / "part", only=[label])
    assert part[label].status == "interrupted" and part[label].R.shape[0] == 1
    _, res = run_recipe(_resolved(recipe, over), run_dir=tmp_path / "part", resume=True, only=[label])
    assert res[label].completed
    np.testing.assert_array_equal(res[label].R, full[label].R)
    np.testing.assert_array_equal(res[label].b, full[label].b)


# Tiny settings of plasticity modules (the composition matrix's) and whether each isolates its tasks.
PLASTICITY = {"supsup": ({}, True), "lora": ({"rank": 2}, True), "set": ({"epsilon": 2.0}, False),
              "fnnsp": ({"modules": 2, "active_modules": 1, "new_modules_per_task": 1, "initial_active": 1}, True)}


@pytest.mark.parametrize("name", PLASTICITY)
def test_ppo_trains_any_plasticity_module_and_isolation_holds(name):
    table, isolating = PLASTICITY[name]
    stream = _stream(n_tasks=2)
    env = BuildEnv(stream=stream)
    agent = _agent(stream, plasticity=[registry.build("plasticity", {"name": name, **table}, env)])
    gen = seed_everything(0)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    ctx = FitContext(generator=gen, task_index=0, n_tasks=2)
    for i in range(2):
        agent.start_task(stream[i])
        trained = [p.detach().clone() for p in agent.trainable_parameters()]
        agent.learner.fit(agent, stream[i], ctx)
        assert any(not torch.equal(a, b) for a, b in zip(trained, agent.trainable_parameters()))  # it learned
        agent.end_task(stream[i])
        if i == 0:
            before = agent(x, 0).detach().clone()
    assert ctx.global_step > 0
    if isolating:
        assert torch.equal(agent(x, 0), before)


# ---------------------------------------------------------------------------- memories


class StepCounter(AttachedMemory):
    """Reads 1, 2, 3, ... : the steps seen since its state was last reset, one per step; records every read."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__(AttachConfig(at="head", fuse="concat", reset="episode"))
        self.reads: list[torch.Tensor] = []

    def build(self, width: int) -> int:
        return 1

    def initial_state(self, batch_size: int, device: Any = "cpu") -> Any:
        return torch.zeros(batch_size, 1, device=device)

    def retrieve(self, x, state):
        t = x.shape[1]
        r = state[:, None, :] + torch.arange(1, t + 1, dtype=x.dtype, device=x.device)[None, :, None]  # (B, T, 1)
        self.reads.append(r.detach()[..., 0])
        return r, state + t


def test_carried_memory_resets_at_episode_ends_and_replays_as_it_acted():
    from agentlab.learners.ppo import Critic, _restore, _snapshot

    stream = _stream(n_tasks=1)
    counter = StepCounter()
    agent = _agent(stream, memory=[counter], per_step=True, num_minibatches=3, bptt=8)
    task, learner = stream[0], agent.learner
    gen = seed_everything(0)
    ctx = FitContext(generator=gen, task_index=0, n_tasks=1)
    envs = task.train.spec.vector(4)
    obs, _ = envs.reset(seed=[0, 1, 2, 3])
    state = {"obs": torch.as_tensor(obs), "start": torch.ones(4, dtype=torch.bool)}
    critic = Critic(4, [8])
    agent.reset_memory()
    try:
        for rollout in range(2):  # the second rollout goes on from the state the first left, as in `fit`
            counter.reads.clear()
            r = learner._collect(agent, critic, envs, state, task, True, ctx, [])
            acted = torch.cat(counter.reads, 1).T  # (T, N): the count each step acted with
            # every episode starts at 1 (the memory was reset where the one before ended), every other step goes on
            assert (acted[r.starts] == 1).all() and (acted[~r.starts] > 1).all()
            assert r.starts[1:].any()  # CartPole episodes end within 32 random steps
            if rollout == 1:
                assert (acted[0][~r.starts[0]] > 1).all()  # carried over from the first rollout
            end = _snapshot(agent)
            for item in learner._minibatches(r, True, gen):
                counter.reads.clear()
                _, t, e, _ = learner._forward(agent, r, item, task)
                read = counter.reads[0]  # (pieces, L)
                pieces = item[1]
                replayed = torch.cat([read[s, : b - a] for s, (_, a, b) in enumerate(pieces)])
                torch.testing.assert_close(replayed, acted[t, e])  # training sees the memory as acting saw it
            _restore(agent, end)
    finally:
        envs.close()


def test_memory_reset_in_evaluation():
    stream = _stream(n_tasks=1, eval_episodes=3, greedy=False)  # sampled actions: episodes of different lengths
    counter = StepCounter()
    agent = _agent(stream, memory=[counter], per_step=True)
    from agentlab.evaluate import evaluate

    for _ in range(2):  # each evaluation starts afresh, whatever the one before left
        counter.reads.clear()
        evaluate(agent, stream[0])
        reads = torch.cat(counter.reads, 1)  # (3 episodes, steps)
        assert reads[:, 0].eq(1).all()
        # every step counts on from the one before, or starts at 1 after the environment's episode ended
        following, restarted = reads[:, 1:] == reads[:, :-1] + 1, reads[:, 1:] == 1
        assert (following | restarted).all() and restarted.any()


def test_refusals():
    stream = _stream(n_tasks=1)
    env = BuildEnv(stream=stream)
    gen = seed_everything(0)
    ctx = FitContext(generator=gen, task_index=0, n_tasks=1)
    # a memory whose sequence read is not its step-by-step read
    mt = registry.build("memory", {"name": "memory_transformer", "at": "head", "fuse": "concat", "reset": "episode", "dim": 8,
                                   "heads": 2, "layers": 1, "slots": 8}, env)
    agent = _agent(stream, memory=[mt], per_step=True)
    with pytest.raises(UserError, match="recurrent step by step"):
        agent.learner.fit(agent, stream[0], ctx)
    # a memory carried across episodes
    dnc = registry.build("memory", {"name": "dnc", "at": "head", "reset": "task", "memory_size": 4, "word_size": 4,
                                    "num_reads": 1, "hidden_size": 8}, env)
    with pytest.raises(UserError, match="reset = 'episode'"):
        agent = _agent(stream, memory=[dnc], per_step=True)
        agent.learner.fit(agent, stream[0], ctx)
    # a carried memory on a backbone that flattens the steps
    dnc = registry.build("memory", {"name": "dnc", "at": "head", "reset": "episode", "memory_size": 4, "word_size": 4,
                                    "num_reads": 1, "hidden_size": 8}, env)
    agent = _agent(stream, memory=[dnc], per_step=False)
    with pytest.raises(UserError, match="per_step = true"):
        agent.learner.fit(agent, stream[0], ctx)
    # a classification task
    from tests_helpers import permuted_stream

    with pytest.raises(UserError, match="environment tasks"):
        agent.learner.fit(agent, permuted_stream()[0], ctx)


def test_recipes_build():
    for name in ("rl-cartpole-finetune", "rl-cartpole-supsup", "rl-cartpole-po", "rl-minigrid", "rl-classic-control"):
        recipes.check_components(_resolved(name, []))


@pytest.mark.parametrize("recipe, agents", [("rl-cartpole-supsup", {"supsup"}), ("rl-classic-control", {"finetune", "supsup"}),
                                            ("rl-minigrid", {"supsup"})])
def test_recipes_run_from_the_command_line(tmp_path, capsys, recipe, agents):
    from agentlab.cli import main

    code = main(["run", recipe, "--out", str(tmp_path), "--no-progress", "--set", "stream.budget_steps=128",
                 "--set", "stream.eval_episodes=2", "--set", "stream.n_tasks=2" if "cartpole" in recipe else "seed=0",
                 "--set", "learner.num_envs=2", "--set", "learner.num_steps=16", "--set", "loop.checkpoint=false"])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["agents"]) == agents
    for a in agents:
        R = np.array(summary["agents"][a]["accuracy_matrix"], dtype=float)
        assert R.shape[0] == (2 if "cartpole" in recipe else 3) and np.isfinite(np.diag(R)).all()
