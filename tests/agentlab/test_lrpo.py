"""LRPO: the trajectory fit on synthetic losses, the planted stall, the state round trip; the other schedules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agentlab.config import ConfigError, build_config
from agentlab.lrpo import LRPO, LRPOConfig, fit_trajectory
from agentlab.optim import make_schedule, schedule_scalars

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # schedules driven without a model
P = 8  # points per pass


def times(passes: int) -> np.ndarray:
    return (np.arange(passes * P) + 0.5) / P


def noisy(y: np.ndarray, rel: float = 0.01, seed: int = 0) -> np.ndarray:
    return y * (1 + rel * np.random.default_rng(seed).standard_normal(len(y)))


def exp_stall(a: float, b: float, c: float, g: float) -> float:
    """Where (L(t) - L(t+1)) / L(t) = g for L = a + b exp(-c t): b e^{-ct} (1 - e^{-c}) = g (a + b e^{-ct})."""
    return math.log(b * (1 - math.exp(-c) - g) / (g * a)) / c


def test_fit_recovers_a_power_law():
    t = times(8)
    f = fit_trajectory(t, noisy(0.2 + 1.5 * (t + 1 / P) ** -0.7), offset=1 / P)
    assert f.family == "power"
    assert f.c == pytest.approx(0.7, abs=0.06) and f.a == pytest.approx(0.2, abs=0.03) and f.b == pytest.approx(1.5, rel=0.05)
    assert f.rmse < 0.02


def test_fit_recovers_an_exponential():
    t = times(8)
    f = fit_trajectory(t, noisy(0.3 + 0.8 * np.exp(-0.5 * t)))
    assert f.family == "exp"
    assert f.c == pytest.approx(0.5, abs=0.05) and f.a == pytest.approx(0.3, abs=0.02) and f.b == pytest.approx(0.8, rel=0.05)


def test_fit_extrapolates_beyond_the_points():
    t = times(6)
    f = fit_trajectory(t, noisy(0.1 + 2.0 * (t + 1 / P) ** -0.5, seed=1), offset=1 / P)
    later = np.array([10.0, 20.0])
    assert f.predict(later) == pytest.approx(0.1 + 2.0 * (later + 1 / P) ** -0.5, rel=0.05)


def test_stall_of_a_noiseless_exponential_is_the_analytic_one():
    t = times(5)
    f = fit_trajectory(t, 0.3 + 1.0 * np.exp(-0.4 * t))
    assert f.stall(5.0, 0.03) == pytest.approx(exp_stall(0.3, 1.0, 0.4, 0.03), abs=0.05)
    assert f.stall(20.0, 0.03) == 20.0  # already stalled: now


def test_fit_rejects_too_few_points():
    with pytest.raises(ValueError, match=">= 3 points"):
        fit_trajectory([0.1, 0.2], [1.0, 0.9])


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def drive(ctl: LRPO, curve, first: int, passes: int, steps: int = 40, seed: int = 0) -> list[bool]:
    """Feed `passes` passes of step losses drawn from `curve(t)` (t in passes since the first) with 2% noise."""
    rng = np.random.default_rng(seed + first)
    out = []
    for e in range(first, first + passes):
        t = e + (np.arange(steps) + 0.5) / steps
        for loss in curve(t) * (1 + 0.02 * rng.standard_normal(steps)):
            ctl.after_step(float(loss))
        out.append(ctl.after_epoch(e, float(np.mean(curve(t)))))
    return out


def test_lrpo_decays_ahead_of_a_planted_stall_and_then_stops():
    a, b, c, g = 0.3, 1.0, 0.4, 0.03
    stall = exp_stall(a, b, c, g)  # 8.8 passes
    opt = optimizer()
    ctl = LRPO(opt, LRPOConfig(min_gain=g, lead=1.0, decays=1, window=0, fit_floor=True), gamma=0.1)
    stops = drive(ctl, lambda t: a + b * np.exp(-c * t), 0, 12)
    first = ctl.decisions[0]
    assert first["action"] == "decay"
    # acted at the end of the pass where the predicted stall came within `lead`, before the stall itself
    assert math.ceil(stall - 1.0) - 1 <= first["epoch"] + 1 <= math.ceil(stall - 1.0) + 1 and first["epoch"] + 1 < stall
    assert first["stall"] == pytest.approx(stall, abs=0.6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    # the flat stretch after the decay stalls at once: stop after min_epochs more passes
    assert ctl.decisions[1]["action"] == "stop" and stops.index(True) == first["epoch"] + ctl.cfg.min_epochs
    assert ctl.stopped and "lrpo/predicted_loss" in ctl.scalars() and "lrpo/stall_epoch" in ctl.scalars()


def test_lrpo_keeps_the_rate_while_the_loss_still_falls_fast():
    opt = optimizer()
    ctl = LRPO(opt, LRPOConfig(), gamma=0.1)
    stops = drive(ctl, lambda t: 0.01 + 2.0 * np.exp(-0.35 * t), 0, 6)  # 30% less per pass
    assert not any(stops) and ctl.decisions == [] and opt.param_groups[0]["lr"] == 0.1


def test_lrpo_without_stop_never_ends_training():
    ctl = LRPO(optimizer(), LRPOConfig(decays=0, stop=False), gamma=0.1)
    assert not any(drive(ctl, lambda t: 0.5 + 0 * t, 0, 5))


def test_lrpo_state_round_trips_mid_task():
    curve = lambda t: 0.2 + 1.0 * (t + 0.1) ** -0.8  # noqa: E731
    cfg = LRPOConfig(min_gain=0.05, decays=2)
    ref = LRPO(optimizer(), cfg, gamma=0.1)
    drive(ref, curve, 0, 5)
    for loss in (0.31, 0.30, 0.29):  # part of a pass
        ref.after_step(loss)
    state = json.loads(json.dumps(ref.state_dict()))  # checkpoints hold JSON trees
    opt = optimizer()
    resumed = LRPO(opt, cfg, gamma=0.1)
    resumed.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]
    for ctl in (ref, resumed):
        drive(ctl, curve, 5, 10, seed=7)
    assert resumed.state_dict() == ref.state_dict()
    assert [d["action"] for d in ref.decisions][:1] == ["decay"]


class Cfg:
    """The schedule keys of SGDConfig, for the table's factories."""

    def __init__(self, name: str, **kw) -> None:
        from agentlab.learners.sgd import SGDConfig

        self.__dict__.update(vars(SGDConfig(lr_schedule=name, **kw)))  # type: ignore[arg-type]


