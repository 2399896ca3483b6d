"""Environment tasks: the streams' tasks, the physics draws, the observation views, the normalised evaluation and its
extras, the random policy's return, and the refusals."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from agentlab import registry
from agentlab.agent import Agent
from agentlab.errors import UserError
from agentlab.evaluate import evaluate
from agentlab.registry import BuildEnv
from agentlab.scenarios.env_task import EnvSpec, normalised_return, random_policy_return, run_episodes
from agentlab.scenarios.gym_streams import CARTPOLE_DEFAULTS, CARTPOLE_PHYSICS


def _stream(name: str, **cfg):
    return registry.build("stream", {"name": name, **cfg}, BuildEnv())


class Constant(nn.Module):
    """A policy that always prefers action `a` (logits over `n` actions; `logits` given: those)."""

    def __init__(self, n: int, a: int = 0, logits: list[float] | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(1, n)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.copy_(torch.tensor(logits) if logits else torch.nn.functional.one_hot(torch.tensor(a), n).float())

    def forward(self, x):
        return self.lin(x[..., :1] * 0)


def test_cartpole_physics_tasks():
    s = _stream("cartpole-physics", n_tasks=7, budget_steps=1234, eval_episodes=3)
    assert (len(s), s.scenario, s.n_classes, s.input_shape) == (7, "rl", 2, (4,))
    t0, t3 = s[0], s[3]
    assert t0.kind == "env" and t0.task_label_at_test and t0.train.budget_steps == 1234
    assert t0.train.spec.params == () and t0.meta["physics"] == CARTPOLE_DEFAULTS
    assert t3 == s[3]  # a stream returns equal tasks each time it is asked
    assert set(t3.meta["physics"]) == set(CARTPOLE_PHYSICS)
    assert all(v != CARTPOLE_DEFAULTS[k] for k, v in t3.meta["physics"].items())
    env = t3.train.spec.make()
    base = env.unwrapped
    for k, v in t3.meta["physics"].items():
        assert getattr(base, k) == pytest.approx(v)
    assert base.total_mass == pytest.approx(base.masspole + base.masscart)
    assert base.polemass_length == pytest.approx(base.masspole * base.length)
    env.close()
    # the draws depend on the stream's seed and the task, never on the run
    again = _stream("cartpole-physics", n_tasks=7)[3].meta["physics"]
    other = _stream("cartpole-physics", n_tasks=7, seed=1)[3].meta["physics"]
    assert again == t3.meta["physics"] and other != again
    factors = np.array([[s[i].meta["physics"][k] / CARTPOLE_DEFAULTS[k] for k in CARTPOLE_PHYSICS] for i in range(1, 7)])
    assert 0.5 < factors.mean() < 1.5 and factors.std() > 0.05


def test_cartpole_po_hides_the_velocities():
    full, po = _stream("cartpole-physics", n_tasks=1)[0].train.spec, _stream("cartpole-po")[0].train.spec
    a, b = full.make(), po.make()
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    assert ob.shape == (2,) and b.observation_space.shape == (2,)
    np.testing.assert_allclose(ob, oa[[0, 2]])  # cart position and pole angle; the velocities are gone
    a.close(), b.close()


def test_classic_control_pads_observations_and_masks_actions():
    s = _stream("classic-control", eval_episodes=2)
    assert s.input_shape == (6,) and s.n_classes == 3
    cart, acro, car = s[0], s[1], s[2]
    assert cart.classes == (0, 1) and acro.classes is None and car.classes is None
    env = cart.train.spec.make()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6,) and np.all(obs[4:] == 0)
    env.close()
    # the masked action is never taken: a policy preferring action 2, then 1, pushes with action 1 on CartPole
    right = evaluate(Agent(Constant(3, logits=[0.0, 0.5, 1.0])), cart).extra["return"]
    assert right == evaluate(Agent(Constant(3, 1)), cart).extra["return"]
    assert right != evaluate(Agent(Constant(3, 0)), cart).extra["return"]


def test_evaluation_is_the_normalised_return_with_raw_extras():
    task = _stream("cartpole-physics", n_tasks=1, eval_episodes=4)[0]
    agent = Agent(Constant(2, 0))
    res = evaluate(agent, task)
    returns, lengths = run_episodes(task.eval.spec, task.eval.seeds, lambda obs: np.zeros(len(obs), dtype=np.int64))
    assert res.n == 4
    assert res.extra["return"] == pytest.approx(returns.mean()) and res.extra["return_sd"] == pytest.approx(returns.std())
    assert res.extra["length"] == pytest.approx(lengths.mean()) and res.extra["episodes"] == 4
    rand = random_policy_return(task.eval.spec, 4, task.eval.seed)
    assert res.extra["random_return"] == rand and res.extra["solved_return"] == 475.0 and res.extra["solved"] == 0.0
    assert res.acc == pytest.approx((returns.mean() - rand) / (475.0 - rand))
    assert res.acc < 0  # always pushing left does worse than chance
    assert evaluate(agent, task).extra == res.extra  # fixed seeds: the same episodes every time


def test_normalisation():
    assert normalised_return(22.0, 22.0, 475.0) == 0.0
    assert normalised_return(475.0, 22.0, 475.0) == 1.0
    assert normalised_return(500.0, 22.0, 475.0) == 1.0  # capped: at or above the solved return counts as solved
    assert normalised_return(500.0, 22.0, 475.0, clip=False) == pytest.approx(478 / 453)
    assert normalised_return(-300.0, -500.0, -100.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        normalised_return(1.0, 5.0, 5.0)


def test_random_policy_return_is_seeded_and_plausible():
    spec = EnvSpec("CartPole-v1")
    a = random_policy_return(spec, 20, 10_000)
    random_policy_return.cache_clear()
    assert random_policy_return(spec, 20, 10_000) == a
    assert 15 < a < 35  # CartPole's random policy lasts about 22 steps


def test_refusals():
    with pytest.raises(UserError, match="Box action space"):
        EnvSpec("Pendulum-v1").make()
    with pytest.raises(UserError, match="no parameter 'gravityy'"):
        EnvSpec("CartPole-v1", params=(("gravityy", 1.0),)).make()
    with pytest.raises(UserError, match="cannot be made"):
        EnvSpec("NoSuchEnv-v0").make()
    from agentlab.config import ConfigError

    with pytest.raises(ConfigError, match="n_tasks"):
        _stream("cartpole-physics", n_tasks=0)
    with pytest.raises(ConfigError, match="envs"):
        _stream("classic-control", envs=["Pendulum-v1"])


def test_minigrid_missing_names_the_extra(monkeypatch):
    from agentlab import extras

    real = extras.importlib.import_module

    def fake(name, *a, **k):
        if name == "minigrid":
            raise ImportError("No module named 'minigrid'")
        return real(name, *a, **k)

    monkeypatch.setattr(extras.importlib, "import_module", fake)
    with pytest.raises(UserError, match=r"pip install 'agentlab\[minigrid\]'"):
        EnvSpec("MiniGrid-Empty-5x5-v0", image=True, package="minigrid").make()


# minigrid comes with the `test` extra (pyproject.toml), so this runs wherever the suite is set up as documented
def test_minigrid_stream():
    s = _stream("minigrid", eval_episodes=2)
    assert [t.name for t in s] == ["Empty-5x5-v0", "DoorKey-5x5-v0", "LavaGapS5-v0"]
    assert s.input_shape == (147,) and s.n_classes == 7
    env = s[1].train.spec.make()
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (147,) and 0 <= obs.min() and obs.max() <= 1.0
    env.close()
    res = evaluate(Agent(Constant(7, 2)), s[0])  # always forward: the 5x5 room's wall stops it
    assert res.extra["return"] == 0.0 and res.extra["length"] == 100