def run_steps(name: str, steps: int = 100, losses=None, **kw) -> list[float]:
    opt = optimizer(1.0)
    sched = make_schedule(opt, Cfg(name, **kw), steps)
    lrs = []
    for s in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        sched.after_step(1.0)
        if (s + 1) % 10 == 0:
            sched.after_epoch(s // 10, losses[s // 10] if losses else 1.0)
    return lrs


def test_step_decays_at_the_milestones():
    lrs = run_steps("step", lr_milestones=[0.5, 0.75], lr_gamma=0.1)
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1) and lrs[75] == pytest.approx(0.01)


def test_onecycle_rises_then_falls_without_touching_momentum():
    lrs = run_steps("onecycle", lr_warmup=0.3)
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert int(np.argmax(lrs)) == pytest.approx(30, abs=1) and lrs[-1] < 1e-3


def test_plateau_decays_after_patience_passes_without_gain():
    lrs = run_steps("plateau", losses=[1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], plateau_patience=2, lr_gamma=0.5)
    # best at pass 1; passes 2, 3, 4 without gain: more than `patience`, the decay shows from step 50 on
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["cosine", "step", "onecycle", "plateau"])
def test_fixed_schedules_resume_from_their_state(name):
    opt_a, opt_b = optimizer(1.0), optimizer(1.0)
    a, b = make_schedule(opt_a, Cfg(name), 100), make_schedule(opt_b, Cfg(name), 100)
    for s in range(60):
        a.after_step(1.0)
        if (s + 1) % 10 == 0:
            a.after_epoch(s // 10, 1.0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert opt_b.param_groups[0]["lr"] == pytest.approx(opt_a.param_groups[0]["lr"])
    for _ in range(10):
        a.after_step(1.0), b.after_step(1.0)
    a.after_epoch(6, 1.0), b.after_epoch(6, 1.0)
    assert opt_b.param_groups[0]["lr"] == pytest.approx(opt_a.param_groups[0]["lr"])
    assert schedule_scalars(a, opt_a)["charts/lr"] == opt_a.param_groups[0]["lr"]


def test_config_keys_are_checked():
    from agentlab.learners.sgd import SGDConfig

    cfg = build_config(SGDConfig, {"lr_schedule": "lrpo", "lrpo": {"min_gain": 0.02, "decays": 1}}, where="learner")
    assert cfg.lrpo == LRPOConfig(min_gain=0.02, decays=1)
    with pytest.raises(ConfigError, match=r"learner\.lrpo\.min_gain"):
        build_config(SGDConfig, {"lrpo": {"min_gain": 2.0}}, where="learner")
    with pytest.raises(ConfigError, match="lr_schedule"):
        build_config(SGDConfig, {"lr_schedule": "exponential"}, where="learner")
    with pytest.raises(ConfigError, match="lr_milestones"):
        SGDConfig(lr_milestones=[0.5, 1.5])


def test_finetune_keeps_the_lrpo_state_in_its_checkpoint_and_logs_it():
    from agentlab.agent import Agent
    from agentlab.backbones.mlp import MLP
    from agentlab.context import FitContext
    from agentlab.data import Split
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig
    from agentlab.task import Task

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long()
    task = Task(id=3, name="t", kind="classification", train=Split(x, y), eval=Split(x, y), classes=(0, 1))
    learner = FineTune(SGDConfig(epochs=30, lr=0.05, batch_size=32, lr_schedule="lrpo", lrpo=LRPOConfig(min_gain=0.01)))
    torch.manual_seed(0)
    agent = Agent(MLP(8, [16], 2), learner=learner)
    logged: dict[str, list[float]] = {}
    ctx = FitContext(generator=g, task_index=0, n_tasks=1, log_scalar=lambda t, v, s: logged.setdefault(t, []).append(v))
    agent.start_task(task)
    learner.fit(agent, task, ctx)
    state = learner.state_dict()["schedules"]["3"]
    assert state["stopped"] and state["epochs"] < 30 and [d["action"] for d in state["decisions"]][-1] == "stop"
    assert len(logged["charts/lr"]) == state["epochs"] and min(logged["charts/lr"]) == pytest.approx(0.05 * 0.1 ** 2)
    assert "lrpo/observed_loss" in logged and "lrpo/predicted_loss" in logged
    fresh = FineTune(learner.cfg)
    fresh.load_state_dict(json.loads(json.dumps(learner.state_dict())))
    assert fresh.state_dict() == learner.state_dict()
